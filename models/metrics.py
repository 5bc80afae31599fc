"""Decision metrics shared by the build (training fit) and the evaluation report."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from models.export import LABELS, DetectorWeights, reference_forward
from models.train import MachineSet


def decide(scores: npt.NDArray[np.float32], probs: npt.NDArray[np.float32],
           threshold: float) -> npt.NDArray[np.int64]:
    """Per-window decision: 0 (normal) below the threshold, else the most probable fault."""
    fault = 1 + np.argmax(probs[:, 1:], axis=1)
    return np.where(scores >= threshold, fault, 0).astype(np.int64)


UNKNOWN = len(LABELS)  # "alert, fault type unknown" in device decisions


def device_decision(scores: npt.NDArray[np.float32], probs: npt.NDArray[np.float32],
                    threshold: float, min_probability: float = 0.5) -> npt.NDArray[np.int64]:
    """What the device reports per window (docs/bundle.md thresholds.fault): 0 = no alert,
    else the most probable fault if its probability >= min_probability, else UNKNOWN."""
    fault = 1 + np.argmax(probs[:, 1:], axis=1)
    sure = probs[np.arange(len(fault)), fault] >= min_probability
    named = np.where(sure, fault, UNKNOWN)
    return np.where(scores >= threshold, named, 0).astype(np.int64)


def classify(probs: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    return np.argmax(probs, axis=1).astype(np.int64)


def confusion(y_true: npt.NDArray[np.int64], y_pred: npt.NDArray[np.int64]) -> list[list[int]]:
    m = np.zeros((len(LABELS), len(LABELS)), np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m.tolist()


def quick_metrics(w: DetectorWeights, sets: list[MachineSet]) -> dict[str, Any]:
    """Training-fit figures (not an evaluation: see docs/evaluation.md)."""
    z = np.concatenate([s.z[~s.commission] for s in sets])
    y = np.concatenate([s.labels[~s.commission] for s in sets])
    keep = y >= 0
    a, p = reference_forward(w, z[keep])
    y = y[keep]
    pred = classify(p)
    return {"training_fit": {
        "windows": len(y),
        "window_accuracy": round(float(np.mean(pred == y)), 4),
        "normal_windows_called_fault": round(float(np.mean(pred[y == 0] != 0)), 4)
        if (y == 0).any() else None,
        "fault_windows_called_normal": round(float(np.mean(pred[y > 0] == 0)), 4)
        if (y > 0).any() else None,
        "median_anomaly_normal": round(float(np.median(a[y == 0])), 4) if (y == 0).any() else None,
        "median_anomaly_fault": round(float(np.median(a[y > 0])), 4) if (y > 0).any() else None,
    }}
