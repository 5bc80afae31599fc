"""extract(): the feature vector of a batch of windows, vectorised over windows.

Hot path per batch: one ``rfft`` of all windows; a float32 power spectrum (``abs`` then
square); six matrix-vector products in one stacked call (spectral moments, velocity) and one
``add.reduceat`` each for log and order bands; the envelope (:mod:`agent.features.envelope`)
adds one batched ``ifft`` over narrow candidate bands, one ``ifft`` of the chosen band and
one small ``rfft`` of the squared envelope. The power spectrum also gives, by Parseval, the
time-domain mean square and the kurtogram candidates' energies. No per-window Python loop;
each stage writes its columns straight into the output matrix. Large temporaries live in
per-thread scratch arrays (:mod:`agent.features.scratch`: no page faults per call), and no
step hands a large matrix product to multithreaded BLAS (its threads stall for a scheduler
tick whenever another process holds a core). docs/features.md ("Cost") says where the time
goes.

Energies (band RMS, velocity, centroid, spectral kurtosis) use the Parseval-exact
periodogram of the zero-mean window (rectangular window: band energies add up to the
variance). Peak amplitudes (1x/2x/3x) use the Hann-windowed spectrum, evaluated only at the
searched bins.

Unknown speed (``rpm`` 0, negative or non-finite, and no ``spec.nominal_rpm``): order band
energies and 1x/2x/3x amplitudes are 0.0, envelope SNRs are 1.0 (neutral: "no peak above the
floor"). The output has no NaN for finite input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft as sfft

from agent.features import envelope, spectra
from agent.features.scratch import scratch
from agent.features.spec import ORDER_FEATURES, TIME_FEATURES, FeatureSpec
from foreshock.errors import DataError

STANDARD_GRAVITY = 9.80665


@dataclass(frozen=True)
class _Plan:
    """Per-spec constants, computed once per spec."""

    n_bins: int
    n_features: int
    mean: np.ndarray         # (window_samples,) float32 1/n: row means as a matrix-vector product
    weights: np.ndarray   # (6, n_bins, 1) float32, scaled |X|^2 -> g^2: 1, u, u^2, u^3,
                          # u^4 (u = f / Nyquist) and the velocity weight, one column each
    band_starts: np.ndarray  # (bands,) first bin of each log band (the last ends at Nyquist)
    band_empty: np.ndarray   # (bands,) bool: a band narrower than one bin
    any_band_empty: bool
    order_edges: np.ndarray  # (2 x order bands,) low, high edge of each order band (orders)
    harmonics: np.ndarray    # 1, 2, 3: the shaft harmonics of the order amplitudes
    env: envelope.EnvelopePlan


@lru_cache(maxsize=16)
def _plan(spec: FeatureSpec) -> _Plan:
    n = spec.window_samples
    n_bins = n // 2 + 1
    freqs = np.arange(n_bins) * spec.bin_hz
    scale = np.full(n_bins, 2.0 / (n * n))          # one-sided periodogram in g^2 per bin
    scale[0] /= 2.0
    scale[-1] /= 2.0
    u = freqs / freqs[-1]
    lo, hi = spec.velocity_band_hz
    in_band = (freqs >= lo) & (freqs <= hi)
    vel = np.zeros(n_bins)
    vel[in_band] = (STANDARD_GRAVITY * 1000.0 / (2 * np.pi * freqs[in_band])) ** 2
    edges = np.ceil(spec.log_band_edges_hz() / spec.bin_hz).astype(np.int64)
    edges[-1] = n_bins
    weights = (np.stack([np.ones(n_bins), u, u**2, u**3, u**4, vel]) * scale)[:, :, None]
    return _Plan(n_bins, len(spec.feature_names), _constant(np.full(n, 1.0 / n, np.float32)),
                 _constant(np.ascontiguousarray(weights, np.float32)), _constant(edges[:-1]),
                 _constant(edges[1:] <= edges[:-1]), bool((edges[1:] <= edges[:-1]).any()),
                 _constant(np.asarray(spec.order_bands, dtype=np.float64).reshape(-1)),
                 _constant(np.arange(1, len(ORDER_FEATURES) + 1)), envelope.plan(spec))


def _constant(a: np.ndarray) -> np.ndarray:
    """``a`` made read-only: plans are shared by every call and thread."""
    a.flags.writeable = False
    return a


def shaft_hz(spec: FeatureSpec, rpm: float | np.ndarray, n: int) -> np.ndarray:
    """Shaft speed in Hz per window; 0.0 where unknown (after the nominal_rpm fallback)."""
    if isinstance(rpm, (int, float)):                  # one speed for all: no array passes
        known = math.isfinite(rpm) and rpm > 0
        return np.full(n, (rpm if known else spec.nominal_rpm) / 60.0)
    try:
        values = np.array(rpm, dtype=np.float64)           # a copy: filled in below
        if values.ndim == 0:
            values = np.full(n, values)
        elif values.shape != (n,):
            values = np.broadcast_to(values, (n,)).copy()
    except (TypeError, ValueError):
        raise DataError(f"rpm must be a number or one number per window ({n}); "
                        f"got shape {np.shape(rpm)}") from None
    unknown = ~np.isfinite(values) | (values <= 0)
    values[unknown] = spec.nominal_rpm
    return values / 60.0


def _as_windows(spec: FeatureSpec, windows: np.ndarray) -> np.ndarray:
    x = np.asarray(windows, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != spec.window_samples:
        raise DataError(f"windows have shape {np.shape(windows)}; feature spec {spec.hash} "
                        f"needs (n, {spec.window_samples}) at {spec.sample_rate_hz:g} Hz")
    return x


def extract(spec: FeatureSpec, windows: np.ndarray, rpm: float | np.ndarray = 0.0
            ) -> np.ndarray:
    """Feature matrix float32[n, len(spec.feature_names)] of windows float32[n, window_samples].

    ``windows`` are acceleration in g at ``spec.sample_rate_hz`` (use :func:`resample`).
    ``rpm`` is one speed for all windows or one per window; 0 means unknown. The window mean
    (sensor offset, gravity) is removed first: no feature sees DC.
    """
    x = _as_windows(spec, windows)
    plan = _plan(spec)
    shaft = shaft_hz(spec, rpm, x.shape[0])
    if x.shape[0] == 0:
        return np.zeros((0, plan.n_features), np.float32)
    x = np.subtract(x, (x @ plan.mean)[:, None], out=scratch("centred", x.shape, np.float32))
    spectrum = sfft.rfft(x, axis=1)
    out = np.empty((x.shape[0], plan.n_features))     # float64, each stage fills its columns
    env_first = plan.n_features - envelope.n_features()
    variance, power = _spectrum_features(spec, plan, spectrum, shaft,
                                         out[:, len(TIME_FEATURES):env_first])
    envelope.features(spec, plan.env, spectrum, shaft, out[:, env_first:], power)
    _time_features(plan, x, variance, out[:, :len(TIME_FEATURES)])   # last: overwrites x
    return out.astype(np.float32)


def _time_features(plan: _Plan, x: np.ndarray, m2: np.ndarray, out: np.ndarray) -> None:
    """RMS, peak, peak-to-peak, crest, kurtosis (3 for Gaussian), skewness, shape, impulse,
    clearance of zero-mean windows into ``out`` (n, 9). Ratios are 0.0 for an all-constant
    window. ``m2`` (n,) float64 is the windows' mean square, the total of their one-sided
    periodogram (Parseval: no pass over x^2 for it).

    Overwrites ``x`` (the caller's scratch) with sqrt|x|. One scratch temporary, x^2; the
    third and fourth moments are dot products of rows (no product array)."""
    x2 = np.multiply(x, x, out=scratch("work", x.shape, np.float32))
    m3 = _row_dots(x2, x) / x.shape[1]
    m4 = _row_dots(x2, x2) / x.shape[1]
    top = x.max(axis=1).astype(np.float64)
    bottom = x.min(axis=1).astype(np.float64)
    ax = np.abs(x, out=x)
    mabs = (ax @ plan.mean).astype(np.float64)
    msqrt = (np.sqrt(ax, out=ax) @ plan.mean).astype(np.float64)
    peak = np.maximum(top, -bottom)
    rms = np.sqrt(m2)
    res = np.zeros((len(TIME_FEATURES), x.shape[0]))
    res[0] = rms
    res[1] = peak
    np.subtract(top, bottom, out=res[2])
    num = np.array([peak, m4, m3, rms, peak, peak])
    den = np.array([rms, m2 * m2, m2 * rms, mabs, mabs, msqrt * msqrt])
    np.divide(num, den, out=res[3:], where=den > 0)
    out[:] = res.T


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product of each row of ``a`` with the same row of ``b`` (n, K) as float64: a
    stacked matrix product of (1, K) by (K, 1), twice as fast as ``einsum`` here."""
    out: np.ndarray = np.matmul(a[:, None, :], b[:, :, None])[:, 0, 0]
    return out.astype(np.float64)


def _spectrum_features(spec: FeatureSpec, plan: _Plan, spectrum: np.ndarray,
                       shaft: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Velocity RMS, spectral centroid and kurtosis, log and order band RMS, 1x/2x/3x into
    ``out`` (n, 3 + log bands + order bands + 3). Returns the total power (n,) float64 (the
    windows' variance) and the power spectrum |spectrum|^2 (float32, this thread's scratch:
    valid until the next call)."""
    pw = spectra.power32(spectrum)
    # one matrix-vector product per weight, as one stacked call: a (windows x bins x 6)
    # matrix product would go to multithreaded BLAS, which stalls for a scheduler tick
    # whenever a core is busy, and a single-threaded one is slower than six products
    mom = np.matmul(pw, plan.weights)[:, :, 0].astype(np.float64)
    total = mom[0]
    # raw moments E[u^k], k = 1..4 (0.0 for an all-constant window), then the central ones
    mean, e2, e3, e4 = np.divide(mom[1:5], total, out=np.zeros((4, len(total))),
                                 where=total > 0)
    mean2 = mean * mean
    var = e2 - mean2
    m4 = e4 - mean * (4.0 * e3 - mean * (6.0 * e2 - 3.0 * mean2))
    np.sqrt(mom[5], out=out[:, 0])
    np.multiply(mean, spec.sample_rate_hz / 2.0, out=out[:, 1])
    var2 = var * var
    out[:, 2] = 0.0
    np.divide(m4, var2, out=out[:, 2], where=var2 > 0)
    n_log, n_orders = len(plan.band_starts), len(plan.order_edges) // 2
    _log_bands(spec, plan, pw, out[:, 3:3 + n_log])
    _order_bands(spec, plan, pw, shaft, out[:, 3 + n_log:3 + n_log + n_orders])
    centres = shaft[:, None] * plan.harmonics / spec.bin_hz
    peak, valid = spectra.peak_power(spectrum, centres, spec.order_search_tol)
    out[:, 3 + n_log + n_orders:] = np.where(valid, 4.0 * np.sqrt(peak) / spec.window_samples,
                                             0.0)   # g peak
    return total, pw


def _log_bands(spec: FeatureSpec, plan: _Plan, pw: np.ndarray, out: np.ndarray) -> None:
    """RMS in g of each log band into ``out``; one ``add.reduceat`` (the Nyquist bin counts
    half)."""
    sums = np.add.reduceat(pw, plan.band_starts, axis=1).astype(np.float64)
    sums[:, -1] -= 0.5 * pw[:, -1]
    sums *= 2.0 / spec.window_samples**2
    if plan.any_band_empty:
        sums[:, plan.band_empty] = 0.0
    np.sqrt(sums, out=out)                  # sums of powers >= 0


def _order_bands(spec: FeatureSpec, plan: _Plan, pw: np.ndarray, shaft: np.ndarray,
                 out: np.ndarray) -> None:
    """RMS in g of each order band (Nyquist bin excluded) into ``out``; one
    ``add.reduceat`` over a copy of the bins up to the highest band edge."""
    n_win, n_bins = pw.shape
    edge_bins = np.ceil(shaft[:, None] * plan.order_edges / spec.bin_hz).astype(np.int64)
    edge_bins = np.minimum(np.maximum(edge_bins, 1), n_bins - 1)
    cols = int(edge_bins.max()) + 1
    head = scratch("order_bins", (n_win, cols), np.float32)
    head[:] = pw[:, :cols]
    edge_bins += np.arange(0, n_win * cols, cols)[:, None]
    sums = np.add.reduceat(head.reshape(-1), edge_bins.reshape(-1))[0::2]
    sums = sums.reshape(n_win, -1).astype(np.float64) * (2.0 / spec.window_samples**2)
    empty = edge_bins[:, 1::2] <= edge_bins[:, 0::2]
    np.sqrt(sums, out=out)                  # sums of powers >= 0
    out[empty] = 0.0
