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


#: The fault classifier's evidence units (docs/models.md): each is relu(z) of one feature,
#: and may raise the logits of the labels listed (physics: a defect family's envelope lines
#: name its fault; 1x names imbalance, 2x/3x (and some 1x) misalignment; impulsiveness and
#: level say "a bearing is damaged" without saying which part). ``SHAFT_AGAINST`` features
#: may only lower the shaft-fault logits: an impulsive window is not a pure shaft fault.
EVIDENCE_UNITS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("env_bpfi_snr", ("inner_race",)), ("env_bpfi_harm_snr", ("inner_race",)),
    ("env_bpfi_sb_snr", ("inner_race",)),
    ("env_bpfo_snr", ("outer_race",)), ("env_bpfo_harm_snr", ("outer_race",)),
    ("env_2bsf_snr", ("ball",)), ("env_2bsf_harm_snr", ("ball",)), ("env_ftf_snr", ("ball",)),
    ("order_1x_g", ("imbalance", "misalignment")), ("order_2x_g", ("misalignment",)),
    ("order_3x_g", ("misalignment",)),
    ("kurtosis", ("inner_race", "outer_race", "ball")),
    ("env_band_kurtosis", ("inner_race", "outer_race", "ball")),
    ("rms_g", ("inner_race", "outer_race", "ball", "imbalance", "misalignment")),
)
SHAFT_AGAINST = ("kurtosis", "env_band_kurtosis")
SHAFT_LABELS = ("imbalance", "misalignment")
#: The physics prior the fit is pulled towards (and the whole answer for labels the training
#: set lacks): one logit unit per robust sd of a family's own lines, half a unit for 1x
#: under misalignment, minus one per sd of impulsiveness for the shaft faults; "normal"
#: wins until about three sd of evidence.
PRIOR_LINE_WEIGHT = 1.0
PRIOR_NORMAL_BIAS = 3.0
BIAS_PULL = 1e-3


@dataclass(frozen=True)
class TrainConfig:
    hidden: int = 24  # unused by the evidence classifier; kept for callers
    seed: int = 0
    max_iter: int = 600
    alpha: float = 1e-3  # unused by the evidence classifier; kept for callers
    classifier_features: tuple[str, ...] = CLASSIFIER_FEATURES
    #: L2 pull of the evidence weights towards the physics prior, chosen on training data
    #: only by ``python -m models.select`` (docs/models.md)
    prior_strength: float = 0.03


