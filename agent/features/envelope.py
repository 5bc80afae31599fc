"""Envelope (demodulation) analysis, vectorised over windows.

1. Band choice. ``spec.envelope_band_hz`` fixes the band. Otherwise (default) the band from
   ``envelope_min_hz`` to Nyquist is cut into candidate bands of half the envelope bandwidth;
   each candidate's complex envelope (an ``ifft`` of its bins, critically sampled) gives a
   spectral kurtosis ``E|z|^4 / (E|z|^2)^2 - 2`` (0 for Gaussian noise, large for repetitive
   impacts); the candidate with the largest kurtosis wins (a one-level fast kurtogram).
   When no candidate's kurtosis reaches ``8 / sqrt(candidate bins)`` (about three standard
   deviations of the estimate for Gaussian noise: nothing impulsive stands out, as for a
   fast impact train whose rings overlap) the candidate with the most energy wins instead,
   since impacts excite the structural resonance.
   Candidates with under 1e-6 of the strongest candidate's energy (empty after resampling)
   never win. The envelope band is ``envelope_bandwidth_hz`` wide, centred on the winner.
2. Squared envelope: ``|ifft(band bins, zero-padded to 2 x width)|^2`` - an analytic
   band-pass signal shifted to baseband, at a rate of twice the bandwidth, so the envelope
   spectrum reaches ``envelope_bandwidth_hz`` with the window's own resolution.
3. Envelope spectrum: ``rfft`` of the zero-mean squared envelope, Hann-windowed.
4. For each target (BPFO, BPFI, 2 x BSF, FTF and harmonics 2, 3; BPFI +/- 1x): the Hann peak
   within ``envelope_search_tol`` (at least 1 bin) over the median of the
   ``2 * envelope_floor_bins + 1`` bins around it, as an amplitude ratio (SNR). 1.0 when the
   speed is unknown or the target is beyond the envelope spectrum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import scipy.fft as sfft

from agent.features import spectra
from agent.features.scratch import scratch
from agent.features.spec import ENV_FAMILIES, ENV_HARMONICS, FeatureSpec

KURTOSIS_ENERGY_FLOOR = 1e-6
SK_SIGNIFICANCE = 8.0   # a candidate's kurtosis counts above 8 / sqrt(bins) (~3 sd of noise)


@dataclass(frozen=True)
class EnvelopePlan:
    cand_starts: np.ndarray   # (C,) first bin of each candidate band (C = 0: fixed band)
    cand_bins: int            # bins per candidate band
    band_bins: int            # bins of the envelope band
    lowest: int               # allowed first bin of the envelope band ...
    highest: int              # ... and last allowed first bin
    multiples: np.ndarray     # (T,) targets as multiples of shaft speed
    target_bins: np.ndarray   # (T,) the same in envelope-spectrum bins per Hz of shaft speed
    mean: np.ndarray          # (2 x band_bins,) float32 1/(2 x band_bins): envelope means
    band_firsts: np.ndarray   # (C,) first bin of the envelope band when candidate c wins
    cand_ones: np.ndarray     # (cand_bins,) float32 ones: candidate sums as matrix products


def plan(spec: FeatureSpec) -> EnvelopePlan:
    n_bins = spec.window_samples // 2 + 1
    mult = _multiples(spec)
    if spec.envelope_band_hz is not None:
        lo = max(1, math.ceil(spec.envelope_band_hz[0] / spec.bin_hz))
        hi = min(n_bins - 1, math.floor(spec.envelope_band_hz[1] / spec.bin_hz))
        return EnvelopePlan(np.zeros(0, np.int64), 0, hi - lo, lo, lo, mult, mult / spec.bin_hz,
                            _mean_weights(2 * (hi - lo)), np.zeros(0, np.int64),
                            np.ones(0, np.float32))
    width = max(8, round(spec.envelope_bandwidth_hz / spec.bin_hz))
    cand = max(4, width // 2)
    first = max(1, math.ceil(spec.envelope_min_hz / spec.bin_hz))
    starts = np.arange(first, n_bins - cand, cand, dtype=np.int64)
    highest = n_bins - 1 - width
    # the band is centred on the winning candidate, kept inside lowest..highest
    firsts = np.minimum(np.maximum(starts + (cand // 2 - width // 2), first), highest)
    return EnvelopePlan(starts, cand, width, first, highest, mult, mult / spec.bin_hz,
                        _mean_weights(2 * width), firsts, np.ones(cand, np.float32))


def _mean_weights(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n, np.float32)


def _multiples(spec: FeatureSpec) -> np.ndarray:
    orders = spec.orders()
    base = {"bpfo": orders["bpfo"], "bpfi": orders["bpfi"], "2bsf": 2.0 * orders["bsf"],
            "ftf": orders["ftf"]}
    mult = [base[fam] * h for fam in ENV_FAMILIES for h in range(1, ENV_HARMONICS + 1)]
    mult += [orders["bpfi"] - 1.0, orders["bpfi"] + 1.0]
    return np.array(mult)


def choose_band(eplan: EnvelopePlan, spectrum: np.ndarray, power: np.ndarray | None = None
                ) -> np.ndarray:
    """First bin of the envelope band per window (see module doc, step 1). ``power`` is
    ``|spectrum|^2`` (float32) when the caller has it."""
    n_win = spectrum.shape[0]
    if eplan.cand_starts.size == 0:
        return np.full(n_win, eplan.lowest, np.int64)
    first, count, cb = int(eplan.cand_starts[0]), eplan.cand_starts.size, eplan.cand_bins
    tiles = spectrum[:, first:first + count * cb].reshape(n_win, count, cb)   # a view
    bands = sfft.ifft(tiles, axis=-1)                   # a fresh array, ours to overwrite
    # sum |z|^2 = sum |X|^2 / cb (Parseval) from the power spectrum, and sum |z|^4 =
    # sum |z^2|^2 as dot products of the interleaved re, im rows with themselves: no
    # deinterleaved |z|^2 array (a strided pass costing a third of the ifft)
    if power is None:
        m1 = _row_norms(bands).reshape(n_win, -1)
    else:
        m1 = power[:, first:first + count * cb].reshape(n_win, count, cb) @ eplan.cand_ones
        m1 = m1.astype(np.float64) / cb
    m2 = _row_norms(np.square(bands, out=bands)).reshape(n_win, -1)
    strong = m1 > KURTOSIS_ENERGY_FLOOR * m1.max(axis=1, keepdims=True)   # so m1 > 0
    # kurtosis + 2 (the offset changes no comparison below)
    kurt = np.divide(m2 * cb, m1 * m1, out=np.full(m1.shape, -np.inf), where=strong)
    impulsive = kurt.max(axis=1) >= 2.0 + SK_SIGNIFICANCE / math.sqrt(cb)
    choice = np.where(impulsive, np.argmax(kurt, axis=1), np.argmax(m1, axis=1))
    return eplan.band_firsts[choice]


def _row_norms(z: np.ndarray) -> np.ndarray:
    """Sum of |z|^2 over the last axis of a C-contiguous complex array, as float64."""
    flat = z.view(z.real.dtype).reshape(-1, 2 * z.shape[-1])
    out: np.ndarray = np.matmul(flat[:, None, :], flat[:, :, None])[:, 0, 0]
    return out.astype(np.float64)


def _spread() -> np.ndarray:
    """(targets, n_features - 2) float64: SNRs per target -> per family its harmonics and
    their mean, then the mean of the two BPFI sidebands, as one matrix product."""
    n_fam, n_harm = len(ENV_FAMILIES), ENV_HARMONICS
    m = np.zeros((n_fam * n_harm + 2, n_fam * (n_harm + 1) + 1))
    for f in range(n_fam):
        for h in range(n_harm):
            m[f * n_harm + h, f * (n_harm + 1) + h] = 1.0
            m[f * n_harm + h, f * (n_harm + 1) + n_harm] = 1.0 / n_harm
    m[-2:, -1] = 0.5
    m.flags.writeable = False
    return m


_SPREAD: Final = _spread()


def n_features() -> int:
    """Columns of :func:`features`: band centre, band kurtosis, per family its harmonics and
    their mean, and the BPFI sidebands."""
    return 3 + len(ENV_FAMILIES) * (ENV_HARMONICS + 1)


def features(spec: FeatureSpec, eplan: EnvelopePlan, spectrum: np.ndarray, shaft: np.ndarray,
             out: np.ndarray | None = None, power: np.ndarray | None = None) -> np.ndarray:
    """Envelope band centre and kurtosis, defect-family SNRs and BPFI sidebands (n,
    :func:`n_features`), written into ``out`` when given. ``power`` is ``|spectrum|^2``
    (float32) when the caller has it (it saves a pass)."""
    width = eplan.band_bins
    start = choose_band(eplan, spectrum, power)
    n_win = spectrum.shape[0]
    if out is None:
        out = np.empty((n_win, n_features()))
    # the band, zero-padded to twice its width: only the first half of each row is ever
    # written, so the zeros of the second half persist in this thread's buffer
    padded = scratch(f"envelope{width}", (n_win, 2 * width), spectrum.dtype.type, zeroed=True)
    padded[:, :width] = spectra.spans(spectrum, width)[np.arange(n_win), start]
    analytic = sfft.ifft(padded, axis=1)                     # a fresh array, ours to reuse
    env = spectra.power32(analytic, "envelope_power")            # squared envelope
    moments = np.empty((2, n_win), np.float32)             # mean, sum of squares
    np.matmul(env, eplan.mean, out=moments[0])
    np.matmul(env[:, None, :], env[:, :, None], out=moments[1].reshape(n_win, 1, 1))
    m1, m2 = moments.astype(np.float64)
    kurt = np.divide(m2, m1 * m1 * env.shape[1], out=np.zeros_like(m1), where=m1 > 0)
    kurt -= 2.0
    # the spectrum of the zero-mean squared envelope: its DC bin set to zero (no pass
    # subtracting the mean)
    env_spectrum = sfft.rfft(env, axis=1)
    env_spectrum[:, 0] = 0.0
    centres = shaft[:, None] * eplan.target_bins                 # 0 = unknown speed
    ratio = spectra.snr(env_spectrum, centres, spec.envelope_search_tol,
                        spec.envelope_floor_bins)
    out[:, 0] = (start + width / 2.0) * spec.bin_hz
    np.maximum(kurt, -2.0, out=out[:, 1])
    np.matmul(ratio, _SPREAD, out=out[:, 2:])   # harmonics, family means, sideband mean
    return out
