"""Build a signed bundle: training sets -> detector weights -> ONNX fp32, int8 QDQ, TFLite ->
manifest.json (docs/bundle.md) -> ed25519 signature.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from foreshock import bundle as fb
from foreshock.errors import BundleError, ConfigError
from models.export import INPUT, LABELS, OUTPUTS, DetectorWeights, save_onnx, save_tflite
from models.quantize import quantize_int8
from models.runtime import OnnxRunner
from models.train import INPUT_FEATURES, MachineSet

log = logging.getLogger(__name__)

DETECTOR_FP32 = "detector.onnx"
DETECTOR_INT8 = "detector.int8.onnx"
DETECTOR_TFLITE = "detector.tflite"
#: Threshold adaptation: threshold = max(floor, quantile(q) of the baseline's own scores
#: x factor + margin); docs/bundle.md.
ADAPT_QUANTILE = 0.99
ADAPT_FACTOR = 1.5
ADAPT_MARGIN = 0.5


@dataclass(frozen=True)
class BundleInfo:
    name: str
    version: str
    description: str = ""
    created: str | None = None  # ISO time; None = now


def anomaly_threshold(normal_scores: npt.NDArray[np.float32]) -> float:
    """The floor threshold: the adaptation rule applied to all training-normal scores."""
    q = float(np.quantile(normal_scores, ADAPT_QUANTILE))
    return round(max(q * ADAPT_FACTOR + ADAPT_MARGIN, 1.0), 4)


def feature_stats(z: npt.NDArray[np.float32]) -> dict[str, dict[str, float]]:
    """Per-input robust statistics of training-normal z (drift monitoring)."""
    out = {}
    for i, name in enumerate(INPUT_FEATURES):
        col = z[:, i].astype(np.float64)
        q = np.quantile(col, [0.01, 0.05, 0.5, 0.95, 0.99])
        out[name] = {"mean": round(float(col.mean()), 5), "sd": round(float(col.std()), 5),
                     "p01": round(float(q[0]), 5), "p05": round(float(q[1]), 5),
                     "p50": round(float(q[2]), 5), "p95": round(float(q[3]), 5),
                     "p99": round(float(q[4]), 5)}
    return out


def write_bundle(out: Path, weights: DetectorWeights, spec: Any, sets: list[MachineSet],
                 info: BundleInfo, metrics: dict[str, Any], key_path: Path | None,
                 *, training: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """Write every file of the bundle into ``out`` (replaced) and sign it if a key is given."""
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"bundle output {out} exists and is not a directory")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    features = list(INPUT_FEATURES)
    save_onnx(weights, out / DETECTOR_FP32, features)
    z_all = np.concatenate([s.z for s in sets]).astype(np.float32)
    quantize_int8(out / DETECTOR_FP32, out / DETECTOR_INT8, z_all, seed=seed)
    save_tflite(weights, out / DETECTOR_TFLITE)
    normal = np.concatenate([s.z[s.labels == 0] for s in sets])
    scores = OnnxRunner(out / DETECTOR_INT8)(normal)[0]
    manifest = {
        "name": info.name,
        "version": info.version,
        "created": info.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "description": info.description,
        "feature_spec": spec.to_dict(),
        "feature_spec_hash": spec.hash,
        "models": {"detector": detector_entry(features)},
        "thresholds": thresholds(anomaly_threshold(scores)),
        "training": {**(training or {}), "windows": len(z_all),
                     "normal_windows": len(normal), "machines": len(sets),
                     "feature_stats": feature_stats(normal)},
        "metrics": metrics,
    }
    fb.write_manifest(out, manifest)
    if key_path is not None:
        fb.sign(out, fb.load_private_key(key_path))
    return manifest


def detector_entry(features: list[str]) -> dict[str, Any]:
    return {
        "file": DETECTOR_INT8, "fp32_file": DETECTOR_FP32, "tflite_file": DETECTOR_TFLITE,
        "input": INPUT, "input_features": features, "input_kind": "baseline_robust_z",
        "outputs": {"anomaly_score": {"name": OUTPUTS[0], "shape": ["N"],
                                      "meaning": "higher = more anomalous"},
                    "fault_probabilities": {"name": OUTPUTS[1], "shape": ["N", len(LABELS)]}},
        "labels": list(LABELS),
    }


def thresholds(floor: float) -> dict[str, Any]:
    return {
        "anomaly": {
            "value": floor,
            "adapt": {"method": "baseline_quantile", "quantile": ADAPT_QUANTILE,
                      "factor": ADAPT_FACTOR, "margin": ADAPT_MARGIN, "floor": floor,
                      "rule": "max(floor, quantile(commissioning scores, quantile) * factor "
                              "+ margin)"},
        },
        "fault": {"min_probability": 0.5,
                  "rule": "when alerting, report the most probable non-normal label if its "
                          "probability >= min_probability, else 'unknown'"},
        "debounce": {"k": 3, "n": 5},
    }


def resign(bundle: Path, key_path: Path) -> None:
    """Re-sign an existing bundle's manifest with another key (a site's own)."""
    if not (bundle / fb.MANIFEST).is_file():
        raise BundleError(f"{bundle} is not a bundle: no {fb.MANIFEST}")
    fb.sign(bundle, fb.load_private_key(key_path))


def ensure_key(key_path: Path) -> Path:
    """Create an ed25519 signing key at ``key_path`` (mode 0600) unless one is there."""
    if key_path.exists():
        fb.load_private_key(key_path)
        return key_path
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key = fb.generate_signing_key()
    key_path.write_bytes(fb.private_key_pem(key))
    key_path.chmod(0o600)
    key_path.with_suffix(".pub").write_bytes(fb.public_key_pem(key.public_key()))
    log.info("generated signing key %s", key_path)
    return key_path


def public_of(key_path: Path) -> bytes:
    return fb.public_key_pem(fb.load_private_key(key_path).public_key())


def replace_spec(spec: Any, **kw: Any) -> Any:
    return dataclasses.replace(spec, **kw)
