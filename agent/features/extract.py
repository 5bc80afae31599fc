"""extract(): the feature vector of a batch of windows, vectorised over windows.

Hot path per batch: one ``rfft`` of all windows; the Hann spectrum from it by a 3-tap
convolution; one float64 matrix product for velocity and spectral moments; one cumulative
sum for band energies; for the envelope one batched ``ifft`` over the candidate bands
(spectral-kurtosis choice), one ``ifft`` of the chosen band and one ``rfft`` of the squared
envelope. No per-window Python loop.

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

from agent.features import spectra
from agent.features.geometry import bearing
from agent.features.spec import ENV_FAMILIES, ENV_HARMONICS, FeatureSpec
from foreshock.errors import DataError

STANDARD_GRAVITY = 9.80665
HANN_POWER_GAIN = 0.375   # mean of w^2 for a periodic Hann window
KURTOSIS_ENERGY_FLOOR = 1e-6  # candidate bands below this share of the best band are skipped


@dataclass(frozen=True)
class _Plan:
    """Per-spec constants, computed once per spec."""

    n_bins: int
    power_scale: np.ndarray       # (n_bins,) float32: |Xw|^2 -> g^2 per bin
    moments: np.ndarray           # (n_bins, 6) float64: 1, u, u^2, u^3, u^4, velocity weight
    log_edges: np.ndarray         # (n_log_bands + 1,) bin indices
    env_starts: np.ndarray        # (C,) first bin of each envelope candidate band
    env_bins: int                 # bins per envelope band
    env_mult: np.ndarray          # (T,) envelope targets as multiples of shaft speed


@lru_cache(maxsize=16)
def _plan(spec: FeatureSpec) -> _Plan:
    n = spec.window_samples
    n_bins = n // 2 + 1
    freqs = np.arange(n_bins) * spec.bin_hz
    scale = np.full(n_bins, 2.0 / (n * n * HANN_POWER_GAIN))
    scale[0] /= 2.0
    scale[-1] /= 2.0
    u = freqs / freqs[-1]
    lo, hi = spec.velocity_band_hz
    in_band = (freqs >= lo) & (freqs <= hi)
    vel = np.zeros(n_bins)
    vel[in_band] = (STANDARD_GRAVITY * 1000.0 / (2 * np.pi * freqs[in_band])) ** 2
    moments = np.stack([np.ones(n_bins), u, u**2, u**3, u**4, vel], axis=1)
    log_edges = np.ceil(spec.log_band_edges_hz() / spec.bin_hz).astype(np.int64)
    log_edges[-1] = n_bins
    starts, width = _envelope_bands(spec)
    return _Plan(n_bins, scale.astype(np.float32), moments, log_edges, starts, width,
                 _envelope_multiples(spec))


def _envelope_bands(spec: FeatureSpec) -> tuple[np.ndarray, int]:
    """Candidate envelope bands: first bins and the common width in bins."""
    if spec.envelope_band_hz is not None:
        lo = math.ceil(spec.envelope_band_hz[0] / spec.bin_hz)
        hi = math.floor(spec.envelope_band_hz[1] / spec.bin_hz)
        return np.array([max(lo, 1)], dtype=np.int64), hi - max(lo, 1)
    width = max(8, round(spec.envelope_bandwidth_hz / spec.bin_hz))
    first = max(1, math.ceil(spec.envelope_min_hz / spec.bin_hz))
    last = spec.window_samples // 2 - width
    return np.arange(first, last + 1, max(1, width // 2), dtype=np.int64), width


def _envelope_multiples(spec: FeatureSpec) -> np.ndarray:
    orders = bearing(spec.bearing).orders()
    base = {"bpfo": orders["bpfo"], "bpfi": orders["bpfi"], "2bsf": 2.0 * orders["bsf"],
            "ftf": orders["ftf"]}
    mult = [base[fam] * h for fam in ENV_FAMILIES for h in range(1, ENV_HARMONICS + 1)]
    mult += [orders["bpfi"] - 1.0, orders["bpfi"] + 1.0]
    return np.array(mult)


def shaft_hz(spec: FeatureSpec, rpm: float | np.ndarray, n: int) -> np.ndarray:
    """Shaft speed in Hz per window; 0.0 where unknown (after the nominal_rpm fallback)."""
    values = np.broadcast_to(np.asarray(rpm, dtype=np.float64), (n,)).copy()
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
    ``rpm`` is one speed for all windows or one per window; 0 means unknown.
    """
    x = _as_windows(spec, windows)
    plan = _plan(spec)
    shaft = shaft_hz(spec, rpm, x.shape[0])
    x = x - x.mean(axis=1, keepdims=True)
    spectrum = sfft.rfft(x, axis=1)
    pw = spectra.power(spectra.hann_spectrum(spectrum))
    parts = [_time_features(x), *_spectrum_features(spec, plan, pw, shaft),
             _envelope_features(spec, plan, spectrum, shaft)]
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _time_features(x: np.ndarray) -> np.ndarray:
    """RMS, peak, peak-to-peak, crest, kurtosis (3 for Gaussian), skewness, shape, impulse,
    clearance. Ratios are 0.0 for an all-constant window."""
    x2 = x * x
    m2 = x2.mean(axis=1, dtype=np.float64)
    m3 = (x2 * x).mean(axis=1, dtype=np.float64)
    m4 = (x2 * x2).mean(axis=1, dtype=np.float64)
    ax = np.abs(x)
    mabs = ax.mean(axis=1, dtype=np.float64)
    msqrt = np.sqrt(ax).mean(axis=1, dtype=np.float64)
    peak = ax.max(axis=1).astype(np.float64)
    p2p = (x.max(axis=1) - x.min(axis=1)).astype(np.float64)
    rms = np.sqrt(m2)
    cols = [rms, peak, p2p, _ratio(peak, rms), _ratio(m4, m2 * m2), _ratio(m3, m2 * rms),
            _ratio(rms, mabs), _ratio(peak, mabs), _ratio(peak, msqrt * msqrt)]
    return np.stack(cols, axis=1)


