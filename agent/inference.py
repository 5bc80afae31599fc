"""Detectors: a model that turns baseline z-scores into an anomaly score and fault odds.

``Detector.score(z)`` takes float32[n, k] — the window features as robust z-scores against
the machine's own baseline, for the ``input_features`` the bundle names — and returns
:class:`Scores`: ``anomaly`` float32[n] (higher = more anomalous; comparable to the bundle's
or the commissioning threshold) and ``probabilities`` float32[n, C] over ``labels``.
All windows of a step go through one ``score`` call (one runtime call).

``load_bundle`` verifies a bundle (ed25519 signature and the SHA-256 of every file, by
:func:`foreshock.bundle.verify`) and that its feature spec is one this agent computes, then
loads the model. Any failure raises :class:`BundleError` with the reason; the caller keeps
its running model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from foreshock import bundle as fsbundle
from foreshock.errors import BundleError

log = logging.getLogger(__name__)

LABELS = ("normal", "inner_race", "outer_race", "ball", "imbalance", "misalignment")
ANOMALY_OUTPUT = "anomaly_score"
PROBABILITY_OUTPUT = "fault_probabilities"


@dataclass(frozen=True, eq=False)
class Scores:
    """``anomaly`` float32[n]; ``probabilities`` float32[n, len(labels)]."""

    anomaly: npt.NDArray[np.float32]
    probabilities: npt.NDArray[np.float32]
    labels: tuple[str, ...]

    def fault(self, i: int) -> tuple[str, float]:
        """Most probable label of window ``i`` and its probability."""
        j = int(np.argmax(self.probabilities[i]))
        return self.labels[j], float(self.probabilities[i, j])


class Detector(Protocol):
    """Scores windows; ``score`` is pure and batched (see the module doc)."""

    labels: tuple[str, ...]

    def score(self, z: npt.NDArray[np.float32]) -> Scores: ...


def _batch(z: npt.ArrayLike, width: int) -> npt.NDArray[np.float32]:
    arr = np.ascontiguousarray(z, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"detector input must be float32[n, {width}], got {arr.shape}")
    if math.isfinite(float(np.add.reduce(arr, axis=None, dtype=np.float64))):
        return arr              # all finite (a NaN or inf makes the float64 sum non-finite)
    return np.nan_to_num(arr, nan=0.0, posinf=1e6, neginf=-1e6)


def _scores(anomaly: Any, probs: Any, n: int, labels: tuple[str, ...]) -> Scores:
    a = np.asarray(anomaly, dtype=np.float32).reshape(n)
    p = np.asarray(probs, dtype=np.float32).reshape(n, len(labels))
    return Scores(a, p, labels)


class OnnxDetector:
    """An ONNX model run by onnxruntime: CUDA/TensorRT when present (Jetson), else CPU."""

    def __init__(self, path: Path | str, *, labels: Sequence[str] = LABELS,
                 input_name: str | None = None, anomaly_output: str = ANOMALY_OUTPUT,
                 probability_output: str = PROBABILITY_OUTPUT,
                 providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = providers or [p for p in ("TensorrtExecutionProvider",
                                           "CUDAExecutionProvider") if p in available]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=[*wanted, "CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"onnxruntime cannot load {path}: {exc}") from None
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        if input_name is not None and input_name not in inputs:
            raise BundleError(f"model {path} has no input {input_name!r}; has {sorted(inputs)}")
        self.input_name = input_name or next(iter(inputs))
        shape = inputs[self.input_name]
        self.width = int(shape[-1]) if isinstance(shape[-1], int) else -1
        outputs = {o.name for o in self.session.get_outputs()}
        missing = {anomaly_output, probability_output} - outputs
        if missing:
            raise BundleError(f"model {path} lacks outputs {sorted(missing)}; has {outputs}")
        self.outputs = [anomaly_output, probability_output]
        self.labels = tuple(labels)
        self.providers = tuple(self.session.get_providers())

    def score(self, z: npt.NDArray[np.float32]) -> Scores:
        x = _batch(z, self.width if self.width > 0 else np.shape(z)[-1])
        if x.shape[0] == 0:
            return _scores([], np.zeros((0, len(self.labels))), 0, self.labels)
        anomaly, probs = self.session.run(self.outputs, {self.input_name: x})
        return _scores(anomaly, probs, x.shape[0], self.labels)


class TfliteDetector:
    """A TFLite model run by ai-edge-litert, or tflite-runtime where that is installed."""

    def __init__(self, path: Path | str, *, labels: Sequence[str] = LABELS,
                 anomaly_output: str = ANOMALY_OUTPUT,
                 probability_output: str = PROBABILITY_OUTPUT) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            try:
                from tflite_runtime.interpreter import Interpreter
            except ImportError:
                raise BundleError("no TFLite runtime: pip install ai-edge-litert") from None
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=1)
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"TFLite cannot load {path}: {exc}") from None
        self.input = self.interpreter.get_input_details()[0]
        self.width = int(self.input["shape"][-1])
        self._out = self._outputs(anomaly_output, probability_output)
        self.labels = tuple(labels)
        self._batch_size = -1

    def _outputs(self, anomaly: str, probs: str) -> tuple[int, int]:
        details = self.interpreter.get_output_details()
        by_name = {d["name"]: d["index"] for d in details}

        def find(name: str, ndim: int) -> int:
            for key, index in by_name.items():
                if name in key:
                    return int(index)
            for d in details:  # converters rename outputs; fall back on the shape
                if len(d["shape"]) == ndim:
                    return int(d["index"])
            raise BundleError(f"TFLite model has no output {name!r}: {sorted(by_name)}")

        return find(anomaly, 1), find(probs, 2)

    def score(self, z: npt.NDArray[np.float32]) -> Scores:
        x = _batch(z, self.width)
        n = x.shape[0]
        if n == 0:
            return _scores([], np.zeros((0, len(self.labels))), 0, self.labels)
        if n != self._batch_size:
            self.interpreter.resize_tensor_input(self.input["index"], [n, self.width])
            self.interpreter.allocate_tensors()
            self._batch_size = n
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        anomaly = self.interpreter.get_tensor(self._out[0])
        probs = self.interpreter.get_tensor(self._out[1])
        return _scores(anomaly, probs, n, self.labels)


@dataclass(frozen=True, eq=False)
class LoadedBundle:
    """A verified bundle and its running detector.

    ``thresholds`` is the manifest's ``thresholds`` table as shipped (see docs/bundle.md);
    :attr:`anomaly_floor`, :attr:`adapt` and :attr:`fault_min_probability` read it.
    """

    manifest: fsbundle.Manifest
    detector: Detector
    input_features: tuple[str, ...]
    labels: tuple[str, ...]
    thresholds: dict[str, Any]
    feature_spec: dict[str, Any]

    @property
    def model_info(self) -> dict[str, str]:
        return {"name": self.manifest.name, "version": self.manifest.version}

    @property
    def anomaly_floor(self) -> float:
        """The bundle's anomaly threshold (a floor for the commissioning threshold)."""
        value = self.thresholds.get("anomaly", 0.0)
        if isinstance(value, dict):
            value = value.get("value", value.get("adapt", {}).get("floor", 0.0))
        return _number(value, "thresholds.anomaly")

    @property
    def adapt(self) -> dict[str, float]:
        """``quantile``, ``factor``, ``margin`` of the commissioning rule, if shipped."""
        anomaly = self.thresholds.get("anomaly")
        rule = anomaly.get("adapt") if isinstance(anomaly, dict) else None
        if not isinstance(rule, dict):
            return {}
        return {k: _number(rule[k], f"thresholds.anomaly.adapt.{k}")
                for k in ("quantile", "factor", "margin") if k in rule}

    @property
    def fault_min_probability(self) -> float:
        fault = self.thresholds.get("fault")
        if isinstance(fault, dict) and "min_probability" in fault:
            return _number(fault["min_probability"], "thresholds.fault.min_probability")
        return 0.5


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BundleError(f"manifest {key} = {value!r} is not a number")
    return float(value)


