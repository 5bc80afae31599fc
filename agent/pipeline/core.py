"""The processing core: :class:`Pipeline`, features, scores and decisions for a batch.

``Pipeline.process(windows)`` extracts the features of a batch in one call, takes each
window's z-scores (against its operating-state baseline when the agent runs
:class:`agent.baselines.StateBank`, else the stream's commissioning baseline), scores them
in one model call, decides per stream and builds the batch's :class:`StepOutput`. No I/O
and no clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from agent import features as fx
from agent.baselines import StateBank, stream_name
from agent.config import AgentConfig
from agent.decision import Decider, Observation
from agent.inference import Detector, LoadedBundle
from agent.pipeline.model_choice import configured_bundle, make_detector, make_spec, spec_hashes
from agent.pipeline.results import Scored, StepOutput, WindowResult
from agent.window import Window

FloatArray = npt.NDArray[np.float32]
Lap = Callable[[str, float], float]


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
            self.bundle = configured_bundle(config)
        self.spec = make_spec(config, self.bundle)
        names = self.spec.feature_names
        self.detector, inputs = make_detector(self.bundle, detector, input_features, names)
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
    _spec_hashes = staticmethod(spec_hashes)

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
            out[stream_name(key)] = {
                "commissioning": s.baseline is None, "threshold": s.threshold,
                "commission_reason": s.reason or None,
                "commission_windows": len(s.rows),
                "incident": None if s.incident is None else {
                    "id": s.incident.id, "severity": s.incident.severity,
                    "raised_ts": s.incident.raised_s}}
            if self.learning is not None:
                out[stream_name(key)]["states"] = self.learning.status()["streams"].get(
                    stream_name(key), {})
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
        scored = Scored(len(windows), self.fault_min_probability)
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
        threshold = bank.thresholds.get(stream_name(key)) if bank is not None else None
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
        bank.thresholds[stream_name(key)] = self.decider.threshold(key)
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
                x: FloatArray, z: FloatArray, scored: Scored) -> dict[int, dict[str, Any]]:
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
                 rpms: FloatArray, ends: list[float], scored: Scored,
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
