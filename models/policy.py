"""How a detector's outputs become decisions, as the agent makes them: the threshold adapted
from the machine's own commissioning scores, k-of-n debouncing, the fault label."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.build import (
    ADAPT_FACTOR,
    ADAPT_MARGIN,
    ADAPT_QUANTILE,
    anomaly_threshold,
    thresholds,
)
from models.export import DetectorWeights, save_onnx, save_tflite
from models.quantize import quantize_int8
from models.runtime import OnnxRunner, TfliteRunner
from models.train import MachineSet

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Policy:
    floor: float
    quantile: float = ADAPT_QUANTILE
    factor: float = ADAPT_FACTOR
    margin: float = ADAPT_MARGIN
    k: int = 3
    n: int = 5

    def threshold(self, commission_scores: F32) -> float:
        if len(commission_scores) == 0:
            return self.floor
        q = float(np.quantile(commission_scores, self.quantile))
        return max(self.floor, q * self.factor + self.margin)

    def bundle_thresholds(self) -> dict[str, Any]:
        """The manifest ``thresholds`` table that makes the agent decide by this policy:
        the Decider reads the floor and the adapt rule from it; ``debounce`` records k-of-n,
        which the agent takes from ``[decision] k, n`` in agent.toml (docs/bundle.md)."""
        out = thresholds(self.floor)
        out["anomaly"]["adapt"].update(quantile=self.quantile, factor=self.factor,
                                       margin=self.margin)
        out["debounce"] = {"k": self.k, "n": self.n}
        return out


def first_kofn(mask: npt.NDArray[np.bool_], k: int, n: int) -> int | None:
    """Index of the first window where k of the last n windows are set, or None."""
    counts = np.convolve(mask.astype(np.int64), np.ones(n, np.int64))[: len(mask)]
    hits = np.nonzero(counts >= k)[0]
    return int(hits[0]) if len(hits) else None


def kofn_mask(mask: npt.NDArray[np.bool_], k: int, n: int) -> npt.NDArray[np.bool_]:
    counts = np.convolve(mask.astype(np.int64), np.ones(n, np.int64))[: len(mask)]
    return np.asarray(counts >= k)


class Runners:
    """The trained detector as the three shipped files (int8 ONNX default), in a temp dir."""

    def __init__(self, w: DetectorWeights, calibration_z: F32, seed: int = 0) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="foreshock-eval-")
        d = Path(self._dir.name)
        save_onnx(w, d / "fp32.onnx")
        quantize_int8(d / "fp32.onnx", d / "int8.onnx", calibration_z, seed=seed)
        save_tflite(w, d / "m.tflite")
        self.fp32 = OnnxRunner(d / "fp32.onnx")
        self.int8 = OnnxRunner(d / "int8.onnx")
        self.tflite = TfliteRunner(d / "m.tflite")

    def close(self) -> None:
        self._dir.cleanup()


def floor_from(runner: OnnxRunner, sets: list[MachineSet]) -> float:
    normal = np.concatenate([s.z[s.labels == 0] for s in sets])
    return anomaly_threshold(runner(normal)[0])
