"""Feature extraction cost against a bare FFT of the same batch.

Run: python benchmarks/features.py [--batch 64] [--repeats 200]

Same float32 windows (4096 samples at DEFAULT_SPEC's rate, noise plus a tone and bearing-like
impulses), batch of 64: median time of ``extract`` (full feature vector) and of a bare
``scipy.fft.rfft`` of the batch, measured in one run. Prints us/window, samples/s/core and
the ratio (target <= 5x).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy.fft as sfft

from agent.features import DEFAULT_SPEC, extract


def windows(batch: int, n: int, fs: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(n) / fs
    x = 0.1 * rng.standard_normal((batch, n)) + 0.2 * np.sin(2 * np.pi * 30.0 * t)
    x[:, :: int(fs / 107.0)] += 2.0
    return x.astype(np.float32)


def median_s(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median seconds per call of each function, calls interleaved so that load from other
    processes hits all of them alike."""
    for fn in fns:
        for _ in range(5):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    spec = DEFAULT_SPEC
    x = windows(args.batch, spec.window_samples, spec.sample_rate_hz)
    t_fft, t_feat, t_one = median_s([lambda: sfft.rfft(x, axis=1),
                                     lambda: extract(spec, x, 1797.0),
                                     lambda: extract(spec, x[:1], 1797.0)], args.repeats)
    per_win = t_feat / args.batch
    print(f"spec {spec.hash}: {len(spec.feature_names)} features, windows of "
          f"{spec.window_samples} float32 samples, batch {args.batch}, median of {args.repeats}")
    print(f"bare rfft        : {t_fft / args.batch * 1e6:8.1f} us/window")
    print(f"extract (batch)  : {per_win * 1e6:8.1f} us/window, "
          f"{spec.window_samples / per_win / 1e6:.1f} M samples/s/core")
    print(f"extract (1 window): {t_one * 1e6:8.1f} us/window")
    print(f"ratio extract/rfft: {t_feat / t_fft:.2f}x (target <= 5x)")


if __name__ == "__main__":
    main()
