"""Vectorised spectral helpers shared by the extractor: Hann window in the frequency domain,
peak search around target frequencies, and the local noise floor."""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from agent.features.scratch import scratch


def hann_spectrum(spec: np.ndarray) -> np.ndarray:
    """Periodic-Hann-windowed spectrum from a rectangular ``rfft`` along the last axis.

    Windowing by Hann is a 3-tap convolution in frequency: ``0.5 X[k] - 0.25 (X[k-1] +
    X[k+1])``, using the conjugate symmetry of a real signal at both ends. This saves a
    second FFT: one ``rfft`` serves both the Parseval-exact and the low-leakage spectrum.
    """
    left = np.concatenate([np.conj(spec[..., 1:2]), spec[..., :-1]], axis=-1)
    right = np.concatenate([spec[..., 1:], np.conj(spec[..., -2:-1])], axis=-1)
    out: np.ndarray = 0.5 * spec - 0.25 * (left + right)
    return out


def hann_power(spec: np.ndarray, bins: int | None = None) -> np.ndarray:
    """``|hann_spectrum(spec)|**2`` of a complex (n, K) ``rfft`` output, of its first
    ``bins`` bins only when given (1..K)."""
    n_bins = spec.shape[-1]
    bins = n_bins if bins is None else min(bins, n_bins)
    if spec.dtype != np.complex64 or spec.ndim != 2:
        return power(hann_spectrum(spec))[..., :bins]
    return _hann_rows(spec, bins)[:, :bins]


def _hann_rows(spec: np.ndarray, bins: int) -> np.ndarray:
    """C-contiguous float32 (n, bins + 1): columns 0..bins-1 are ``|hann_spectrum(spec)|**2``
    of a complex64 (n, K) ``rfft`` output, bins <= K; the last column is scratch.

    Same values as :func:`hann_spectrum` then :func:`power`: the same float32 operations per
    bin, on the interleaved re, im values of a copy of the bins needed (and one neighbour)
    as one flat array, so that every step is a single contiguous pass.
    """
    n_win, n_bins = spec.shape
    if bins < n_bins:
        rows = np.ascontiguousarray(spec[:, :bins + 1])
    else:                                      # X[K] = conj X[K-2]: X[K-2] + X[K] = 2 Re
        rows = np.empty((n_win, n_bins + 1), np.complex64)
        rows[:, :n_bins] = spec
        np.conjugate(spec[:, n_bins - 2], out=rows[:, n_bins])
    flat = rows.view(np.float32).reshape(-1)   # re, im, re, im, ... row after row
    acc = np.empty_like(flat)
    np.add(flat[:-4], flat[4:], out=acc[2:-2])  # X[k-1] + X[k+1] (garbage across rows)
    acc[-2:] = 0.0
    edge = acc.reshape(n_win, -1)
    np.multiply(flat.reshape(n_win, -1)[:, 2], 2.0, out=edge[:, 0])   # X[-1] + X[1] = 2 Re X[1]
    edge[:, 1] = 0.0
    acc *= -0.5
    acc += flat                                # 2 * Hann spectrum, interleaved
    acc *= acc
    out: np.ndarray = acc[0::2] + acc[1::2]
    out *= 0.25
    return out.reshape(n_win, -1)


def power(spec: np.ndarray) -> np.ndarray:
    """|spec|^2 without the square root, same real dtype."""
    out: np.ndarray = spec.real * spec.real + spec.imag * spec.imag
    return out


def power32(spec: np.ndarray, key: str = "power") -> np.ndarray:
    """|spec|^2 of a complex64 array as a C-contiguous float32 array, this thread's scratch
    ``key`` (valid until the next request for it): ``abs`` then square, two contiguous SIMD
    passes (within 2 ulp of re^2 + im^2, which needs a strided pass)."""
    if spec.dtype != np.complex64:
        return power(spec).astype(np.float32)
    out = np.abs(spec, out=scratch(key, spec.shape, np.float32))
    return np.square(out, out=out)


def spans(pw: np.ndarray, width: int) -> np.ndarray:
    """Read-only (n, K - width + 1, width) view of every run of ``width`` bins of each row:
    ``spans(pw, w)[rows, starts]`` copies whole runs instead of gathering bin by bin."""
    base = np.ascontiguousarray(pw)
    step_row, step_bin = base.strides
    view = np.ndarray(shape=(base.shape[0], base.shape[1] - width + 1, width), dtype=base.dtype,
                      buffer=base, strides=(step_row, step_bin, step_bin))
    view.flags.writeable = False
    return view


