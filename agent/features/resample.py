"""FFT-based resampling (no scipy.signal on the device)."""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft

from foreshock.errors import DataError


def resample(x: np.ndarray, from_hz: float, to_hz: float) -> np.ndarray:
    """Resample ``x`` along its last axis from ``from_hz`` to ``to_hz``; float32 result.

    Band-limited (periodic) interpolation: truncate or zero-pad the spectrum of the whole
    signal. Output length is ``round(n * to_hz / from_hz)``. Downsampling removes everything
    at or above the new Nyquist frequency (ideal anti-alias filter). Resample a whole record
    or a long stretch at once: edges are treated as periodic.
    """
    if not (math.isfinite(from_hz) and math.isfinite(to_hz) and from_hz > 0 and to_hz > 0):
        raise DataError(f"cannot resample from {from_hz!r} Hz to {to_hz!r} Hz: rates must be "
                        "finite and > 0")
    data = np.asarray(x, dtype=np.float32)
    n = data.shape[-1] if data.ndim else 0
    if from_hz == to_hz or n == 0:
        return data.copy()
    m = round(n * to_hz / from_hz)
    if m < 1:
        raise DataError(f"{n} samples at {from_hz:g} Hz are too few to resample to {to_hz:g} Hz")
    spectrum = sfft.rfft(data, axis=-1)
    out = np.zeros((*data.shape[:-1], m // 2 + 1), dtype=spectrum.dtype)
    keep = min(n, m) // 2 + 1
    out[..., :keep] = spectrum[..., :keep]
    if m < n and m % 2 == 0:
        out[..., m // 2] = 0.0            # new Nyquist bin: ambiguous, drop it
    elif m > n and n % 2 == 0:
        out[..., n // 2] *= 0.5           # old Nyquist bin splits into a +/- pair
    y = sfft.irfft(out, n=m, axis=-1) * (m / n)
    return y.astype(np.float32, copy=False)
