"""Sample checks on windows: the pure, vectorised part of :mod:`agent.monitor.quality`.

``sample_issues(x[n, w], full_scale_g, config)`` returns the issues of each row: empty,
non_finite, clipping, flatline and spikes (see the table in :mod:`agent.monitor.quality`).
Screens run over the whole batch in its own dtype (float32 from the windower) with array
operations; exact figures come from float64, and only for rows a screen flagged, so huge
float32 values cannot overflow the statistics.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from foreshock.errors import ConfigError

CHECKS = ("empty", "non_finite", "clipping", "flatline", "spikes", "rate_drift", "seq_gaps")
NON_BLOCKING = frozenset({"seq_gaps"})
MAD_TO_SD = 1.4826
ROBUST_SAMPLES = 512
CLIP_GROUP = 8  # samples per group of the clipping screen (at most; see _extreme_groups)
HUGE = 1e30  # beyond this, statistics of float32 rows run in float64


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


def sample_issues(x: npt.NDArray[np.floating[Any]], full_scale_g: float | list[float],
                  cfg: QualityConfig) -> list[list[Issue]]:
    """Run the sample checks on each row of ``x`` (float32 or float64 ``[n, w]``).

    Screens run on the whole batch in the input dtype; exact figures are computed in
    float64, and only for the rows a screen flagged.
    """
    n, w = x.shape
    if w == 0:
        return [[Issue("empty", 0, 1, "samples")] for _ in range(n)]
    full = np.broadcast_to(np.asarray(full_scale_g, dtype=np.float64), (n,))
    groups = _extreme_groups(x, _clip_need(w, cfg))
    with np.errstate(invalid="ignore"):  # NaN propagates; inf is an extreme
        if groups is None:
            top, bottom = x.max(axis=1), x.min(axis=1)
        else:
            top, bottom = groups[0].max(axis=1), groups[1].min(axis=1)
    all_finite = np.isfinite(top) & np.isfinite(bottom)
    if all_finite.all():
        return _finite_issues(x, top, bottom, full, cfg, groups)
    out: list[list[Issue]] = [[] for _ in range(n)]
    clean = np.flatnonzero(all_finite)
    if clean.size:
        found = _finite_issues(x[clean], top[clean], bottom[clean], full[clean], cfg)
        for row, issues in zip(clean, found, strict=True):
            out[row] = issues
    for row in np.flatnonzero(~all_finite):
        finite = np.isfinite(x[row])
        rest = x[row][finite].reshape(1, -1)
        out[row] = [Issue("non_finite", int(w - np.count_nonzero(finite)), 0, "samples")]
        if rest.size:
            out[row] += _finite_issues(rest, rest.max(axis=1), rest.min(axis=1),
                                       full[row:row + 1], cfg)[0]
    return out


def _clip_need(width: int, cfg: QualityConfig) -> float:
    """Samples at a row's extreme that make a plateau."""
    return max(cfg.clip_min_samples, cfg.clip_min_fraction * width)


Groups = tuple[npt.NDArray[Any], npt.NDArray[Any], int]