def evidence_prior() -> tuple[F32, F32, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(prior weights [units, labels], prior biases, lower and upper bounds of the weights)."""
    n = len(EVIDENCE_UNITS)
    w0 = np.zeros((n, len(LABELS)), np.float32)
    lo = np.zeros((n, len(LABELS)))
    hi = np.zeros((n, len(LABELS)))
    line = {"kurtosis", "env_band_kurtosis", "rms_g"}
    for u, (feat, labels) in enumerate(EVIDENCE_UNITS):
        for label in labels:
            c = LABELS.index(label)
            hi[u, c] = np.inf
            if feat not in line:
                w0[u, c] = PRIOR_LINE_WEIGHT
        if feat in SHAFT_AGAINST:
            for label in SHAFT_LABELS:
                c = LABELS.index(label)
                lo[u, c], w0[u, c] = -np.inf, -PRIOR_LINE_WEIGHT
    u1x = [f for f, _ in EVIDENCE_UNITS].index("order_1x_g")
    w0[u1x, LABELS.index("misalignment")] = 0.5 * PRIOR_LINE_WEIGHT
    b0 = np.zeros(len(LABELS), np.float32)
    b0[0] = PRIOR_NORMAL_BIAS
    return w0, b0, lo, hi


def evidence_of(z: F32) -> npt.NDArray[np.float64]:
    """The evidence units' activations: relu of the clipped z of each unit's feature."""
    cols = [INPUT_FEATURES.index(f) for f, _ in EVIDENCE_UNITS]
    return np.maximum(np.clip(z[:, cols], -Z_CLIP, Z_CLIP), 0).astype(np.float64)


def fit_evidence(z: F32, y: npt.NDArray[np.int64], prior_strength: float
                 ) -> tuple[F32, F32]:
    """Class-balanced multinomial logistic fit of the evidence weights within their sign
    bounds, pulled towards :func:`evidence_prior` (deterministic L-BFGS-B). Labels absent
    from ``y`` keep (nearly) their prior weights."""
    from scipy.optimize import minimize

    x = evidence_of(z)
    w0, b0, lo, hi = evidence_prior()
    free = lo != hi
    present = np.unique(y)
    class_w = np.zeros(len(LABELS))
    for c in present:
        class_w[c] = len(y) / (len(present) * np.sum(y == c))
    sw = class_w[y] / len(y)
    rows = np.arange(len(y))
    nf = int(free.sum())
    # a present label's bias is its base rate in the data (barely pulled); an absent one's
    # stays with the prior like its weights
    bias_pull = np.where(class_w > 0, BIAS_PULL, prior_strength)

    def unpack(p: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64],
                                                     npt.NDArray[np.float64]]:
        w = w0.astype(np.float64)
        w[free] = p[:nf]
        return w, p[nf:]

    def loss(p: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        w, b = unpack(p)
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        lse = np.log(np.exp(logits).sum(axis=1))
        nll = float(np.sum((lse - logits[rows, y]) * sw))
        g = np.exp(logits - lse[:, None])
        g[rows, y] -= 1.0
        g *= sw[:, None]
        dw, db = w - w0, b - b0
        value = (nll + prior_strength * float(np.sum(dw ** 2))
                 + float(np.sum(bias_pull * db ** 2)))
        grad_w = x.T @ g + 2 * prior_strength * dw
        grad_b = g.sum(axis=0) + 2 * bias_pull * db
        return value, np.r_[grad_w[free], grad_b]

    bounds = [(None if np.isinf(a) else a, None if np.isinf(b) else b)
              for a, b in zip(lo[free], hi[free], strict=True)]
    bounds += [(None, None)] * len(LABELS)
    fit = minimize(loss, np.r_[w0[free], b0].astype(np.float64), jac=True, method="L-BFGS-B",
                   bounds=bounds, options={"maxiter": 2000})
    w, b = unpack(fit.x)
    return w.astype(np.float32), b.astype(np.float32)


def fit_detector(sets: list[MachineSet], cfg: TrainConfig) -> DetectorWeights:
    """Train the fault classifier (evidence head) and set the anomaly head's weights.

    The classifier is one hidden layer whose units are fixed: unit u is relu(z of feature
    u) (:data:`EVIDENCE_UNITS`); the output layer maps them to label logits with sign
    constraints from physics, fitted by :func:`fit_evidence`. It is the same ONNX / TFLite
    graph as any one-hidden-layer MLP (models.export)."""
    z = np.concatenate([s.z for s in sets])
    y = np.concatenate([s.labels for s in sets])
    keep = y >= 0
    z, y = np.clip(z[keep], -Z_CLIP, Z_CLIP), y[keep]
    w2, b2 = fit_evidence(z, y, cfg.prior_strength)
    w1 = np.zeros((len(INPUT_FEATURES), len(EVIDENCE_UNITS)), np.float32)
    for u, (feat, _) in enumerate(EVIDENCE_UNITS):
        w1[INPUT_FEATURES.index(feat), u] = 1.0
    logits = evidence_of(z) @ w2 + b2
    log.info("classifier fitted on %d windows, %d labels, train accuracy %.3f",
             len(y), len(np.unique(y)), float(np.mean(logits.argmax(axis=1) == y)))
    # every unit and the anomaly head read relu(z) only: clip at 0 (same function, finer int8)
    return DetectorWeights(Z_CLIP, w1, np.zeros(len(EVIDENCE_UNITS), np.float32), w2, b2,
                           anomaly_weights(z, y > 0), 0.0, z_floor=0.0)


#: Share of the anomaly weights learned from data; the rest is the uniform prior over
#: ANOMALY_FEATURES (docs/models.md).
LEARNED_SHARE = 0.3


def prior_anomaly_weights() -> F32:
    w = np.array([1.0 if n in ANOMALY_FEATURES else 0.0 for n in INPUT_FEATURES], np.float32)
    return w / w.sum()


def anomaly_weights(z: F32 | None = None, faulty: npt.NDArray[np.bool_] | None = None,
                    share: float | None = None) -> F32:
    """Non-negative weights of the anomaly head, summing to 1: the prior blended with a
    non-negative logistic fit of faulty vs normal on relu(z)^2 (deterministic L-BFGS-B).
    ``share`` is the learned part's share (default :data:`LEARNED_SHARE`; 0 = the prior)."""
    share = LEARNED_SHARE if share is None else float(share)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"anomaly weight share {share} must lie in [0, 1]")
    prior = prior_anomaly_weights()
    if z is None or faulty is None or faulty.all() or not faulty.any() or share == 0.0:
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
    w = (1 - share) * prior + share * learned / learned.sum()
    return (w / w.sum()).astype(np.float32)