def _spectrum_features(spec: FeatureSpec, plan: _Plan, pw: np.ndarray, shaft: np.ndarray
                       ) -> list[np.ndarray]:
    """Velocity RMS, spectral centroid and kurtosis, log and order band RMS, 1x/2x/3x."""
    power_g2 = (pw * plan.power_scale).astype(np.float64)
    mom = power_g2 @ plan.moments
    total = mom[:, 0]
    mean = _ratio(mom[:, 1], total)
    var = _ratio(mom[:, 2], total) - mean**2
    m4 = _ratio(mom[:, 4] - 4 * mean * mom[:, 3] + 6 * mean**2 * mom[:, 2], total) - 3 * mean**4
    shape = np.stack([np.sqrt(mom[:, 5]), mean * spec.sample_rate_hz / 2.0,
                      _ratio(m4, var * var)], axis=1)
    cum = np.zeros((pw.shape[0], plan.n_bins + 1))
    np.cumsum(power_g2, axis=1, out=cum[:, 1:])
    log_bands = cum[:, plan.log_edges[1:]] - cum[:, plan.log_edges[:-1]]
    order_edges = np.asarray(spec.order_bands).reshape(-1)
    edge_bins = np.ceil(shaft[:, None] * order_edges / spec.bin_hz).astype(np.int64)
    edge_bins = np.clip(edge_bins, 1, plan.n_bins)
    at = np.take_along_axis(cum, edge_bins, axis=1)
    order_bands = at[:, 1::2] - at[:, 0::2]
    centres = shaft[:, None] * np.arange(1, 4) / spec.bin_hz
    peak, valid = spectra.peak_power(pw, centres, spec.order_search_tol)
    amp = np.where(valid, np.sqrt(np.maximum(peak, 0.0)) * 4.0 / spec.window_samples, 0.0)
    return [shape, np.sqrt(np.maximum(log_bands, 0.0)),
            np.sqrt(np.maximum(order_bands, 0.0)), amp]


def _choose_band(plan: _Plan, spectrum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per window, the candidate band whose complex envelope has the largest kurtosis."""
    n_win = spectrum.shape[0]
    if plan.env_starts.size == 1:
        return np.full(n_win, plan.env_starts[0]), np.zeros(n_win)
    idx = plan.env_starts[:, None] + np.arange(plan.env_bins)
    band = sfft.ifft(spectrum[:, idx], axis=-1)
    energy = spectra.power(band)
    m1 = energy.mean(axis=-1, dtype=np.float64)
    m2 = (energy * energy).mean(axis=-1, dtype=np.float64)
    kurt = _ratio(m2, m1 * m1) - 2.0
    strong = m1 > KURTOSIS_ENERGY_FLOOR * m1.max(axis=1, keepdims=True)
    choice = np.argmax(np.where(strong, kurt, -np.inf), axis=1)
    return plan.env_starts[choice], kurt[np.arange(n_win), choice]


def _envelope_features(spec: FeatureSpec, plan: _Plan, spectrum: np.ndarray,
                       shaft: np.ndarray) -> np.ndarray:
    """Envelope band centre and kurtosis, defect-family SNRs and BPFI sidebands."""
    n_win, width = spectrum.shape[0], plan.env_bins
    start, _ = _choose_band(plan, spectrum)
    rows = np.arange(n_win)[:, None]
    band = spectrum[rows, start[:, None] + np.arange(width)]
    env = spectra.power(sfft.ifft(band, n=2 * width, axis=1))   # squared envelope
    m1 = env.mean(axis=1, keepdims=True, dtype=np.float64)
    m2 = (env * env).mean(axis=1, dtype=np.float64)
    kurt = _ratio(m2, m1[:, 0] ** 2) - 2.0
    env_pw = spectra.power(spectra.hann_spectrum(sfft.rfft(env - m1.astype(np.float32),
                                                           axis=1)))
    centres = np.where(shaft[:, None] > 0, shaft[:, None] * plan.env_mult / spec.bin_hz, 0.0)
    ratio = spectra.snr(env_pw, centres, spec.envelope_search_tol, spec.envelope_floor_bins)
    cols = [(start + width / 2.0) * spec.bin_hz, kurt]
    for i in range(len(ENV_FAMILIES)):
        harm = ratio[:, i * ENV_HARMONICS:(i + 1) * ENV_HARMONICS]
        cols += [harm[:, h] for h in range(ENV_HARMONICS)] + [harm.mean(axis=1)]
    cols.append(ratio[:, -2:].mean(axis=1))
    return np.stack(cols, axis=1)
