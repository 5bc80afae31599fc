"""Sample checks on windows: the pure, vectorised part of :mod:`agent.monitor.quality`.

``sample_issues(x[n, w], full_scale_g, config)`` returns the issues of each row: empty,
non_finite, clipping, flatline and spikes (see the table in :mod:`agent.monitor.quality`).
Rows are checked in float64, so huge float32 values cannot overflow the statistics.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from foreshock.errors import ConfigError

CHECKS = ("empty", "non_finite", "clipping", "flatline", "spikes", "rate_drift", "seq_gaps")
NON_BLOCKING = frozenset({"seq_gaps"})
MAD_TO_SD = 1.4826
ROBUST_SAMPLES = 512
CHUNK_VALUES = 32768  # rows per pass so that temporaries stay in cache


@dataclass(frozen=True)
class QualityConfig:
    """Limits of the integrity checks. Defaults suit accelerometers in g."""

    flat_std_g: float = 1e-6
    repeat_fraction: float = 0.95
    clip_min_samples: int = 3
    clip_min_fraction: float = 0.002
    clip_pileup_ratio: float = 3.0
    full_scale_fraction: float = 0.999
    spike_sigma: float = 16.0
    spike_isolation: float = 0.25
    spike_neighbours: int = 3
    rate_tolerance: float = 0.02
    rate_min_span_s: float = 1.0
    rate_frames: int = 64
    time_step_s: float = 0.5
    bad_after: int = 2
    good_after: int = 3

    def __post_init__(self) -> None:
        for name in ("flat_std_g", "clip_pileup_ratio", "spike_sigma", "rate_tolerance",
                     "rate_min_span_s", "time_step_s"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"monitor.{name} = {getattr(self, name)!r} must be > 0")
        for name in ("repeat_fraction", "clip_min_fraction", "full_scale_fraction",
                     "spike_isolation"):
            if not 0.0 < float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"monitor.{name} = {getattr(self, name)!r} must be in (0, 1]")
        for name in ("clip_min_samples", "spike_neighbours", "bad_after", "good_after"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"monitor.{name} = {getattr(self, name)!r} must be >= 1")
        if self.rate_frames < 2:
            raise ConfigError(f"monitor.rate_frames = {self.rate_frames!r} must be >= 2")


@dataclass(frozen=True)
class Issue:
    """One failed check: ``value`` measured against ``limit`` (units in ``unit``)."""

    check: str
    value: float
    limit: float
    unit: str = ""

    @property
    def blocking(self) -> bool:
        return self.check not in NON_BLOCKING

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "value": json_number(self.value),
                "limit": json_number(self.limit), "unit": self.unit}


def sample_issues(x: npt.NDArray[np.float64], full_scale_g: float | list[float],
                  cfg: QualityConfig) -> list[list[Issue]]:
    """Run the sample checks on each row of ``x`` (float64 ``[n, w]``)."""
    n = x.shape[0]
    full = np.broadcast_to(np.asarray(full_scale_g, dtype=np.float64), (n,))
    finite = np.isfinite(x)
    all_finite = finite.all(axis=1)
    out: list[list[Issue]] = [[] for _ in range(n)]
    if x.shape[1] == 0:
        return [[Issue("empty", 0, 1, "samples")] for _ in range(n)]
    clean = np.flatnonzero(all_finite)
    step = max(1, CHUNK_VALUES // max(x.shape[1], 1))
    for start in range(0, clean.size, step):
        rows = clean[start:start + step]
        for row, issues in zip(rows, _row_checks(x[rows], full[rows], cfg), strict=True):
            out[row] = issues
    for row in np.flatnonzero(~all_finite):
        bad = int(x.shape[1] - np.count_nonzero(finite[row]))
        rest = x[row][finite[row]]
        out[row] = [Issue("non_finite", bad, 0, "samples")]
        if rest.size:
            out[row] += _row_checks(rest.reshape(1, -1), full[row:row + 1], cfg)[0]
    return out


@functools.lru_cache(maxsize=16)
def _subset(width: int) -> npt.NDArray[np.intp]:
    """Fixed scattered positions for the robust centre and scale (no aliasing with tones)."""
    if width <= ROBUST_SAMPLES:
        idx = np.arange(width)
    else:
        idx = np.sort(np.random.default_rng(width).choice(width, ROBUST_SAMPLES, replace=False))
    idx.setflags(write=False)
    return idx


def _robust(x: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64],
                                                  npt.NDArray[np.float64]]:
    """Median and MAD-based sd per row, from at most ROBUST_SAMPLES scattered samples."""
    sub = x[:, _subset(x.shape[1])]
    half = sub.shape[1] // 2
    med = np.partition(sub, half, axis=1)[:, half]
    mad = np.partition(np.abs(sub - med[:, None]), half, axis=1)[:, half]
    return med, MAD_TO_SD * mad


def _row_checks(x: npt.NDArray[np.float64], full: npt.NDArray[np.float64],
                cfg: QualityConfig) -> list[list[Issue]]:
    """Flatline, clipping and spike checks on finite rows, vectorised over rows.

    Whole-row passes are a handful of array operations; Python per row runs only for rows
    whose cheap screens found something.
    """
    m, w = x.shape
    with np.errstate(over="ignore", invalid="ignore"):
        med, scale = _robust(x)
        d = x - med[:, None]
        mean = d.mean(axis=1)
        sd = np.sqrt(np.maximum(np.einsum("ij,ij->i", d, d) / w - mean * mean, 0.0))
        repeats = (np.count_nonzero(x[:, 1:] == x[:, :-1], axis=1) / (w - 1) if w > 1
                   else np.ones(m))
        top, bottom = d.max(axis=1), d.min(axis=1)
        need = max(cfg.clip_min_samples, cfg.clip_min_fraction * w)
        at_top = np.count_nonzero(d >= (top - 1e-6 * np.abs(top))[:, None], axis=1)
        at_bottom = np.count_nonzero(d <= (bottom + 1e-6 * np.abs(bottom))[:, None], axis=1)
        np.abs(d, out=d)
        peak = np.maximum(top, -bottom)
    limit = np.abs(med) + peak >= cfg.full_scale_fraction * full
    out: list[list[Issue]] = []
    for i in range(m):
        if not sd[i] >= cfg.flat_std_g:
            out.append([Issue("flatline", float(sd[i]), cfg.flat_std_g, "g sd")])
            continue
        if repeats[i] >= cfg.repeat_fraction:
            out.append([Issue("flatline", float(repeats[i]), cfg.repeat_fraction,
                              "fraction repeated")])
            continue
        issues: list[Issue] = []
        if (full[i] > 0 and limit[i]) or max(at_top[i], at_bottom[i]) >= need:
            clip = _clipping(x[i], float(full[i]), cfg)
            if clip is not None:
                issues.append(clip)
        if peak[i] > cfg.spike_sigma * scale[i]:
            spikes = _spikes(d[i], float(scale[i]), cfg)
            if spikes:
                issues.append(Issue("spikes", spikes, cfg.spike_sigma, "isolated samples"))
        out.append(issues)
    return out


def _clipping(row: npt.NDArray[np.float64], full_scale_g: float,
              cfg: QualityConfig) -> Issue | None:
    """Samples at int16 full scale, or a plateau: a pile-up at the row's extreme value."""
    if full_scale_g > 0:
        at_full = int(np.count_nonzero(np.abs(row) >= cfg.full_scale_fraction * full_scale_g))
        if at_full >= cfg.clip_min_samples:
            return Issue("clipping", at_full, cfg.clip_min_samples, "samples at full scale")
    need = max(cfg.clip_min_samples, cfg.clip_min_fraction * row.size)
    worst = 0
    for signed in (row, -row):
        top = float(signed.max())
        tol = 1e-6 * max(abs(top), 1e-30)
        at_top = signed >= top - tol
        n_top = int(np.count_nonzero(at_top))
        if n_top < need:
            continue
        below = signed[~at_top]
        n_next = int(np.count_nonzero(below == below.max())) if below.size else 0
        if n_top >= cfg.clip_pileup_ratio * max(n_next, 1):
            worst = max(worst, n_top)
    return Issue("clipping", worst, need, "samples at the extreme") if worst else None


def _spikes(dev: npt.NDArray[np.float64], scale: float, cfg: QualityConfig) -> int:
    """Count samples beyond ``spike_sigma`` robust sd whose neighbours stay small."""
    if not scale > 0:
        return 0
    cand = np.flatnonzero(dev > cfg.spike_sigma * scale)
    if cand.size == 0 or cand.size > dev.size // 4:
        return 0
    k = cfg.spike_neighbours
    padded = np.concatenate((np.zeros(k), dev, np.zeros(k)))
    offsets = np.r_[-k:0, 1:k + 1]
    neighbours = padded[cand[:, None] + k + offsets[None, :]].max(axis=1)
    return int(np.count_nonzero(neighbours < cfg.spike_isolation * dev[cand]))


def json_number(value: float) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    v = float(value)
    return v if np.isfinite(v) else None
