"""Vectorised spectral helpers shared by the extractor: Hann window in the frequency domain,
peak search around target frequencies, and the local noise floor."""

from __future__ import annotations

import numpy as np


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


def power(spec: np.ndarray) -> np.ndarray:
    """|spec|^2 without the square root, same real dtype."""
    out: np.ndarray = spec.real * spec.real + spec.imag * spec.imag
    return out


def peak_power(pw: np.ndarray, centre_bin: np.ndarray, tol: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``pw`` bin within ``max(1, ceil(tol * centre))`` bins of each centre.

    ``pw`` is (n, K); ``centre_bin`` (n, T) float (NaN or <= 0 = unknown). Returns the peak
    (n, T) and a validity mask (centre known and the search range inside 1..K-1).
    """
    n_win, n_bins = pw.shape
    known = np.isfinite(centre_bin) & (centre_bin > 0)
    centre = np.where(known, centre_bin, 0.0)
    half = np.maximum(1, np.ceil(tol * centre)).astype(np.int64)
    centre_i = np.rint(centre).astype(np.int64)
    valid = known & (centre_i - half >= 1) & (centre_i + half <= n_bins - 1)
    reach = int(half.max()) if half.size else 1
    offsets = np.arange(-reach, reach + 1)
    idx = np.clip(centre_i[..., None] + offsets, 0, n_bins - 1)
    rows = np.arange(n_win)[:, None, None]
    vals = pw[rows, idx]
    vals = np.where(np.abs(offsets) <= half[..., None], vals, -np.inf)
    return vals.max(axis=-1), valid


def noise_floor(pw: np.ndarray, centre_bin: np.ndarray, floor_bins: int) -> np.ndarray:
    """Median of ``pw`` over ``2 * floor_bins + 1`` bins around each centre.

    The span is shifted, not clipped, where it would leave 1..K-1, so every floor is a median
    of the same number of distinct bins. The median ignores the few bins of the peak itself.
    """
    n_win, n_bins = pw.shape
    span = min(2 * floor_bins + 1, n_bins - 1)
    centre = np.nan_to_num(centre_bin, nan=0.0, posinf=0.0, neginf=0.0)
    start = np.rint(centre).astype(np.int64) - span // 2
    start = np.clip(start, 1, n_bins - span)
    idx = start[..., None] + np.arange(span)
    rows = np.arange(n_win)[:, None, None]
    floor: np.ndarray = np.median(pw[rows, idx], axis=-1)
    return floor


def snr(pw: np.ndarray, centre_bin: np.ndarray, tol: float, floor_bins: int) -> np.ndarray:
    """Amplitude ratio peak / local noise floor; 1.0 (neutral) where undefined."""
    peak, valid = peak_power(pw, centre_bin, tol)
    floor = noise_floor(pw, centre_bin, floor_bins)
    ok = valid & (floor > 0) & np.isfinite(peak)
    ratio = np.divide(peak, floor, out=np.ones_like(floor), where=ok)
    out: np.ndarray = np.sqrt(np.maximum(ratio, 0.0))
    return out