def trusted(keys: Sequence[Path | bytes | Ed25519PublicKey]) -> list[Ed25519PublicKey]:
    """Public keys from PEM files, PEM bytes or key objects."""
    return [k if isinstance(k, Ed25519PublicKey) else fsbundle.load_public_key(k) for k in keys]


def load_bundle(path: Path | str, trusted_keys: Sequence[Path | bytes | Ed25519PublicKey],
                spec_hash_supported: str | Sequence[str], *, backend: str = "onnx",
                feature_names: Sequence[str] | None = None) -> LoadedBundle:
    """Verify and load a bundle; raises BundleError with the reason on any failure.

    ``spec_hash_supported``: the feature-spec hash (or hashes) this agent computes.
    ``feature_names``: what the agent's features provide, to check ``input_features``.
    """
    manifest = fsbundle.verify(Path(path), trusted(trusted_keys))
    supported = {spec_hash_supported} if isinstance(spec_hash_supported, str) else set(
        spec_hash_supported)
    if manifest.feature_spec_hash not in supported:
        raise BundleError(
            f"bundle {manifest.name} {manifest.version} needs feature spec "
            f"{manifest.feature_spec_hash[:12]}, this agent computes "
            f"{', '.join(sorted(h[:12] for h in supported))}",
            hint="update the agent, or build the bundle with this agent's feature spec")
    det = _detector_section(manifest)
    inputs = tuple(str(f) for f in det.get("input_features", ()))
    if feature_names is not None:
        unknown = [f for f in inputs if f not in set(feature_names)]
        if unknown or not inputs:
            raise BundleError(f"bundle {manifest.name}: input_features {unknown or '[]'} "
                              "are not features this agent computes")
    labels = tuple(str(x) for x in det.get("labels", LABELS))
    detector = _make_detector(manifest, det, labels, backend)
    thresholds = manifest.data.get("thresholds", det.get("thresholds", {}))
    if not isinstance(thresholds, dict):
        raise BundleError(f"bundle {manifest.name}: thresholds must be an object")
    spec = manifest.data["feature_spec"]
    log.info("loaded model bundle %s %s (%s)", manifest.name, manifest.version, backend)
    return LoadedBundle(manifest, detector, inputs, labels, thresholds,
                        spec if isinstance(spec, dict) else {})


