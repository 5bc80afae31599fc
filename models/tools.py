"""Operations on an existing bundle: re-quantize, re-export TFLite (then re-sign)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from foreshock import bundle as fb
from foreshock.errors import BundleError, ConfigError
from models.build import DETECTOR_FP32, DETECTOR_INT8, DETECTOR_TFLITE
from models.export import DetectorWeights, save_tflite
from models.quantize import quantize_int8


def weights_from_onnx(path: Path) -> DetectorWeights:
    """Read the detector weights back from an fp32 detector.onnx written by models.export."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except (OSError, ValueError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        raise BundleError(f"{path}: not an ONNX file: {exc}") from None
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    need = ("z_max", "w1", "b1", "w2", "b2", "w_anomaly", "b_anomaly")
    if any(n not in init for n in need):
        raise BundleError(f"{path}: not a foreshock detector graph (needs {', '.join(need)})")
    z_max = float(init["z_max"])
    z_min = float(init["z_min"]) if "z_min" in init else -z_max
    return DetectorWeights(z_max, init["w1"], init["b1"], init["w2"],
                           init["b2"], init["w_anomaly"].ravel(), float(init["b_anomaly"][0]),
                           z_floor=None if z_min == -z_max else z_min)


def _bundle(bundle: Path) -> dict[str, object]:
    data = fb.read_manifest(bundle)
    if not (bundle / DETECTOR_FP32).is_file():
        raise BundleError(f"{bundle}: no {DETECTOR_FP32}")
    return data


def calibration_from_manifest(data: dict[str, object], k: int, seed: int = 0
                              ) -> npt.NDArray[np.float32]:
    """Seeded z-vectors: training-normal statistics plus a spread up to the clip level."""
    training = data.get("training")
    stats = training.get("feature_stats", {}) if isinstance(training, dict) else {}
    rng = np.random.default_rng(seed)
    sd = np.array([max(float(s.get("sd", 1.0)), 0.1) for s in stats.values()] or [1.0] * k)
    if sd.size != k:
        sd = np.ones(k)
    normal = rng.standard_normal((2048, k)) * sd
    faulty = rng.uniform(-2.0, 20.0, (1024, k))
    return np.concatenate([normal, faulty]).astype(np.float32)


def requantize(bundle: Path, key: Path, calibration: Path | None) -> None:
    data = _bundle(bundle)
    w = weights_from_onnx(bundle / DETECTOR_FP32)
    if calibration is not None:
        try:
            z = np.load(calibration)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--calibration {calibration}: not a .npy array: {exc}") from None
        if z.ndim != 2 or z.shape[1] != w.n_inputs:
            raise ConfigError(f"--calibration {calibration}: shape {z.shape}, need [n, "
                              f"{w.n_inputs}]")
    else:
        z = calibration_from_manifest(data, w.n_inputs)
    quantize_int8(bundle / DETECTOR_FP32, bundle / DETECTOR_INT8, z)
    _rewrite(bundle, data, key)


def reexport_tflite(bundle: Path, key: Path) -> None:
    data = _bundle(bundle)
    save_tflite(weights_from_onnx(bundle / DETECTOR_FP32), bundle / DETECTOR_TFLITE)
    _rewrite(bundle, data, key)


def _rewrite(bundle: Path, data: dict[str, object], key: Path) -> None:
    private = fb.load_private_key(key)
    (bundle / fb.SIGNATURE).unlink(missing_ok=True)
    fb.write_manifest(bundle, {k: v for k, v in data.items() if k != "files"})
    fb.sign(bundle, private)
