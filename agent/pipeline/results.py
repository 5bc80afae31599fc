"""What the pipeline gives back for a batch of windows, and the model's outputs as arrays.

:class:`WindowResult` (one window: features, score, fault guess, zone, alert; its
telemetry body built on access), :class:`StepOutput` (one batch: results, incident
records, events, and the arrays the drift monitor and a shadow model read) and
:class:`Scored` (the detector's scores and label guesses per window of a batch).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.window import Window

FloatArray = npt.NDArray[np.float32]


@dataclass(eq=False, slots=True)
class WindowResult:
    """What the pipeline made of one window. ``anomaly`` is NaN while commissioning.

    ``alert`` is the incident record this window produced (raised / updated / cleared), if
    any; ``incident_open`` whether an incident is open on this stream after this window.
    ``telemetry`` (the body of its telemetry record) is built on access only. Read-only by
    convention (not frozen: cheaper to build, one per window).
    """

    index: int
    window: Window
    features: FloatArray
    anomaly: float
    fault: str
    fault_probability: float
    commissioning: bool
    threshold: float
    zone: str
    alert: dict[str, Any] | None = None
    incident_open: bool = False
    rms_g: float = 0.0
    velocity_mm_s: float = 0.0
    rpm: float = 0.0

    @property
    def explanation(self) -> dict[str, Any] | None:
        return self.alert["explanation"] if self.alert else None

    @property
    def telemetry(self) -> dict[str, Any]:
        w = self.window
        return {
            "channel": w.channel, "window_ts": w.end_s,
            "anomaly_score": 0.0 if math.isnan(self.anomaly) else self.anomaly,
            "fault": self.fault, "fault_probability": self.fault_probability,
            "rms_g": self.rms_g, "velocity_rms_mm_s": self.velocity_mm_s, "zone": self.zone,
            "commissioning": self.commissioning, "threshold": self.threshold, "rpm": self.rpm,
            "sensor": w.device_id,
        }


@dataclass
class StepOutput:
    """Per-window results, incident records and events of one batch, and the scored
    windows' model inputs (``z``), scores and alert state for the drift monitor;
    ``z_all``: their z-scores over every feature of the spec (a candidate model in shadow
    may read other columns)."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    z: FloatArray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    z_all: FloatArray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    anomaly: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    alerted: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    #: the results' telemetry fields as columns (see :meth:`telemetry`)
    columns: tuple[list[Any], ...] = ()
    #: per result: whether an incident is open on its stream after it
    incident_open: list[bool] = field(default_factory=list)
    #: builds :attr:`results` on first access (the running agent rarely reads them)
    _make_results: Callable[[], list[WindowResult]] | None = field(default=None, repr=False)
    _results: list[WindowResult] | None = field(default=None, repr=False)

    @property
    def results(self) -> list[WindowResult]:
        """One :class:`WindowResult` per window of the batch, in order."""
        if self._results is None:
            self._results = self._make_results() if self._make_results is not None else []
            self._make_results = None
        return self._results

    def telemetry(self, every: int = 1, base: int = 0) -> list[tuple[dict[str, Any], float]]:
        """``(result.telemetry, window end)`` of the results whose ``base + index`` is a
        multiple of ``every``, built from :attr:`columns` in one pass."""
        rows: Iterable[tuple[Any, ...]] = zip(*self.columns, strict=True)
        if every > 1:
            rows = (r for i, r in enumerate(rows) if (base + i) % every == 0)
        return [({"channel": ch, "window_ts": end, "anomaly_score": 0.0 if a != a else a,
                  "fault": fault, "fault_probability": p, "rms_g": rms,
                  "velocity_rms_mm_s": vel, "zone": zone, "commissioning": a != a,
                  "threshold": thr, "rpm": rpm, "sensor": dev}, end)
                for ch, end, a, fault, p, rms, vel, zone, thr, rpm, dev in rows]


class Scored:
    """Model outputs of a batch as arrays (NaN / ``unknown`` for unscored windows): anomaly,
    most probable label and its probability, and for alerts the most probable non-normal
    label if it reaches the bundle's ``thresholds.fault.min_probability`` (else
    ``unknown``) and its probability."""

    def __init__(self, n: int, min_probability: float) -> None:
        self.anomaly = np.full(n, math.nan)
        self.top: list[str] = ["unknown"] * n
        self.top_p = np.zeros(n)
        self.alt: list[str] = ["unknown"] * n
        self.alt_p = np.zeros(n)
        self.min_probability = min_probability

    def fill(self, rows: list[int], scores: Any) -> None:
        p = np.asarray(scores.probabilities, dtype=np.float64)
        names, normal = _label_table(tuple(scores.labels))
        r = np.arange(p.shape[0])
        top = p.argmax(axis=1)
        q = p.copy()
        if normal >= 0:
            q[:, normal] = -1.0
        alt = q.argmax(axis=1)
        alt_p = np.maximum(q[r, alt], 0.0)
        alt = np.where(alt_p >= self.min_probability, alt, len(names) - 1)
        self.anomaly[rows] = np.asarray(scores.anomaly, dtype=np.float64)
        self.top_p[rows] = p[r, top]
        self.alt_p[rows] = alt_p
        if len(rows) == len(self.top):
            self.top, self.alt = names[top].tolist(), names[alt].tolist()
            return
        for i, t, k in zip(rows, names[top].tolist(), names[alt].tolist(), strict=True):
            self.top[i], self.alt[i] = t, k


@functools.lru_cache(maxsize=8)
def _label_table(labels: tuple[str, ...]) -> tuple[npt.NDArray[np.object_], int]:
    """A model's labels plus ``unknown`` (to index), and the column of ``normal`` that the
    fault guess skips (-1: none, or it is the only other label)."""
    names = np.asarray((*labels, "unknown"), dtype=object)
    normal = labels.index("normal") if "normal" in labels and len(names) > 2 else -1
    return names, normal