def _detector_section(manifest: fsbundle.Manifest) -> dict[str, Any]:
    models = manifest.data.get("models")
    det = models.get("detector") if isinstance(models, dict) else None
    if not isinstance(det, dict):
        raise BundleError(f"bundle {manifest.name}: manifest has no models.detector")
    return det


def _output_name(outputs: Any, key: str) -> str:
    """``outputs.<key>`` may be a name or ``{"name": ...}``; default: the key itself."""
    value = outputs.get(key, key) if isinstance(outputs, dict) else key
    if isinstance(value, dict):
        value = value.get("name", key)
    return str(value)


MODEL_FILE_KEYS = {"onnx": ("file", "onnx"), "onnx-fp32": ("fp32_file", "file"),
                   "tflite": ("tflite_file", "tflite")}


def _make_detector(manifest: fsbundle.Manifest, det: dict[str, Any],
                   labels: tuple[str, ...], backend: str) -> Detector:
    outputs = det.get("outputs", {})
    names = {"anomaly_output": _output_name(outputs, ANOMALY_OUTPUT),
             "probability_output": _output_name(outputs, PROBABILITY_OUTPUT)}
    keys = MODEL_FILE_KEYS.get(backend)
    if keys is None:
        raise BundleError(f"unknown backend {backend!r}; use one of {sorted(MODEL_FILE_KEYS)}")
    name = next((det[k] for k in keys if isinstance(det.get(k), str)), None)
    if name is None:
        raise BundleError(f"bundle {manifest.name}: no {backend} model file in models.detector")
    model_path = manifest.file(name)
    if backend == "tflite":
        return TfliteDetector(model_path, labels=labels, **names)
    input_name = det.get("input")
    if input_name is not None and not isinstance(input_name, str):
        raise BundleError(f"bundle {manifest.name}: models.detector.input must be a name, "
                          f"got {input_name!r}")
    return OnnxDetector(model_path, labels=labels, input_name=input_name, **names)


class ZScoreDetector:
    """Model-free fallback when no bundle is loaded: how far a window sits from baseline.

    ``anomaly`` is the root mean square of the z-scores (each clipped to +-50, so one broken
    feature cannot dominate); ``probabilities`` are over (normal, anomalous) with
    p(anomalous) = 1 - exp(-max(0, anomaly - 1) / 2). It cannot name a fault type.
    """

    labels: tuple[str, ...] = ("normal", "anomalous")

    def __init__(self, width: int) -> None:
        self.width = width

    def score(self, z: npt.NDArray[np.float32]) -> Scores:
        x = np.clip(_batch(z, self.width), -50.0, 50.0)
        anomaly = np.sqrt(np.mean(x * x, axis=1)) if x.size else np.zeros(0, np.float32)
        p_bad = 1.0 - np.exp(-np.maximum(0.0, anomaly - 1.0) / 2.0)
        probs = np.stack((1.0 - p_bad, p_bad), axis=1) if x.size else np.zeros((0, 2))
        return _scores(anomaly, probs, x.shape[0], self.labels)
