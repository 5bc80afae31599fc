"""From scores to incidents: commissioning, thresholds, debouncing, explanations.

Pure: no I/O and no clock; every time is the window's own time ``at_s`` (Unix seconds).

Per stream (``key``, normally ``(device_id, channel)``):

1. **Commissioning.** The first ``commission_s`` of windows (and at least
   ``min_commission_windows``) are the machine's normal: their features fit
   :class:`agent.features.Baseline` (median and scaled MAD). No alerts meanwhile.
2. **Threshold.** ``decision.threshold`` if set (> 0); otherwise the commissioning windows
   are scored against the fresh baseline and the threshold is
   ``max(floor, quantile(scores, q) * factor + margin)`` with the bundle's
   ``thresholds.anomaly`` floor and ``adapt`` rule when it ships them, else
   ``q = decision.threshold_quantile``, ``factor = decision.threshold_margin``,
   ``margin = 0``. So the machine's own score spread sets the bar, and a noisy machine
   does not alert on its usual noise.
3. **Debouncing and hysteresis.** An incident is *raised* when at least ``k`` of the last
   ``n`` windows score above the threshold. It is *cleared* when ``n`` consecutive windows
   score below ``threshold * clear_ratio``. In between, no new incident starts.
4. **Updates.** An open incident is re-sent as *updated* when its severity changes while
   the score is above the threshold (a recovering machine is not re-sent on its way down),
   and every ``update_interval_s`` otherwise. One incident per episode, never one per
   window.
5. **Severity** is the worse of the score's (ratio to threshold: < 1.5 warning, < 3 alarm,
   else critical) and the ISO 10816 zone's (C alarm, D critical). A cleared record has
   severity ``info``.

Every alert body (``foreshock.messages.BODY_FIELDS['alert']``) carries ``explanation``:
``summary`` (one sentence), ``top_features`` (the features furthest from baseline, in
baseline standard deviations ``z``), ``defect`` (the envelope family with the best SNR above
``defect_snr_min``, with its frequency in Hz at the window's shaft speed, or null),
``zone`` and ``velocity_mm_s``, the model name and version, and ``features_z`` (every
feature's baseline z, for operator feedback and retraining; docs/learning.md).
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.config import DecisionConfig
from agent.features.geometry import iso_zone
from foreshock.messages import SEVERITIES

FloatArray = npt.NDArray[np.float32]
#: score_fn(baseline, features[n, F]) -> anomaly[n], for the commissioning threshold.
ScoreFn = Callable[[Any, FloatArray], FloatArray]
DEFECT_FAMILIES = {"bpfo": ("bpfo", 1.0), "bpfi": ("bpfi", 1.0), "2bsf": ("bsf", 2.0),
                   "ftf": ("ftf", 1.0)}
TOP_FEATURES = 5
MAX_COMMISSION_WINDOWS = 20_000
#: commissioning windows kept per stream after commissioning (evenly thinned): the
#: reference a model switch re-derives the threshold from (docs/learning.md)
REFERENCE_ROWS = 120
#: ``threshold_source`` of a threshold re-derived at a model switch
SWITCH_SOURCES = {"commissioning": "reference", "bundle": "bundle_floor", "config": "config"}


@dataclass(frozen=True, eq=False)
class Observation:
    """One scored window of one stream. ``z`` is None while commissioning."""

    channel: int
    at_s: float
    features: FloatArray
    z: FloatArray | None
    anomaly: float
    fault: str
    fault_probability: float
    rpm: float = 0.0


@dataclass
class _Incident:
    id: str
    raised_s: float
    severity: str
    updated_s: float
    peak: float


@dataclass
class _Stream:
    first_s: float | None = None
    rows: list[FloatArray] = field(default_factory=list)
    baseline: Any = None
    threshold: float = 0.0
    recent: deque[bool] = field(default_factory=deque)
    calm: int = 0
    incident: _Incident | None = None
    last_alert: dict[str, Any] | None = None
    #: (commissioning windows, evenly thinned to REFERENCE_ROWS; their baseline)
    reference: tuple[FloatArray, Any] | None = None
    #: why the stream is commissioning when it is not its first time (e.g. a spec change)
    reason: str = ""


def thin(rows: FloatArray, limit: int = REFERENCE_ROWS) -> FloatArray:
    """At most ``limit`` rows, evenly spaced over ``rows`` (first and last kept)."""
    if rows.shape[0] <= limit:
        return rows.copy()
    return rows[np.unique(np.linspace(0, rows.shape[0] - 1, limit).round().astype(np.intp))]


class Decider:
    """Turns observations into incident records; see the module doc."""

    def __init__(self, config: DecisionConfig, feature_names: Sequence[str], *,
                 score_fn: ScoreFn, model: dict[str, str], machine_class: str = "group2-rigid",
                 orders: dict[str, float] | None = None, floor: float = 0.0,
                 adapt: dict[str, float] | None = None) -> None:
        self.config = config
        self.names = tuple(feature_names)
        self._index = {n: i for i, n in enumerate(self.names)}
        self.score_fn = score_fn
        self.model = dict(model)
        self.machine_class = machine_class
        self.orders = dict(orders or {})
        self.floor = float(floor)
        rule = adapt or {}
        self.rule = (rule.get("quantile", config.threshold_quantile),
                     rule.get("factor", config.threshold_margin), rule.get("margin", 0.0))
        self.defect_snr_min = config.defect_snr_min
        self._streams: dict[Hashable, _Stream] = {}

    # -- commissioning -------------------------------------------------------------------
    def stream(self, key: Hashable) -> _Stream:
        s = self._streams.get(key)
        if s is None:
            s = self._streams[key] = _Stream(recent=deque(maxlen=self.config.n))
        return s

    def baseline(self, key: Hashable) -> Any:
        return self.stream(key).baseline

    def threshold(self, key: Hashable) -> float:
        return self.stream(key).threshold

    def commission(self, key: Hashable, features: FloatArray, at_s: float) -> dict[str, Any] | None:
        """Feed one commissioning window; returns a ``baseline`` event body when done."""
        from agent.features import Baseline

        s = self.stream(key)
        if s.first_s is None:
            s.first_s = at_s
        if len(s.rows) < MAX_COMMISSION_WINDOWS:
            s.rows.append(np.asarray(features, dtype=np.float32))
        done = (at_s - s.first_s >= self.config.commission_s
                and len(s.rows) >= self.config.min_commission_windows)
        if not done:
            return None
        values = np.stack(s.rows)
        s.baseline = Baseline.fit(values, self.names)
        s.threshold, source = self._threshold(s.baseline, values)
        s.reference = (thin(values), s.baseline)
        s.rows = []
        detail = {"status": "commissioned", "windows": int(values.shape[0]),
                  "duration_s": float(at_s - s.first_s), "threshold": s.threshold,
                  "threshold_source": source, "model": self.model}
        if s.reason:
            detail["reason"], s.reason = s.reason, ""
        return {"type": "baseline", "detail": detail}

    def reference(self, key: Hashable) -> tuple[FloatArray, Any] | None:
        """The stream's commissioning reference (thinned windows, their baseline), if kept."""
        s = self._streams.get(key)
        return s.reference if s is not None else None

    def _threshold(self, baseline: Any, values: FloatArray) -> tuple[float, str]:
        if self.config.threshold > 0:
            return float(self.config.threshold), "config"
        scores = np.asarray(self.score_fn(baseline, values), dtype=np.float64)
        scores = scores[np.isfinite(scores)]
        quantile, factor, margin = self.rule
        q = float(np.quantile(scores, quantile)) if scores.size else 0.0
        own = max(q * factor + margin, 1e-6)
        if self.floor > own:
            return self.floor, "bundle"
        return own, "commissioning"

    def restore(self, key: Hashable, baseline: Any, threshold: float,
                reference: tuple[FloatArray, Any] | None = None) -> None:
        """Resume monitoring with a saved baseline and threshold (no commissioning)."""
        s = self.stream(key)
        s.baseline, s.threshold, s.rows, s.first_s = baseline, float(threshold), [], None
        s.reason = ""
        if reference is not None:
            s.reference = reference

    # -- model switch (docs/learning.md, "Model switch") ----------------------------------
    def rethreshold(self, reference: tuple[FloatArray, Any] | None) -> tuple[float, str]:
        """This decider's threshold for a stream commissioned on ``reference``: the
        commissioning rule (:meth:`_threshold`) on the reference windows scored by this
        decider's model against their baseline; without a reference the bundle floor
        (``decision.threshold`` when configured). Returns (threshold, threshold_source):
        ``reference``, ``bundle_floor`` (the floor is above the rule), ``config`` or
        ``no_reference``."""
        if reference is None or reference[0].shape[0] == 0:
            if self.config.threshold > 0:
                return float(self.config.threshold), "config"
            return max(self.floor, 1e-6), "no_reference"
        threshold, source = self._threshold(reference[1], reference[0])
        return threshold, SWITCH_SOURCES[source]

    def carry(self, key: Hashable, old: _Stream, threshold: float,
              reference: tuple[FloatArray, Any] | None = None) -> None:
        """Continue a stream of another decider (same feature spec) under this one: its
        baseline, commissioning progress, reference, debounce state and open incident (same
        id: the incident goes on being updated / cleared, never raised again), with
        ``threshold`` on this decider's scale."""
        self._streams[key] = _Stream(
            first_s=old.first_s, rows=list(old.rows), baseline=old.baseline,
            threshold=float(threshold) if old.baseline is not None else 0.0,
            recent=deque(old.recent, maxlen=self.config.n), calm=old.calm,
            incident=None if old.incident is None else _Incident(**vars(old.incident)),
            last_alert=old.last_alert, reference=reference or old.reference,
            reason=old.reason)

    def commission_again(self, key: Hashable, reason: str) -> None:
        """Forget the stream and commission it again, saying why (health, baseline event)."""
        self._streams[key] = _Stream(recent=deque(maxlen=self.config.n), reason=reason)

    def rebaseline(self, key: Hashable | None = None) -> None:
        """Forget the baseline (of one stream, or all) and commission again."""
        for k in [key] if key is not None else list(self._streams):
            self._streams[k] = _Stream(recent=deque(maxlen=self.config.n))

    # -- monitoring ----------------------------------------------------------------------
    def decide(self, key: Hashable, obs: Observation) -> dict[str, Any] | None:
        """Debounce one scored window; returns an alert body when an incident changes."""
        s = self.stream(key)
        if s.baseline is None:
            return None
        above = math.isfinite(obs.anomaly) and obs.anomaly > s.threshold
        s.recent.append(above)
        if s.incident is None:
            if sum(s.recent) < self.config.k:
                return None
            s.incident = _Incident(uuid.uuid4().hex[:16], obs.at_s, "", obs.at_s, obs.anomaly)
            return self._alert(s, obs, "raised")
        inc = s.incident
        inc.peak = max(inc.peak, obs.anomaly)
        s.calm = s.calm + 1 if obs.anomaly < s.threshold * self.config.clear_ratio else 0
        if s.calm >= self.config.n:
            body = self._alert(s, obs, "cleared")
            s.incident, s.calm = None, 0
            s.recent.clear()
            return body
        severity = self.severity(obs.anomaly / s.threshold, self.zone(obs.features))
        changed = severity != inc.severity and obs.anomaly > s.threshold
        if changed or obs.at_s - inc.updated_s >= self.config.update_interval_s:
            return self._alert(s, obs, "updated")
        return None

    def decide_batch(self, key: Hashable, anomaly: npt.ArrayLike,
                     observe: Callable[[int], Observation]) -> list[tuple[int, dict[str, Any]]]:
        """:meth:`decide` for a run of windows of one stream, as array operations.

        ``anomaly[i]`` is window i's score; ``observe(i)`` builds its :class:`Observation`
        and is called only for windows that may change the incident state: from the first
        window where k of the last n are above the threshold, and while an incident is open.
        Returns ``(i, alert body)`` pairs, the same records :meth:`decide` would give.
        """
        s = self.stream(key)
        a = np.asarray(anomaly, dtype=np.float64)
        if s.baseline is None or a.size == 0:
            return []
        with np.errstate(invalid="ignore"):
            above = np.isfinite(a) & (a > s.threshold)
        out: list[tuple[int, dict[str, Any]]] = []
        i = 0
        while i < a.size:
            if s.incident is None:
                hit = self._first_raise(s, above[i:])
                if hit < 0:
                    s.recent.extend(above[i:].tolist())
                    break
                s.recent.extend(above[i:i + hit].tolist())
                i += hit
            body = self.decide(key, observe(i))
            if body is not None:
                out.append((i, body))
            i += 1
        return out

    def _first_raise(self, s: _Stream, above: npt.NDArray[np.bool_]) -> int:
        """Index in ``above`` of the first window where k of the last n are above; -1."""
        n = self.config.n
        if not above.any():
            # every n-window here holds a new window, so at most the last n - 1 old ones
            tail = sum(itertools.islice(reversed(s.recent), n - 1)) if n > 1 else 0
            if tail < self.config.k:
                return -1
        history = np.fromiter(s.recent, dtype=bool, count=len(s.recent))
        joined = np.concatenate((history, above)).astype(np.int32)
        total = np.concatenate(([0], np.cumsum(joined)))
        end = np.arange(history.size + 1, joined.size + 1)
        counts = total[end] - total[np.maximum(end - n, 0)]
        hits = np.flatnonzero(counts >= self.config.k)
        return int(hits[0]) if hits.size else -1

    def zone(self, features: FloatArray) -> tuple[str, float]:
        i = self._index.get("vel_rms_mm_s")
        v = float(features[i]) if i is not None else math.nan
        if not math.isfinite(v):
            return "?", math.nan
        return iso_zone(v, self.machine_class), v

    @staticmethod
    def severity(ratio: float, zone: tuple[str, float]) -> str:
        by_score = "warning" if ratio < 1.5 else "alarm" if ratio < 3.0 else "critical"
        by_zone = {"C": "alarm", "D": "critical"}.get(zone[0], "warning")
        return max(by_score, by_zone, key=SEVERITIES.index)

    def _alert(self, s: _Stream, obs: Observation, status: str) -> dict[str, Any]:
        assert s.incident is not None
        zone = self.zone(obs.features)
        ratio = obs.anomaly / s.threshold
        severity = "info" if status == "cleared" else self.severity(ratio, zone)
        if status != "cleared":
            s.incident.severity = severity
        s.incident.updated_s = obs.at_s
        body = {
            "incident": s.incident.id, "status": status, "severity": severity,
            "channel": obs.channel, "anomaly_score": float(obs.anomaly),
            "threshold": float(s.threshold), "fault": obs.fault,
            "fault_probability": float(obs.fault_probability), "zone": zone[0],
            "explanation": self.explain(s, obs, zone, status), "model": self.model,
            "raised_ts": s.incident.raised_s, "window_ts": obs.at_s,
            "peak_score": float(s.incident.peak),
        }
        s.last_alert = body
        return body

    # -- explanation ---------------------------------------------------------------------
    def top_features(self, s: _Stream, obs: Observation) -> list[dict[str, Any]]:
        if obs.z is None:
            return []
        z = np.nan_to_num(np.asarray(obs.z, dtype=np.float64), nan=0.0)
        order = np.argsort(-np.abs(z))[:TOP_FEATURES]
        centre = getattr(s.baseline, "median", None)
        out = []
        for i in order:
            item: dict[str, Any] = {"name": self.names[i], "value": float(obs.features[i]),
                                    "z": round(float(z[i]), 2)}
            if centre is not None:
                item["baseline"] = float(np.asarray(centre)[i])
            out.append(item)
        return out

    def defect(self, obs: Observation) -> dict[str, Any] | None:
        """The envelope defect family with the best SNR above ``defect_snr_min``."""
        best: tuple[float, str] | None = None
        for fam in DEFECT_FAMILIES:
            i = self._index.get(f"env_{fam}_snr")
            if i is None or not math.isfinite(float(obs.features[i])):
                continue
            snr = float(obs.features[i])
            if snr >= self.defect_snr_min and (best is None or snr > best[0]):
                best = (snr, fam)
        if best is None:
            return None
        name, multiple = DEFECT_FAMILIES[best[1]]
        order = self.orders.get(name, 0.0) * multiple
        hz = order * obs.rpm / 60.0 if obs.rpm > 0 else None
        return {"name": name, "family": best[1], "order": round(order, 4),
                "hz": round(hz, 2) if hz else None, "snr": round(best[0], 2)}

    def explain(self, s: _Stream, obs: Observation, zone: tuple[str, float],
                status: str) -> dict[str, Any]:
        top = self.top_features(s, obs)
        defect = self.defect(obs)
        parts = [f"channel {obs.channel}: anomaly score {obs.anomaly:.2f} vs threshold "
                 f"{s.threshold:.2f}"]
        if status == "cleared":
            parts[0] = f"channel {obs.channel}: back to normal, score {obs.anomaly:.2f} " \
                       f"below {s.threshold * self.config.clear_ratio:.2f}"
        if top:
            parts.append(f"{top[0]['name']} {top[0]['z']:+.1f} sd from baseline")
        if defect:
            at = f" at {defect['hz']:.1f} Hz" if defect["hz"] else ""
            parts.append(f"envelope peak at {defect['name'].upper()}{at} "
                         f"(SNR {defect['snr']:.1f})")
        if zone[0] != "?":
            parts.append(f"ISO 10816 zone {zone[0]} ({zone[1]:.2f} mm/s)")
        parts.append(f"model says {obs.fault} (p={obs.fault_probability:.2f})")
        return {"summary": "; ".join(parts) + ".", "top_features": top, "defect": defect,
                "zone": zone[0], "velocity_mm_s": None if math.isnan(zone[1]) else zone[1],
                "model": self.model, "features_z": self.features_z(obs)}

    def features_z(self, obs: Observation) -> dict[str, float]:
        """Every feature's baseline z (rounded), for operator feedback and retraining
        (docs/learning.md); features, never raw samples."""
        if obs.z is None:
            return {}
        z = np.nan_to_num(np.asarray(obs.z, dtype=np.float64), nan=0.0)
        return {n: round(float(v), 3) for n, v in zip(self.names, z.tolist(), strict=True)}
