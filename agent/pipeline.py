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
import logging
import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent import features as fx
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


@dataclass(frozen=True, eq=False)
class WindowResult:
    """What the pipeline made of one window. ``anomaly`` is NaN while commissioning.

    ``alert`` is the incident record this window produced (raised / updated / cleared), if
    any; ``incident_open`` whether an incident is open on this stream after this window.
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
    telemetry: dict[str, Any]
    alert: dict[str, Any] | None = None
    explanation: dict[str, Any] | None = None
    incident_open: bool = False


@dataclass
class StepOutput:
    results: list[WindowResult] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


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
        self.input_index = np.asarray(self.spec.index(list(inputs)), dtype=np.intp)
        b = self.bundle
        self.fault_min_probability = b.fault_min_probability if b else 0.5
        self.decider = Decider(
            config.decision, names, score_fn=self._score_raw, model=self.model_info,
            machine_class=self.spec.machine_class, orders=self._orders(),
            floor=b.anomaly_floor if b else 0.0, adapt=b.adapt if b else None)
        self._names = {n: i for i, n in enumerate(names)}

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
        return dataclasses.replace(base, bearing=f.bearing, machine_class=f.machine_class,
                                   nominal_rpm=f.rpm)

    def _make_detector(self, detector: Detector | None, inputs: Sequence[str] | None,
                       names: tuple[str, ...]) -> tuple[Detector, tuple[str, ...]]:
        if detector is not None:
            chosen = tuple(inputs or getattr(detector, "input_features", None) or names)
            return detector, chosen
        if self.bundle is not None:
            return self.bundle.detector, self.bundle.input_features
        return ZScoreDetector(len(names)), names

    def _orders(self) -> dict[str, float]:
        f = self.config.features
        if f.bpfo > 0:
            return {"bpfo": f.bpfo, "bpfi": f.bpfi, "bsf": f.bsf, "ftf": f.ftf}
        return fx.bearing(self.spec.bearing).orders()

    @property
    def model_info(self) -> dict[str, str]:
        if self.bundle is not None:
            return self.bundle.model_info
        name = getattr(self.detector, "name", type(self.detector).__name__)
        return {"name": str(name), "version": str(getattr(self.detector, "version", "0.0.0"))}

    def _score_raw(self, baseline: fx.Baseline, values: FloatArray) -> FloatArray:
        z = baseline.z(values)[:, self.input_index]
        return self.detector.score(z.astype(np.float32)).anomaly

    def rebaseline(self, channel: int | None = None) -> None:
        keys = [k for k in list(self.decider._streams)
                if channel is None or (isinstance(k, tuple) and k[1] == channel)]
        for key in keys:
            self.decider.rebaseline(key)

    def streams(self) -> dict[str, Any]:
        out = {}
        for key, s in self.decider._streams.items():
            out[_key_text(key)] = {
                "commissioning": s.baseline is None, "threshold": s.threshold,
                "commission_windows": len(s.rows),
                "incident": None if s.incident is None else {
                    "id": s.incident.id, "severity": s.incident.severity,
                    "raised_ts": s.incident.raised_s}}
        return out

    # -- processing ----------------------------------------------------------------------
    def process(self, windows: Sequence[Window], lap: Lap = _no_lap) -> StepOutput:
        t = time.perf_counter()
        x = fx.extract(self.spec, np.stack([w.samples for w in windows]), self._rpm(windows))
        x = np.asarray(x, dtype=np.float32)
        t = lap("features", t)
        out = StepOutput()
        keys = [(w.device_id, w.channel) for w in windows]
        live = []
        for i, (w, key) in enumerate(zip(windows, keys, strict=True)):
            if self.decider.baseline(key) is None:
                event = self.decider.commission(key, x[i], w.end_s)
                if event is not None:
                    event["detail"]["channel"] = w.channel
                    out.events.append(event)
            else:
                live.append(i)
        z = np.zeros((len(windows), x.shape[1]), np.float32)
        for key in {keys[i] for i in live}:
            idx = [i for i in live if keys[i] == key]
            z[idx] = self.decider.baseline(key).z(x[idx])
        scored = self._scored(self.detector.score(z[live][:, self.input_index])) if live else []
        t = lap("inference", t)
        pos = {i: j for j, i in enumerate(live)}
        zones, velocity = self._zones(x)
        for i, w in enumerate(windows):
            j = pos.get(i)
            out.results.append(self._decide(
                i, w, keys[i], x[i], None if j is None else z[i],
                None if j is None else scored[j], (zones[i], float(velocity[i])), out))
        lap("decision", t)
        return out

    def _scored(self, scores: Any) -> list[tuple[float, str, float, str, float]]:
        """Per window: anomaly, most probable label and its probability, and for alerts the
        most probable non-normal label if it reaches the bundle's
        ``thresholds.fault.min_probability`` (else ``unknown``) and its probability."""
        p = np.asarray(scores.probabilities, dtype=np.float64)
        rows = np.arange(p.shape[0])
        labels = tuple(scores.labels)
        top = p.argmax(axis=1)
        q = p.copy()
        if "normal" in labels and len(labels) > 1:
            q[:, labels.index("normal")] = -1.0
        alt = q.argmax(axis=1)
        alt_p = np.maximum(q[rows, alt], 0.0)
        return [(float(a), labels[t], float(tp), labels[k] if kp >= self.fault_min_probability
                 else "unknown", float(kp))
                for a, t, tp, k, kp in zip(scores.anomaly.tolist(), top.tolist(),
                                           p[rows, top].tolist(), alt.tolist(), alt_p.tolist(),
                                           strict=True)]

    def _zones(self, x: FloatArray) -> tuple[list[str], npt.NDArray[np.float64]]:
        """ISO 10816 zone per window (vectorised :func:`agent.features.iso_zone`)."""
        i = self._names.get("vel_rms_mm_s")
        if i is None:
            return ["?"] * len(x), np.full(len(x), math.nan)
        v = x[:, i].astype(np.float64)
        limits = fx.ISO_ZONE_LIMITS_MM_S[self.spec.machine_class]
        idx = np.searchsorted(np.asarray(limits), v, side="right")
        ok = np.isfinite(v) & (v >= 0)
        return ["ABCD"[k] if good else "?" for k, good in zip(idx.tolist(), ok.tolist(),
                                                              strict=True)], v

    def _rpm(self, windows: Sequence[Window]) -> FloatArray:
        fixed = self.config.features.rpm
        return np.asarray([w.rpm if w.rpm > 0 else fixed for w in windows], dtype=np.float32)

    def _decide(self, i: int, w: Window, key: Hashable, x: FloatArray, z: FloatArray | None,
                scored: tuple[float, str, float, str, float] | None, zone: tuple[str, float],
                out: StepOutput) -> WindowResult:
        anomaly, fault, prob = (math.nan, "unknown", 0.0) if scored is None else scored[:3]
        rpm = w.rpm if w.rpm > 0 else self.config.features.rpm
        alert = None
        if scored is not None:
            obs = Observation(w.channel, w.end_s, x, z, anomaly, scored[3], scored[4], rpm)
            alert = self.decider.decide(key, obs)
        if alert is not None:
            out.alerts.append(alert)
        threshold = self.decider.threshold(key)
        end_s = w.end_s
        telemetry = {
            "channel": w.channel, "window_ts": end_s,
            "anomaly_score": 0.0 if math.isnan(anomaly) else anomaly, "fault": fault,
            "fault_probability": prob, "rms_g": self._value(x, "rms_g"),
            "velocity_rms_mm_s": zone[1] if math.isfinite(zone[1]) else 0.0, "zone": zone[0],
            "commissioning": scored is None, "threshold": threshold, "rpm": rpm,
            "sensor": w.device_id,
        }
        return WindowResult(i, w, x, anomaly, fault, prob, scored is None, threshold, zone[0],
                            telemetry, alert, alert["explanation"] if alert else None,
                            self.decider.stream(key).incident is not None)

    def _value(self, x: FloatArray, name: str) -> float:
        i = self._names.get(name)
        v = float(x[i]) if i is not None else 0.0
        return v if math.isfinite(v) else 0.0


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
