"""Training: recordings -> windows -> features -> per-machine baseline z -> detector weights.

Every machine is z-scored against its own commissioning windows (``Baseline.fit`` on its
healthy/early windows), exactly as the agent does on the device, and only features that
mean the same on any rig are used (:data:`INPUT_FEATURES`: shape statistics, shaft-order
amplitudes and envelope SNRs at the bearing's defect orders). Absolute spectral bands and
frequencies are left out: they memorise the rig (docs/models.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from foreshock.errors import DataError
from models.datasets import Recording
from models.export import LABELS, DetectorWeights

log = logging.getLogger(__name__)

INPUT_FEATURES: tuple[str, ...] = (
    "rms_g", "crest_factor", "kurtosis", "impulse_factor", "clearance_factor",
    "order_1x_g", "order_2x_g", "order_3x_g", "env_band_kurtosis",
    "env_bpfo_snr", "env_bpfo_h2_snr", "env_bpfo_h3_snr", "env_bpfo_harm_snr",
    "env_bpfi_snr", "env_bpfi_h2_snr", "env_bpfi_h3_snr", "env_bpfi_harm_snr",
    "env_2bsf_snr", "env_2bsf_h2_snr", "env_2bsf_h3_snr", "env_2bsf_harm_snr",
    "env_ftf_snr", "env_bpfi_sb_snr",
)
#: Features whose rise means damage; the anomaly head averages their positive z.
ANOMALY_FEATURES: tuple[str, ...] = (
    "rms_g", "kurtosis", "crest_factor", "order_1x_g", "order_2x_g",
    "env_bpfo_harm_snr", "env_bpfi_harm_snr", "env_2bsf_harm_snr", "env_bpfi_sb_snr",
)
#: What the fault classifier looks at: defect-order envelope SNRs and shaft orders only.
#: Impulsiveness and level (kurtosis, crest, RMS) say "damaged" on every rig but "which
#: defect" differently on each; they feed the anomaly head instead (docs/models.md).
CLASSIFIER_FEATURES: tuple[str, ...] = tuple(
    n for n in INPUT_FEATURES if n.startswith(("env_bp", "env_2bsf", "order_")))
Z_CLIP = 10.0

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class MachineSet:
    """One machine's windows as baseline z-scores, with labels and times."""

    name: str
    z: F32  # [n, k] over INPUT_FEATURES
    labels: npt.NDArray[np.int64]  # index into LABELS, -1 = unlabelled
    t_s: npt.NDArray[np.float64]
    commission: npt.NDArray[np.bool_]  # windows the baseline was fitted on


def windows_of(rec: Recording, spec: Any, channel: str | None = None
               ) -> tuple[F32, npt.NDArray[np.float64]]:
    """Cut each segment (resampled to the spec rate) into spec windows; (windows, t_s)."""
    from agent.features import resample

    out, times = [], []
    ws, hop = spec.window_samples, spec.hop_samples
    for seg, t0 in zip(rec.channel(channel), rec.t_s, strict=True):
        x = np.asarray(seg, np.float32)
        if abs(rec.sample_rate_hz - spec.sample_rate_hz) > 1e-6:
            x = resample(x, rec.sample_rate_hz, spec.sample_rate_hz)
        n = 0 if x.size < ws else 1 + (x.size - ws) // hop
        if n:
            idx = np.arange(n)[:, None] * hop + np.arange(ws)[None, :]
            out.append(x[idx])
            times.append(t0 + np.arange(n) * hop / spec.sample_rate_hz)
    if not out:
        raise DataError(f"{rec.name}: no segment fills a {ws}-sample window at "
                        f"{spec.sample_rate_hz:g} Hz")
    return np.concatenate(out).astype(np.float32), np.concatenate(times)


def features_of(rec: Recording, spec: Any, channel: str | None = None
                ) -> tuple[F32, npt.NDArray[np.float64]]:
    from agent.features import extract

    windows, t_s = windows_of(rec, spec, channel)
    return np.asarray(extract(spec, windows, rec.rpm), np.float32), t_s


def input_columns(spec: Any) -> list[int]:
    return list(spec.index(list(INPUT_FEATURES)))


