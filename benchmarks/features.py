"""Feature extraction cost against a bare FFT of the same batch.

Run: python benchmarks/features.py [--batch 64] [--repeats 300]

Same float32 windows (4096 samples at DEFAULT_SPEC's rate: noise, a 1x tone and bearing-like
impacts), batch of 64. A bare ``scipy.fft.rfft`` of the batch and ``extract`` (the full
feature vector) are timed in one run, calls interleaved so that load from other processes
hits both alike; then one window and each stage of ``extract`` (profile). Prints us/window,
samples/s/core and the ratio extract / rfft (target <= 5x) as the median of the repeats,
plus the minimum (the cost on an idle core) and the load average, since a shared machine
inflates the median.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import scipy.fft as sfft

from agent.features import DEFAULT_SPEC, extract, shaft_hz
from agent.features import envelope as env_stage

EXTRACT = sys.modules["agent.features.extract"]


def windows(batch: int, n: int, fs: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(n) / fs
    x = 0.1 * rng.standard_normal((batch, n)) + 0.2 * np.sin(2 * np.pi * 30.0 * t)
    x[:, :: int(fs / 107.0)] += 2.0
    return x.astype(np.float32)


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function, calls interleaved."""
    for fn in fns.values():
        for _ in range(5):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def stages(x: np.ndarray) -> dict[str, Callable[[], object]]:
    spec = DEFAULT_SPEC
    plan = EXTRACT._plan(spec)
    shaft = shaft_hz(spec, 1797.0, x.shape[0])
    centred = x - x.mean(axis=1, keepdims=True)
    spectrum = sfft.rfft(centred, axis=1)
    return {
        "  stage: time domain": lambda: EXTRACT._time_features(centred),
        "  stage: spectrum, bands, orders": lambda: EXTRACT._spectrum_features(
            spec, plan, spectrum, shaft),
        "  stage: kurtogram band choice": lambda: env_stage.choose_band(plan.env, spectrum),
        "  stage: envelope incl. band choice": lambda: env_stage.features(
            spec, plan.env, spectrum, shaft),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    spec = DEFAULT_SPEC
    fixed = dataclasses.replace(spec, envelope_band_hz=(2000.0, 3600.0))
    x = windows(args.batch, spec.window_samples, spec.sample_rate_hz)
    head: dict[str, Callable[[], object]] = {
        "bare rfft": lambda: sfft.rfft(x, axis=1),
        "extract (batch)": lambda: extract(spec, x, 1797.0),
        "extract, fixed envelope band (batch)": lambda: extract(fixed, x, 1797.0),
    }
    rest: dict[str, Callable[[], object]] = {
        "extract (1 window)": lambda: extract(spec, x[:1], 1797.0), **stages(x)}
    times = {**timed(head, args.repeats), **timed(rest, max(20, args.repeats // 3))}
    fns = {**head, **rest}
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    print(f"spec {spec.hash}: {len(spec.feature_names)} features, windows of "
          f"{spec.window_samples} float32 samples, batch {args.batch}, {args.repeats} repeats, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    for name in fns:
        per = 1 if name == "extract (1 window)" else args.batch
        print(f"{name:38s}: median {med[name] / per * 1e6:8.1f} us/window   "
              f"min {low[name] / per * 1e6:8.1f} us/window")
    per_win = med["extract (batch)"] / args.batch
    print(f"extract throughput: {spec.window_samples / per_win / 1e6:.1f} M samples/s/core "
          f"(median), {spec.window_samples * args.batch / low['extract (batch)'] / 1e6:.1f} "
          f"(min)")
    print(f"ratio extract/rfft: {med['extract (batch)'] / med['bare rfft']:.2f}x median, "
          f"{low['extract (batch)'] / low['bare rfft']:.2f}x min (target <= 5x)")
    key = "extract, fixed envelope band (batch)"
    print(f"ratio with a fixed envelope band (no kurtogram): "
          f"{med[key] / med['bare rfft']:.2f}x median, {low[key] / low['bare rfft']:.2f}x min")


if __name__ == "__main__":
    main()
