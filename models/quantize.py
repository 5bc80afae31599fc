"""int8 static quantization (QDQ) of the detector with onnxruntime's tooling.

Calibrated on training z-vectors (MinMax over a seeded sample). Activations and weights are
signed int8 with symmetric weights; the float input and outputs stay float32, so the int8
file is a drop-in replacement for the fp32 one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from foreshock.errors import ConfigError
from models.export import FLOAT_NODES

log = logging.getLogger(__name__)


class _Reader:
    """onnxruntime CalibrationDataReader over z-vectors in fixed-size batches."""

    def __init__(self, input_name: str, z: npt.NDArray[np.float32], batch: int = 64) -> None:
        self.batches = [{input_name: z[i:i + batch]} for i in range(0, len(z), batch)]
        self.pos = 0

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        if self.pos >= len(self.batches):
            return None
        self.pos += 1
        return self.batches[self.pos - 1]

    def rewind(self) -> None:
        self.pos = 0


def quantize_int8(fp32_path: Path, int8_path: Path, calibration_z: npt.NDArray[np.float32],
                  *, input_name: str = "z", max_samples: int = 4096, seed: int = 0) -> None:
    """Write ``int8_path``: static QDQ int8 of ``fp32_path`` calibrated on ``calibration_z``."""
    import tempfile

    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    z = np.asarray(calibration_z, np.float32)
    if z.ndim != 2 or len(z) == 0:
        raise ConfigError(f"calibration data must be a non-empty [n, k] array, got {z.shape}")
    rng = np.random.default_rng(seed)
    if len(z) > max_samples:
        z = z[np.sort(rng.choice(len(z), max_samples, replace=False))]
    with tempfile.TemporaryDirectory(prefix="foreshock-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_optimization=True,
                          skip_symbolic_shape=True)
        _quantize(quantize_static, prepared, int8_path, _Reader(input_name, z))
    log.info("quantized %s -> %s (%d calibration vectors)", fp32_path, int8_path, len(z))


def _quantize(quantize_static: Any, src: Path, dst: Path, reader: _Reader) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    quantize_static(
        str(src), str(dst), reader,
        quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8, per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=list(FLOAT_NODES),
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