def machine_set(name: str, spec: Any, feats: F32, t_s: npt.NDArray[np.float64],
                labels: npt.NDArray[np.int64], commission: npt.NDArray[np.bool_],
                baseline_feats: F32 | None = None) -> MachineSet:
    """z-score one machine's features against its commissioning windows (or given ones)."""
    from agent.features import Baseline

    cols = input_columns(spec)
    ref = feats[commission] if baseline_feats is None else baseline_feats
    if ref.shape[0] < 4:
        raise DataError(f"{name}: {ref.shape[0]} commissioning windows; need at least 4")
    base = Baseline.fit(ref[:, cols], list(INPUT_FEATURES))
    z = np.asarray(base.z(feats[:, cols]), np.float32)
    return MachineSet(name, np.nan_to_num(z, posinf=Z_CLIP, neginf=-Z_CLIP), labels, t_s,
                      commission)


def label_index(label: str | None) -> int:
    return LABELS.index(label) if label in LABELS else -1


@dataclass(frozen=True)
class TrainConfig:
    hidden: int = 24
    seed: int = 0
    max_iter: int = 600
    alpha: float = 1e-3
    classifier_features: tuple[str, ...] = CLASSIFIER_FEATURES


def fit_detector(sets: list[MachineSet], cfg: TrainConfig) -> DetectorWeights:
    """Train the classifier head (sklearn MLP) and set the anomaly head's weights."""
    from sklearn.neural_network import MLPClassifier

    z = np.concatenate([s.z for s in sets])
    y = np.concatenate([s.labels for s in sets])
    keep = y >= 0
    z, y = np.clip(z[keep], -Z_CLIP, Z_CLIP), y[keep]
    cols = [INPUT_FEATURES.index(n) for n in cfg.classifier_features]
    # every label gets an output column, even ones absent from this training set
    present = np.unique(y)
    mlp = MLPClassifier(hidden_layer_sizes=(cfg.hidden,), alpha=cfg.alpha, max_iter=cfg.max_iter,
                        random_state=cfg.seed, early_stopping=False)
    mlp.fit(z[:, cols], y)
    w2 = np.zeros((cfg.hidden, len(LABELS)), np.float32)
    b2 = np.full(len(LABELS), -30.0, np.float32)  # absent labels: probability ~0
    if len(present) == 2:  # sklearn uses one logistic output for two classes
        w2[:, present[1]] = mlp.coefs_[1][:, 0]
        b2[present[0]], b2[present[1]] = 0.0, mlp.intercepts_[1][0]
    else:
        w2[:, present] = mlp.coefs_[1]
        b2[present] = mlp.intercepts_[1]
    log.info("classifier trained on %d windows, %d labels, train accuracy %.3f",
             len(y), len(present), mlp.score(z[:, cols], y))
    w1 = np.zeros((len(INPUT_FEATURES), cfg.hidden), np.float32)
    w1[cols] = mlp.coefs_[0]
    return DetectorWeights(Z_CLIP, w1,
                           mlp.intercepts_[0].astype(np.float32), w2, b2,
                           anomaly_weights(z, y > 0), 0.0)


#: Share of the anomaly weights learned from data; the rest is the uniform prior over
#: ANOMALY_FEATURES (docs/models.md).
LEARNED_SHARE = 0.3


def prior_anomaly_weights() -> F32:
    w = np.array([1.0 if n in ANOMALY_FEATURES else 0.0 for n in INPUT_FEATURES], np.float32)
    return w / w.sum()


def anomaly_weights(z: F32 | None = None, faulty: npt.NDArray[np.bool_] | None = None) -> F32:
    """Non-negative weights of the anomaly head, summing to 1: the prior blended with a
    non-negative logistic fit of faulty vs normal on relu(z)^2 (deterministic L-BFGS-B)."""
    prior = prior_anomaly_weights()
    if z is None or faulty is None or faulty.all() or not faulty.any():
        return prior
    from scipy.optimize import minimize

    x = np.maximum(np.clip(z, -Z_CLIP, Z_CLIP), 0).astype(np.float64) ** 2

    def loss(p: npt.NDArray[np.float64]) -> float:
        s = x @ p[:-1] + p[-1]
        return float(np.mean(np.where(faulty, np.logaddexp(0, -s), np.logaddexp(0, s)))
                     + 1e-4 * p[:-1].sum())

    k = x.shape[1]
    start = np.r_[np.full(k, 0.01), -1.0]
    fit = minimize(loss, start, method="L-BFGS-B", bounds=[(0.0, None)] * k + [(None, None)])
    learned = fit.x[:-1]
    if learned.sum() <= 0:
        return prior
    w = (1 - LEARNED_SHARE) * prior + LEARNED_SHARE * learned / learned.sum()
    return (w / w.sum()).astype(np.float32)