def peak_power(spec: np.ndarray, centre_bin: np.ndarray, tol: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Largest |Hann spectrum|^2 within ``max(1, ceil(tol * centre))`` bins of each centre.

    ``spec`` is a complex (n, K) rfft; ``centre_bin`` (n, T) float (NaN or <= 0 = unknown).
    Returns the peak (n, T), 0.0 where invalid, and a validity mask (centre known and the
    search range inside 2..K-3). One run of bins per centre (the widest search range and a
    neighbour either side) is copied and Hann-windowed as a whole.
    """
    n_bins = spec.shape[1]
    known = np.isfinite(centre_bin) & (centre_bin > 0)
    centre = np.where(known, centre_bin, 0.0)
    half = np.maximum(1, np.ceil(tol * centre)).astype(np.int64)
    centre_i = np.rint(centre).astype(np.int64)
    valid = known & (centre_i - half >= 2) & (centre_i + half <= n_bins - 3)
    # a valid range has half <= (K - 5) // 2: the cap only bounds the run for invalid ones
    reach = min(int(half.max()), (n_bins - 5) // 2) if half.size else 1
    first = np.minimum(np.maximum(centre_i - reach - 1, 0), n_bins - 2 * reach - 3)
    runs = spans(spec, 2 * reach + 3)[np.arange(spec.shape[0])[:, None], first]
    hann = power(0.5 * runs[..., 1:-1] - 0.25 * (runs[..., :-2] + runs[..., 2:]))
    inside = _near_masks(2 * reach + 1)[np.minimum(centre_i - first - 1, 2 * reach + 1),
                                        np.minimum(half, reach)]
    vals = np.where(inside, hann, 0.0).max(axis=-1)
    return np.where(valid, vals, 0.0), valid


def snr(spec: np.ndarray, centre_bin: np.ndarray, tol: float, floor_bins: int) -> np.ndarray:
    """Amplitude ratio in the Hann power spectrum of a complex (n, K) ``rfft`` output
    ``spec``: the peak within ``max(1, ceil(tol * centre))`` bins of each centre (n, T) over
    the median of ``2 * floor_bins + 1`` bins around it; 1.0 (neutral) where the centre is
    unknown (<= 0, NaN) or the search range leaves 2..K-3.

    The floor span is shifted, not clipped, near the ends of the spectrum, so every floor is
    a median of the same number of distinct bins; the median ignores the few bins of the
    peak itself. The power is computed only up to the highest bin a span reads, and one
    gather of the spans serves both: the search range lies inside the span wherever the
    ratio is defined, so the peak is read from the gathered span, which is then partitioned
    in place for the median.
    """
    n_bins = spec.shape[1]
    span = min(2 * floor_bins + 1, n_bins - 1)
    mid = span // 2
    # unknown (NaN, <= 0) -> 0 and beyond the spectrum -> K: both have no ratio
    centre = np.rint(np.minimum(np.fmax(centre_bin, 0.0), n_bins)).astype(np.intp)
    ranges = _search_ranges(n_bins, tol, span)
    half = ranges.half[centre]
    ok = ranges.valid[centre]
    start = ranges.start[centre]
    pw = _hann_rows(spec, min(n_bins, int(start.max()) + span))
    # (n, T, span) contiguous copy of each floor span
    floor = spans(pw, span)[np.arange(pw.shape[0])[:, None], start]
    # the search range: offsets -reach..reach from the centre, on a leading axis so that
    # the maximum is elementwise over (n, T) slices; offsets beyond a centre's half-width
    # read the centre bin again
    reach = min(int(half.max()), mid)
    pos = np.take(ranges.near[mid - reach:mid + reach + 1], centre, axis=1)
    pos += np.arange(0, floor.size, span).reshape(centre.shape)
    peak = np.take(floor.reshape(-1), pos).max(axis=0)          # (2 reach + 1, n, T) -> max
    # power >= +0.0: its bit patterns as uint32 sort like the values (NaN last, as for
    # floats), and an integer partition is a quarter cheaper (contiguous rows: a fifth)
    floor.view(np.uint32).partition(mid, axis=-1)
    median = floor[..., mid]
    ok &= median > 0
    ratio = np.divide(peak, median, out=np.ones(median.shape), where=ok)
    out: np.ndarray = np.sqrt(ratio)
    return out


class _Ranges(NamedTuple):
    """Per integer centre 0..K of a spectrum of K bins (read-only)."""

    half: np.ndarray      # (K + 1,) search half-width max(1, ceil(tol * centre))
    valid: np.ndarray     # (K + 1,) the ratio is defined: range in 2..K-3, half <= span // 2
    start: np.ndarray     # (K + 1,) first bin of the floor span (shifted inside 1..K-1)
    near: np.ndarray      # (2 (span // 2) + 1, K + 1) position in the floor span of centre
                          # + offset, offsets -span // 2..span // 2; the centre's own
                          # position for offsets beyond its half-width


@lru_cache(maxsize=16)
def _search_ranges(n_bins: int, tol: float, span: int) -> _Ranges:
    centre = np.arange(n_bins + 1)
    mid = span // 2
    half = np.maximum(1, np.ceil(tol * centre)).astype(np.intp)
    valid = (centre - half >= 2) & (centre + half <= n_bins - 3) & (half <= mid)
    start = np.minimum(np.maximum(centre - mid, 1), n_bins - span).astype(np.intp)
    offsets = np.arange(-mid, mid + 1)[:, None]
    near = np.minimum(np.maximum(offsets + (centre - start), 0), span - 1)
    near = np.where(np.abs(offsets) > half, near[mid], near)
    ranges = _Ranges(half, valid, start, near.astype(np.intp))
    for a in ranges:
        a.flags.writeable = False
    return ranges


@lru_cache(maxsize=8)
def _near_masks(span: int) -> np.ndarray:
    """(span + 1, span // 2 + 1, span) bool: ``[d, h, j]`` is ``|j - d| <= h``, the bins of
    a span within ``h`` of a centre ``d`` bins from its start. The last row (d = span, and
    d = -1 through wrap-around) serves centres outside the span, where no ratio is taken."""
    d = np.arange(span + 1)[:, None, None]
    h = np.arange(span // 2 + 1)[None, :, None]
    masks = np.abs(np.arange(span)[None, None, :] - d) <= h
    masks.flags.writeable = False
    return masks
