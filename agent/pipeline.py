"""The processing core shared by the live agent and ``foreshock agent replay``.

``Pipeline.process(windows)`` takes a batch of windows and returns, per window, its
features, score, fault guess, telemetry body and any alert, plus the events of the batch.
It owns the feature spec, the detector, the per-stream baselines and the decider. No I/O
and no clock: the service around it reads, stores and publishes.

Model choice: an explicit ``detector`` (with ``input_features``, default all features), else
a verified ``bundle`` (:class:`agent.inference.LoadedBundle`), else the bundle configured in
``model.bundle`` (verified with ``model.trusted_keys``), else the newest bundle shipped
under ``models/bundles/foreshock-default/`` (verified with the key shipped beside it; unless
``model.default_bundle = false``), else the model-free :class:`agent.inference.ZScoreDetector`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent import features as fx
from agent.baselines import StateBank
from agent.config import AgentConfig
from agent.decision import Decider, Observation
from agent.inference import Detector, LoadedBundle, ZScoreDetector, load_bundle
from agent.window import Window
from foreshock.bundle import parse_semver
from foreshock.errors import BundleError

log = logging.getLogger(__name__)
SHIPPED_NAME = "foreshock-default"
SHIPPED_KEY = "foreshock-dev.pub"
FloatArray = npt.NDArray[np.float32]
Lap = Callable[[str, float], float]


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


def _no_lap(stage: str, since: float) -> float:
    return time.perf_counter()


class Pipeline:
    """Features, scores and decisions for batches of windows; see the module doc."""

    def __init__(self, config: AgentConfig, *, detector: Detector | None = None,
                 bundle: LoadedBundle | None = None,
                 input_features: Sequence[str] | None = None) -> None:
        self.config = config
        self.bundle = bundle
        if detector is None and bundle is None:
            self.bundle = self._configured_bundle()
        self.spec = self._make_spec()
        names = self.spec.feature_names
        self.detector, inputs = self._make_detector(detector, input_features, names)
        self.input_features = tuple(inputs)
        self.input_index = np.asarray(self.spec.index(list(inputs)), dtype=np.intp)
        b = self.bundle
        self.fault_min_probability = b.fault_min_probability if b else 0.5
        self.decider = Decider(
            config.decision, names, score_fn=self._score_raw, model=self.model_info,
            machine_class=self.spec.machine_class, orders=self._orders(),
            floor=b.anomaly_floor if b else 0.0, adapt=b.adapt if b else None)
        self._names = {n: i for i, n in enumerate(names)}
        #: operating-state baselines, set by the running agent (docs/learning.md); replay
        #: and tests without it keep one commissioning baseline per stream
        self.learning: StateBank | None = None
        #: per window of the last batch: its operating state, None when not scored
        self._states: list[str | None] = []

    # -- construction --------------------------------------------------------------------
    def _configured_bundle(self) -> LoadedBundle | None:
        m = self.config.model
        if m.bundle is not None:
            return load_bundle(m.bundle, list(m.trusted_keys), self._spec_hashes(),
                               backend=m.backend, feature_names=fx.DEFAULT_SPEC.feature_names)
        shipped = shipped_bundle() if m.default_bundle else None
        if shipped is None:
            return None
        try:
            return load_bundle(shipped[0], [shipped[1], *m.trusted_keys], self._spec_hashes(),
                               backend=m.backend, feature_names=fx.DEFAULT_SPEC.feature_names)
        except BundleError as exc:
            log.warning("shipped bundle refused, using the z-score detector: %s", exc)
            return None

    @staticmethod
    def _spec_hashes() -> list[str]:
        return [fx.DEFAULT_SPEC.hash, fx.SNAPSHOT_SPEC.hash]

    def _make_spec(self) -> fx.FeatureSpec:
        base = fx.SNAPSHOT_SPEC if self.config.features.spec == "snapshot" else fx.DEFAULT_SPEC
        if self.bundle is not None and self.bundle.feature_spec:
            base = fx.FeatureSpec.from_dict(self.bundle.feature_spec)
        f = self.config.features
        orders = (f.bpfo, f.bpfi, f.bsf, f.ftf) if f.bpfo > 0 else None
        return dataclasses.replace(base, bearing=f.bearing, defect_orders=orders,
                                   machine_class=f.machine_class, nominal_rpm=f.rpm)

    def _make_detector(self, detector: Detector | None, inputs: Sequence[str] | None,
                       names: tuple[str, ...]) -> tuple[Detector, tuple[str, ...]]:
        if detector is not None:
            chosen = tuple(inputs or getattr(detector, "input_features", None) or names)
            return detector, chosen
        if self.bundle is not None:
            return self.bundle.detector, self.bundle.input_features
        return ZScoreDetector(len(names)), names

    def _orders(self) -> dict[str, float]:
        return self.spec.orders()

    @property
    def model_info(self) -> dict[str, str]:
        if self.bundle is not None:
            return self.bundle.model_info
        name = getattr(self.detector, "name", type(self.detector).__name__)
        return {"name": str(name), "version": str(getattr(self.detector, "version", "0.0.0"))}

    def _score_raw(self, baseline: fx.Baseline, values: FloatArray) -> FloatArray:
        z = baseline.z(values)[:, self.input_index]
        return self.detector.score(z.astype(np.float32)).anomaly

    @property
    def training_stats(self) -> dict[str, Any] | None:
        """The bundle manifest's ``training_stats`` (for the drift monitor), if shipped."""
        if self.bundle is None:
            return None
        stats = self.bundle.manifest.data.get("training_stats")
        return stats if stats else None

    def rebaseline(self, channel: int | None = None, *, who: str = "agent",
                   why: str = "rebaseline", at_s: float = 0.0) -> None:
        keys = [k for k in list(self.decider._streams)
                if channel is None or (isinstance(k, tuple) and k[1] == channel)]
        for key in keys:
            self.decider.rebaseline(key)
            if self.learning is not None:
                self.learning.rebaseline(key, who=who, why=why, at_s=at_s)
        if self.learning is not None and self.learning.state_dir is not None:
            self.learning.save()

    def streams(self) -> dict[str, Any]:
        out = {}
        for key, s in self.decider._streams.items():
            out[_key_text(key)] = {
                "commissioning": s.baseline is None, "threshold": s.threshold,
                "commission_reason": s.reason or None,
                "commission_windows": len(s.rows),
                "incident": None if s.incident is None else {
                    "id": s.incident.id, "severity": s.incident.severity,
                    "raised_ts": s.incident.raised_s}}
            if self.learning is not None:
                out[_key_text(key)]["states"] = self.learning.status()["streams"].get(
                    _key_text(key), {})
        return out

    # -- processing ----------------------------------------------------------------------
    def process(self, windows: Sequence[Window], lap: Lap = _no_lap,
                samples: FloatArray | None = None) -> StepOutput:
        """Features (one batched call), scores (one model call), decisions (vectorised per
        stream; the per-window path only where an incident may change). ``samples``: the
        windows' samples already stacked ``[n, window_samples]``, if the caller has them."""
        t = time.perf_counter()
        if samples is None:
            samples = np.stack([w.samples for w in windows])
        rpm = self._rpm(windows)
        x = np.asarray(fx.extract(self.spec, samples, rpm), dtype=np.float32)
        t = lap("features", t)
        out = StepOutput()
        ends = [w.end_s for w in windows]
        keys = [(w.device_id, w.channel) for w in windows]
        live = self._commission(windows, keys, x, out)
        z = np.zeros((len(windows), x.shape[1]), np.float32)
        if self.learning is not None:
            live = self._state_z(keys, x, rpm, ends, live, z, out)
        groups: dict[Hashable, list[int]] = {}
        for i in live:
            groups.setdefault(keys[i], []).append(i)
        for key, idx in groups.items():
            if self.learning is None:
                z[idx] = self.decider.baseline(key).z(x[idx])
        scored = _Scored(len(windows), self.fault_min_probability)
        if live:
            out.z_all = z[live]
            out.z = out.z_all[:, self.input_index]
            scored.fill(live, self.detector.score(out.z))
        t = lap("inference", t)
        state = {k: self.decider.stream(k).incident is not None for k in set(keys)}
        alerts = self._decide(windows, groups, x, z, scored)
        self._results(windows, keys, x, rpm, ends, scored, alerts, state, out)
        if self.learning is not None:
            self._adapt(keys, x, ends, scored.anomaly, out)
        out.anomaly = scored.anomaly[live]
        lap("decision", t)
        return out

    def _commission(self, windows: Sequence[Window], keys: list[tuple[str, int]],
                    x: FloatArray, out: StepOutput) -> list[int]:
        """Feed commissioning streams; indices of the windows of monitored streams."""
        if all(self.decider.baseline(k) is not None for k in dict.fromkeys(keys)):
            return list(range(len(windows)))       # every stream is monitored already
        live = []
        seeded = False
        for i, (w, key) in enumerate(zip(windows, keys, strict=True)):
            if self.decider.baseline(key) is None and not self._restore(key, w, x[i]):
                event = self.decider.commission(key, x[i], w.end_s)
                if event is not None:
                    event["detail"]["channel"] = w.channel
                    out.events.append(event)
                    seeded = self._seed(key, w, x[i]) or seeded
            else:
                live.append(i)
        if seeded and self.learning is not None and self.learning.state_dir is not None:
            self.learning.save()            # once for the streams commissioned in this batch
        return live

    # -- operating-state baselines (agent.baselines; docs/learning.md) --------------------
    def _restore(self, key: tuple[str, int], w: Window, row: FloatArray) -> bool:
        """Resume a stream from saved baselines (after a restart): True when resumed."""
        bank = self.learning
        threshold = bank.thresholds.get(_key_text(key)) if bank is not None else None
        if bank is None or threshold is None:
            return False
        base = bank.baseline(key, bank.state_of(self._rpm_of(w), row))
        if base is None:
            return False
        self.decider.restore(key, base, threshold)
        return True

    def _seed(self, key: tuple[str, int], w: Window, row: FloatArray) -> bool:
        """The commissioning baseline becomes the ready baseline of its operating state
        (saved by the caller); False without operating-state baselines."""
        if self.learning is None:
            return False
        bank = self.learning
        bank.seed(key, bank.state_of(self._rpm_of(w), row), self.decider.baseline(key), w.end_s)
        bank.thresholds[_key_text(key)] = self.decider.threshold(key)
        bank.set_reference(key, self.decider.reference(key))   # for a model switch
        return True

    def _state_z(self, keys: list[tuple[str, int]], x: FloatArray, rpm: FloatArray,
                 ends: list[float], live: list[int], z: FloatArray, out: StepOutput
                 ) -> list[int]:
        """z against each window's operating-state baseline; windows of states still
        learning are not scored. Returns the scored windows. The states of the batch come
        from one bin search; a stream whose windows are all in one ready state is scored
        in one pass (on a slice when its windows are contiguous in the batch), any other
        through :meth:`agent.baselines.StateBank.zscore`."""
        bank = self.learning
        assert bank is not None
        full = len(live) == len(keys)
        states = bank.states_of(rpm if full else rpm[live], x if full else x[live])
        by_key: dict[tuple[str, int], list[int]] = {}
        for j, i in enumerate(live):
            by_key.setdefault(keys[i], []).append(j)
        kept: list[int] = []
        known: list[str | None] = [None] * len(keys)
        self._states = known
        for key, pos in by_key.items():
            idx = [live[j] for j in pos]
            own = [states[j] for j in pos]
            if own.count(own[0]) == len(own):
                rows: slice | list[int] = idx
                if idx[-1] - idx[0] + 1 == len(idx):
                    rows = slice(idx[0], idx[-1] + 1)
                zk = bank.ready_z(key, own[0], x[rows])
                if zk is not None:
                    z[rows] = zk
                    kept += idx
                    for i, st in zip(idx, own, strict=True):
                        known[i] = st
                    continue
            zk, ready, found, events = bank.zscore(key, x[idx], rpm[idx],
                                                   [ends[i] for i in idx])
            z[idx] = zk
            for j, i in enumerate(idx):
                if ready[j]:
                    kept.append(i)
                    known[i] = found[j]
            for event in events:
                event["detail"]["channel"] = key[1]
                out.events.append(event)
            if events and bank.state_dir is not None:
                bank.save()
        return sorted(kept)

    def _adapt(self, keys: list[tuple[str, int]], x: FloatArray, ends: list[float],
               anomaly: npt.NDArray[np.float64], out: StepOutput) -> None:
        """Guarded adaptation from every scored window, in window order
        (agent.baselines.StateBank.adapt_batch)."""
        assert self.learning is not None
        states, score = self._states, out.columns[2]
        thresholds, opened = out.columns[8], out.incident_open
        if None not in states and not np.isnan(anomaly).any():     # every window scored
            self.learning.adapt_batch(keys, states, x, ends, anomaly,  # type: ignore[arg-type]
                                      thresholds, opened)
            return
        idx = [i for i, st in enumerate(states) if st is not None and score[i] == score[i]]
        if idx:
            self.learning.adapt_batch(
                [keys[i] for i in idx], [states[i] for i in idx],   # type: ignore[misc]
                x[idx], [ends[i] for i in idx], anomaly[idx], [thresholds[i] for i in idx],
                [opened[i] for i in idx])

    def _decide(self, windows: Sequence[Window], groups: dict[Hashable, list[int]],
                x: FloatArray, z: FloatArray, scored: _Scored) -> dict[int, dict[str, Any]]:
        """Alert records by window index, from :meth:`Decider.decide_batch` per stream."""
        alerts: dict[int, dict[str, Any]] = {}
        for key, idx in groups.items():
            def observe(j: int, idx: list[int] = idx) -> Observation:
                i = idx[j]
                w = windows[i]
                return Observation(w.channel, w.end_s, x[i], z[i], float(scored.anomaly[i]),
                                   scored.alt[i], float(scored.alt_p[i]), self._rpm_of(w))

            for j, body in self.decider.decide_batch(key, scored.anomaly[idx], observe):
                alerts[idx[j]] = body
        return alerts

    def _results(self, windows: Sequence[Window], keys: list[tuple[str, int]], x: FloatArray,
                 rpms: FloatArray, ends: list[float], scored: _Scored,
                 alerts: dict[int, dict[str, Any]], state: dict[Any, bool], out: StepOutput
                 ) -> None:
        """One result per window; ``state``: incident open per stream at batch start."""
        zones, velocity = self._zones(x)
        rms = self._column(x, "rms_g")
        anomaly, top_p, top = scored.anomaly.tolist(), scored.top_p.tolist(), scored.top
        rpm = rpms.tolist()
        threshold = {k: self.decider.threshold(k) for k in state}
        thresholds = [threshold[k] for k in keys]
        alerted = []
        results: list[WindowResult] = []
        out._results = results
        if not alerts:              # no incident changed: each stream's state holds all batch
            opened = [state[k] for k in keys]
            unscored = [a != a for a in anomaly]               # NaN: not scored
            out._results, wins = None, list(windows)
            out._make_results = lambda: list(map(
                WindowResult, range(len(wins)), wins, list(x), anomaly, top, top_p,
                unscored, thresholds, zones, repeat(None, len(windows)), opened, rms,
                velocity, rpm))
            alerted = [o for o, c in zip(opened, unscored, strict=True) if not c]
            out.incident_open = opened
        for i, w in enumerate(windows if alerts else ()):
            key = keys[i]
            body = alerts.get(i)
            if body is not None:
                out.alerts.append(body)
                state[key] = body["status"] != "cleared"
            commissioning = anomaly[i] != anomaly[i]            # NaN: not scored
            if not commissioning:
                alerted.append(state[key])
            out.incident_open.append(state[key])
            results.append(WindowResult(i, w, x[i], anomaly[i], top[i], top_p[i], commissioning,
                                        thresholds[i], zones[i], body, state[key], rms[i],
                                        velocity[i], rpm[i]))
        out.alerted = np.asarray(alerted, dtype=bool)
        out.columns = ([w.channel for w in windows], ends, anomaly, top,
                       top_p, rms, velocity, zones, thresholds, rpm,
                       [w.device_id for w in windows])

    def _zones(self, x: FloatArray) -> tuple[list[str], list[float]]:
        """ISO 10816 zone and velocity (0 if unknown) per window (vectorised
        :func:`agent.features.iso_zone`)."""
        i = self._names.get("vel_rms_mm_s")
        if i is None:
            return ["?"] * len(x), [0.0] * len(x)
        v = x[:, i].astype(np.float64)
        limits = fx.ISO_ZONE_LIMITS_MM_S[self.spec.machine_class]
        idx = np.searchsorted(np.asarray(limits), v, side="right")
        ok = np.isfinite(v) & (v >= 0)
        zones = ["ABCD"[k] if good else "?" for k, good in zip(idx.tolist(), ok.tolist(),
                                                               strict=True)]
        return zones, np.where(np.isfinite(v), v, 0.0).tolist()

    def _column(self, x: FloatArray, name: str) -> list[float]:
        i = self._names.get(name)
        if i is None:
            return [0.0] * len(x)
        v = x[:, i].astype(np.float64)
        return np.where(np.isfinite(v), v, 0.0).tolist()

    def _rpm(self, windows: Sequence[Window]) -> FloatArray:
        """Each window's shaft speed (float32): its own, else ``features.rpm``."""
        rpm = np.fromiter([w.rpm for w in windows], np.float64, len(windows))
        return np.where(rpm > 0, rpm, self.config.features.rpm).astype(np.float32)

    def _rpm_of(self, w: Window) -> float:
        return w.rpm if w.rpm > 0 else self.config.features.rpm


class _Scored:
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


def shipped_bundle() -> tuple[Path, Path] | None:
    """(newest default bundle directory, its public key) shipped in the package, if any."""
    root = Path(__file__).resolve().parent.parent / "models" / "bundles"
    key = root / SHIPPED_KEY
    versions = []
    for manifest in (root / SHIPPED_NAME).glob("*/manifest.json"):
        try:
            versions.append((parse_semver(manifest.parent.name), manifest.parent))
        except BundleError:
            continue
    if not versions or not key.is_file():
        return None
    return max(versions)[1], key


def _key_text(key: Hashable) -> str:
    if isinstance(key, tuple):
        return "/".join(str(k) for k in key)
    return str(key)
