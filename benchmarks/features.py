"""Feature extraction cost against a bare FFT of the same batch.

Run: python benchmarks/features.py [--batch 64] [--repeats 300]

Same float32 windows (4096 samples at DEFAULT_SPEC's rate: noise, a 1x tone and bearing-like
impacts), batch of 64. A bare ``scipy.fft.rfft`` of the batch and ``extract`` (the full
feature vector) are timed in one run, calls interleaved so that load from other processes
hits both alike; then one window and each stage of ``extract`` (profile). Prints us/window,
samples/s/core and the ratio extract / rfft (target <= 5x): per repeat (extract_i / rfft_i,
the pair measured back to back), its median and min, the ratio of the two minima (the cost
on an idle core), the same from CPU time (not inflated by waiting for a core), the load
average before and after, and the page faults per call (fresh temporaries), since a shared
machine inflates wall-clock medians.

BLAS runs one thread, as on the device: the agent limits BLAS to one thread while its loop
runs (threadpoolctl, agent/blas.py). ``--free-blas`` measures with the library's default
thread pool instead. At 64 windows no BLAS call of ``extract`` is large enough to use a
second thread either way, so both give the same figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import scipy.fft as sfft
from threadpoolctl import threadpool_limits

from agent.features import DEFAULT_SPEC, extract, shaft_hz
from agent.features import envelope as env_stage
from agent.features.spec import TIME_FEATURES

EXTRACT = sys.modules["agent.features.extract"]


def windows(batch: int, n: int, fs: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(n) / fs
    x = 0.1 * rng.standard_normal((batch, n)) + 0.2 * np.sin(2 * np.pi * 30.0 * t)
    x[:, :: int(fs / 107.0)] += 2.0
    return x.astype(np.float32)


def timed(fns: dict[str, Callable[[], object]], repeats: int
          ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and CPU seconds (this process, all threads) per call of each function,
    calls interleaved: repeat i of every function runs under the same machine load."""
    for fn in fns.values():
        for _ in range(5):
            fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - t0)
    return wall, cpu


def ratios(times: dict[str, list[float]], key: str) -> tuple[float, float, float]:
    """Median and min over repeats of the per-repeat ratio ``key`` / bare rfft, and the
    ratio of the two minima (both on an idle core)."""
    per_repeat = [a / b for a, b in zip(times[key], times["bare rfft"], strict=True)]
    return (statistics.median(per_repeat), min(per_repeat),
            min(times[key]) / min(times["bare rfft"]))


def faults_per_call(fn: Callable[[], object], calls: int = 20) -> float:
    """Minor page faults per call: fresh temporaries show up here."""
    fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def stages(x: np.ndarray) -> dict[str, Callable[[], object]]:
    spec = DEFAULT_SPEC
    plan = EXTRACT._plan(spec)
    shaft = shaft_hz(spec, 1797.0, x.shape[0])
    centred = x - x.mean(axis=1, keepdims=True)
    spectrum = sfft.rfft(centred, axis=1)
    out = np.empty((x.shape[0], len(spec.feature_names)))
    n_time, n_env = len(TIME_FEATURES), env_stage.n_features()
    # the time stage overwrites its input with sqrt|x|: the same work on every call
    variance = (centred.astype(np.float64) ** 2).mean(axis=1)
    return {
        "  stage: time domain": lambda: EXTRACT._time_features(plan, centred, variance,
                                                               out[:, :n_time]),
        "  stage: spectrum, bands, orders": lambda: EXTRACT._spectrum_features(
            spec, plan, spectrum, shaft, out[:, n_time:-n_env]),
        "  stage: kurtogram band choice": lambda: env_stage.choose_band(plan.env, spectrum),
        "  stage: envelope incl. band choice": lambda: env_stage.features(
            spec, plan.env, spectrum, shaft, out[:, -n_env:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--free-blas", action="store_true",
                        help="BLAS with its default thread pool (default: one thread, as the "
                             "agent runs it)")
    args = parser.parse_args()
    if args.free_blas:
        run(args)
    else:
        with threadpool_limits(limits=1, user_api="blas"):
            run(args)


def run(args: argparse.Namespace) -> None:
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
    load_before = os.getloadavg()
    wall, cpu = timed(head, args.repeats)
    rest_wall, _ = timed(rest, max(20, args.repeats // 3))
    report(args, {**wall, **rest_wall}, cpu, load_before)
    print(f"minor page faults per call: extract {faults_per_call(head['extract (batch)']):.0f}, "
          f"bare rfft {faults_per_call(head['bare rfft']):.0f}")


def report(args: argparse.Namespace, times: dict[str, list[float]],
           cpu: dict[str, list[float]], load_before: tuple[float, float, float]) -> None:
    spec = DEFAULT_SPEC
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    load = os.getloadavg()
    print(f"spec {spec.hash}: {len(spec.feature_names)} features, windows of "
          f"{spec.window_samples} float32 samples, batch {args.batch}, {args.repeats} repeats, "
          f"BLAS {'default threads' if args.free_blas else 'one thread'}")
    print(f"load average (1/5/15 min) before {load_before[0]:.1f}/{load_before[1]:.1f}/"
          f"{load_before[2]:.1f}, after {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} on "
          f"{os.cpu_count()} cpus")
    for name in times:
        per = 1 if name == "extract (1 window)" else args.batch
        print(f"{name:38s}: median {med[name] / per * 1e6:8.1f} us/window   "
              f"min {low[name] / per * 1e6:8.1f} us/window")
    per_win = med['extract (batch)'] / args.batch
    print(f"extract throughput: {spec.window_samples / per_win / 1e6:.1f}"
          f" M samples/s/core (median), "
          f"{spec.window_samples * args.batch / low['extract (batch)'] / 1e6:.1f} (min)")
    for key, label in (("extract (batch)", "extract/rfft"),
                       ("extract, fixed envelope band (batch)", "fixed envelope band/rfft")):
        w_med, w_min, w_lows = ratios(times, key)
        c_med, _, c_lows = ratios(cpu, key)
        print(f"ratio {label}: wall per repeat median {w_med:.2f}x, min {w_min:.2f}x; "
              f"min/min {w_lows:.2f}x; CPU time per repeat median {c_med:.2f}x, min/min "
              f"{c_lows:.2f}x (target <= 5x)")

if __name__ == "__main__":
    main()