def _extreme_groups(x: npt.NDArray[np.floating[Any]], need: float) -> Groups | None:
    """Per row, the max and the min of each group of ``g`` samples: the columns of ``x``
    viewed as ``[n, g, w / g]`` (elementwise maxima of g slices: about the cost of one
    ``max``). ``g`` is the largest power of two up to CLIP_GROUP that divides ``w`` and is
    below ``ceil(need)``; None when there is none (then the screens count every sample).

    The row extremes are the extremes of the groups, and a row with ``ceil(need)`` samples
    at or beyond a level has them in at least ``ceil(ceil(need) / g)`` groups whose
    extreme reaches it (pigeonhole), so the plateau screen counts samples only in rows
    with that many such groups."""
    m, w = x.shape
    g, k = CLIP_GROUP, math.ceil(need)
    while g >= 2 and (g >= k or w % g):
        g //= 2
    if g < 2 or m == 0:
        return None
    view = np.ascontiguousarray(x).reshape(m, g, w // g)
    with np.errstate(invalid="ignore"):
        return np.maximum.reduce(view, axis=1), np.minimum.reduce(view, axis=1), g


@functools.lru_cache(maxsize=16)
def _subset(width: int) -> npt.NDArray[np.intp]:
    """Fixed scattered positions for the robust centre and scale (no aliasing with tones)."""
    if width <= ROBUST_SAMPLES:
        idx = np.arange(width)
    else:
        idx = np.sort(np.random.default_rng(width).choice(width, ROBUST_SAMPLES, replace=False))
    idx.setflags(write=False)
    return idx


def _robust(x: npt.NDArray[np.floating[Any]], huge: bool) -> tuple[npt.NDArray[np.float64],
                                                                   npt.NDArray[np.float64]]:
    """Median and MAD-based sd per row, from at most ROBUST_SAMPLES scattered samples (in
    float64 if ``huge`` values could overflow the deviations)."""
    sub = np.take(x, _subset(x.shape[1]), axis=1)
    if huge:
        sub = sub.astype(np.float64)
    half = sub.shape[1] // 2
    med = np.partition(sub, half, axis=1)[:, half]
    sub -= med[:, None]
    np.abs(sub, out=sub)
    mad = np.partition(sub, half, axis=1)[:, half]
    return med.astype(np.float64), MAD_TO_SD * mad.astype(np.float64)


def _finite_issues(x: npt.NDArray[np.floating[Any]], top_in: npt.NDArray[Any],
                   bottom_in: npt.NDArray[Any], full: npt.NDArray[np.float64],
                   cfg: QualityConfig, groups: Groups | None = None) -> list[list[Issue]]:
    """Flatline, clipping and spike checks on finite rows, vectorised over rows.

    Whole-batch passes (max/min, the robust subset, one comparison of neighbours)
    find the rows that may have an issue; Python per row runs only for those.
    """
    m = x.shape[0]
    out: list[list[Issue]] = [[] for _ in range(m)]
    top, bottom = top_in.astype(np.float64), bottom_in.astype(np.float64)
    huge = bool(m) and max(top.max(), -bottom.min()) > HUGE
    med, scale = _robust(x, huge)
    flat = _flatline(x, top, bottom, cfg)
    for i, only in flat.items():
        out[i] = [only]
    clip = _clip_screen(x, top, bottom, full, cfg, groups)
    spikes = _spike_counts(x, med, scale, (top, bottom), cfg, huge)
    for i in sorted(set(map(int, np.flatnonzero(clip))) | set(spikes)):
        if i in flat:
            continue
        clipped = _clipping(x[i].astype(np.float64), float(full[i]), cfg) if clip[i] else None
        if clipped is not None:
            out[i].append(clipped)
        if spikes.get(i):
            out[i].append(Issue("spikes", spikes[i], cfg.spike_sigma, "isolated samples"))
    return out


def _flatline(x: npt.NDArray[np.floating[Any]], top: npt.NDArray[np.float64],
              bottom: npt.NDArray[np.float64], cfg: QualityConfig) -> dict[int, Issue]:
    """Rows with a standard deviation below ``flat_std_g`` or mostly repeated samples.

    The sd of w samples spanning a range r is at least r / sqrt(2 w), so only rows with a
    small range need the exact sd. Repeats are counted per row only if the whole batch has
    enough of them for one row to reach ``repeat_fraction``.
    """
    m, w = x.shape
    found: dict[int, Issue] = {}
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = ~(top - bottom > 1.01 * cfg.flat_std_g * np.sqrt(2.0 * w))
    for i in np.flatnonzero(narrow):
        row = x[i].astype(np.float64)
        sd = float(np.std(row - np.median(row)))
        if not sd >= cfg.flat_std_g:
            found[int(i)] = Issue("flatline", sd, cfg.flat_std_g, "g sd")
    if w == 1:
        repeats = np.ones(m)
    else:
        equal = x[:, 1:] == x[:, :-1]
        if np.count_nonzero(equal) < cfg.repeat_fraction * (w - 1):
            return found
        repeats = np.count_nonzero(equal, axis=1) / (w - 1)
    for i in np.flatnonzero(repeats >= cfg.repeat_fraction):
        found.setdefault(int(i), Issue("flatline", float(repeats[i]), cfg.repeat_fraction,
                                       "fraction repeated"))
    return found


def _clip_screen(x: npt.NDArray[np.floating[Any]], top: npt.NDArray[np.float64],
                 bottom: npt.NDArray[np.float64], full: npt.NDArray[np.float64],
                 cfg: QualityConfig, groups: Groups | None = None) -> npt.NDArray[np.bool_]:
    """Rows that may clip: a sample near full scale, or enough samples near an extreme.

    The plateau screen is looser than :func:`_clipping` (twice its tolerance), so every
    row that function would flag is in it. Samples are counted only in the rows that can
    reach the limit: with ``groups`` (:func:`_extreme_groups` of ``x``), rows with enough
    groups at the extreme; without, when the whole batch holds enough samples there.
    """
    m, w = x.shape
    need = _clip_need(w, cfg)
    heavy = (full > 0) & (np.maximum(np.abs(top), np.abs(bottom))
                          >= cfg.full_scale_fraction * full)
    per_row = math.ceil(math.ceil(need) / groups[2]) if groups is not None else 0
    for side, extreme in enumerate((top, bottom)):
        upper = side == 0
        tol = 2e-6 * np.maximum(np.abs(extreme), 1e-30)
        with np.errstate(over="ignore"):  # beyond float32: +-inf, which is still the bound
            level = (extreme - tol if upper else extreme + tol).astype(x.dtype)[:, None]
        if groups is None:
            at = x >= level if upper else x <= level
            if np.count_nonzero(at) >= m - 1 + need:  # each row has at least its extreme
                heavy |= np.count_nonzero(at, axis=1) >= need
            continue
        reach = groups[side] >= level if upper else groups[side] <= level
        if np.count_nonzero(reach) < m - 1 + per_row:  # each row has its extreme's group
            continue
        rows = np.flatnonzero(np.count_nonzero(reach, axis=1) >= per_row)
        if rows.size:
            sub, lv = x[rows], level[rows]
            heavy[rows] |= np.count_nonzero(sub >= lv if upper else sub <= lv, axis=1) >= need
    return heavy


def _spike_counts(x: npt.NDArray[np.floating[Any]], med: npt.NDArray[np.float64],
                  scale: npt.NDArray[np.float64], extremes: tuple[npt.NDArray[np.float64], ...],
                  cfg: QualityConfig, huge: bool) -> dict[int, int]:
    """Per row: samples beyond ``spike_sigma`` robust sd whose neighbours stay below
    ``spike_isolation`` of them. Only the side (above or below the median) of the rows
    whose extreme reaches that far is scanned, with one mask per side over those rows;
    candidates are then checked together (in float64 if ``huge`` values could overflow)."""
    m, w = x.shape
    reach = cfg.spike_sigma * scale
    r_parts, c_parts = [], []
    for sign, extreme in zip((1.0, -1.0), extremes, strict=True):
        with np.errstate(invalid="ignore", over="ignore"):
            rows = np.flatnonzero((scale > 0) & (sign * (extreme - med) > reach))
        if rows.size == 0:
            continue
        sub = x[rows].astype(np.float64) if huge else x[rows]
        edge = (med[rows] + sign * reach[rows]).astype(sub.dtype)[:, None]
        r, c = np.divmod(np.flatnonzero(sub > edge if sign > 0 else sub < edge), w)
        r_parts.append(rows[r])  # 2-D np.nonzero is many times slower than this
        c_parts.append(c)
    if not r_parts:
        return {}
    r, c = np.concatenate(r_parts), np.concatenate(c_parts)
    keep = np.bincount(r, minlength=m)[r] <= w // 4  # else a broad excursion
    r, c = r[keep], c[keep]
    k = cfg.spike_neighbours
    pos = c[:, None] + np.r_[-k:0, 1:k + 1][None, :]
    near = np.abs(x[r[:, None], np.clip(pos, 0, w - 1)] - med[r, None])
    near[(pos < 0) | (pos >= w)] = 0.0  # outside the window: no neighbour
    isolated = near.max(axis=1) < cfg.spike_isolation * np.abs(x[r, c] - med[r])
    counts = np.bincount(r[isolated], minlength=m)
    return {int(j): int(counts[j]) for j in np.flatnonzero(counts)}


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


def json_number(value: float) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    v = float(value)
    return v if np.isfinite(v) else None
