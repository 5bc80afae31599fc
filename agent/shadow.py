"""The shadow check of an over-the-air update: whether a candidate model may replace the
running one (used by :class:`agent.ota.OtaReceiver`).

A verified candidate runs in shadow beside the running model for the offer's
``shadow_windows`` windows (else ``shadow.windows``) and is promoted, or refused and deleted
(:class:`ShadowCheck`): no NaN, scores at all, latency within bound, and an alert rate
judged *relative to the running model on the same windows* (each model's window alert: its
score above its own bundle floor). It is refused when it alerts where the running model is
silent on more than ``max_extra_alert_rate`` of the windows, or when it misses more than
``max_lost_fault_rate`` of the windows the running model flags on a stream whose open
incident an operator confirmed (``cmd/feedback`` ``confirmed``). A machine with an open
fault therefore no longer blocks an update that keeps detecting it, and a retrained model
that is quieter on false alarms passes (docs/gateway.md, "Shadow check").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class ShadowPolicy:
    """When a candidate model may replace the running one (module doc)."""

    windows: int = 100
    max_latency_ms: float = 50.0
    #: share of shadow windows on which the candidate alerts while the running model is silent
    max_extra_alert_rate: float = 0.05
    #: share of the running model's alerting windows on confirmed faults the candidate misses
    max_lost_fault_rate: float = 0.2


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


class ShadowCheck:
    """Scores windows with a candidate detector beside the running model and decides after
    ``policy.windows`` windows."""

    def __init__(self, detector: Any, anomaly_threshold: float, policy: ShadowPolicy,
                 seen: int = 0) -> None:
        self.detector = detector
        self.threshold = anomaly_threshold
        self.policy = policy
        self.seen = seen
        self.alerts = 0          # candidate alerts
        self.running_alerts = 0  # running model alerts on the same windows
        self.extra = 0           # candidate alerts where the running model is silent
        self.fault_windows = 0   # running model alerts on a confirmed fault
        self.lost = 0            # ... that the candidate misses
        self.worst_ms = 0.0

    def observe(self, z: npt.NDArray[np.float32],
                running: npt.NDArray[np.bool_] | None = None,
                confirmed: npt.NDArray[np.bool_] | None = None) -> Verdict | None:
        """Score a batch of windows' z-scores; a Verdict once the run is decided.

        ``running``: whether the running model alerts on each window (None: silent on all,
        so every candidate alert counts as extra); ``confirmed``: whether each window is
        on a stream whose open incident an operator confirmed as a fault."""
        t0 = time.perf_counter()
        try:
            anomaly = np.asarray(self.detector.score(z).anomaly, dtype=np.float64)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            return Verdict(False, f"candidate failed to score: {exc}")
        per_window_ms = (time.perf_counter() - t0) * 1e3 / max(1, len(anomaly))
        self.worst_ms = max(self.worst_ms, per_window_ms)
        if not np.all(np.isfinite(anomaly)):
            return Verdict(False, "candidate produced NaN or infinite scores")
        if self.worst_ms > self.policy.max_latency_ms:
            return Verdict(False, f"candidate latency {self.worst_ms:.2f} ms per window "
                                  f"exceeds {self.policy.max_latency_ms:g} ms")
        n = len(anomaly)
        cand = anomaly > self.threshold
        run = _flags(running, n)
        fault = _flags(confirmed, n) & run
        self.seen += n
        self.alerts += int(np.count_nonzero(cand))
        self.running_alerts += int(np.count_nonzero(run))
        self.extra += int(np.count_nonzero(cand & ~run))
        self.fault_windows += int(np.count_nonzero(fault))
        self.lost += int(np.count_nonzero(fault & ~cand))
        if self.seen < self.policy.windows:
            return None
        return self.verdict()

    def verdict(self) -> Verdict:
        p = self.policy
        extra = self.extra / max(1, self.seen)
        if extra > p.max_extra_alert_rate:
            return Verdict(False, f"candidate alerts on {extra:.0%} of {self.seen} windows "
                                  f"where the running model is silent "
                                  f"(limit {p.max_extra_alert_rate:.0%})")
        lost = self.lost / self.fault_windows if self.fault_windows else 0.0
        if lost > p.max_lost_fault_rate:
            return Verdict(False, f"candidate misses {self.lost} of {self.fault_windows} "
                                  f"windows the running model flags on a confirmed fault "
                                  f"(limit {p.max_lost_fault_rate:.0%})")
        return Verdict(True, f"{self.seen} shadow windows, alert rate "
                             f"{self.alerts / max(1, self.seen):.0%} (running model "
                             f"{self.running_alerts / max(1, self.seen):.0%}, extra "
                             f"{extra:.0%}, confirmed-fault windows missed {self.lost}/"
                             f"{self.fault_windows}), worst {self.worst_ms:.2f} ms")


def _flags(values: npt.NDArray[np.bool_] | None, n: int) -> npt.NDArray[np.bool_]:
    if values is None:
        return np.zeros(n, bool)
    flags = np.asarray(values, dtype=bool).reshape(-1)
    if len(flags) != n:
        raise ValueError(f"{len(flags)} flags for {n} shadow windows")
    return flags

