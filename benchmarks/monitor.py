"""Cost of the on-device monitor per window, against a bare rfft of the same window(s).

Run: ``python benchmarks/monitor.py [--window-samples 4096] [--batch 64] [--repeats 31]``.

The reference is ``scipy.fft.rfft`` of the same float32 windows, the FFT the feature
extractor pays (``numpy.fft.rfft`` is printed too: on some builds it is several times
slower, which would flatter any ratio taken against it). Each part is timed against it
on two signals:

- ``sine+noise``: a 50 Hz tone plus Gaussian noise;
- ``bearing``: the pipeline benchmark's signal (noise, a 1x tone and one-sample impulses at
  107 Hz) plus ringing outer-race impacts, the impulsive case that stresses the spike screen.

Times are CPU seconds of the benchmark thread (``time.thread_time``), so time the shared
machine's scheduler gives to other processes is not charged to either side. The part and
the rfft are timed alternately, ``--repeats`` times, each repeat a few calls;
the median and the minimum of the per-repeat ratios are printed with ``os.getloadavg()``
before and after (the development machine is shared, so read the minimum as the cost on
an idle core and the median as the cost under that load). ``--shared-data ../shared/data``
also runs the integrity checks over every CWRU channel (4,096-sample windows) and every
FEMTO snapshot and prints how many real-vibration windows each check flags (false alarms).
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.fft as sfft

from agent.monitor import DataQualityMonitor, DriftMonitor, StageTimer, WindowMeta, training_stats

RATE_HZ = 12800.0
Fn = Callable[[], object]


def _timed(fn: Fn, calls: int) -> float:
    """CPU seconds of this thread per call: time the scheduler gave to others is left out."""
    start = time.thread_time()
    for _ in range(calls):
        fn()
    return (time.thread_time() - start) / calls


def compare(fn: Fn, base: Fn, repeats: int, repeat_s: float = 0.01) -> tuple[float, float, float]:
    """(median s per call of ``fn``, median and min of the per-repeat ratios fn / base).

    ``fn`` and ``base`` alternate within every repeat, so a load change hits both.
    """
    fn(), base()
    calls = max(1, int(repeat_s / max(_timed(fn, 3), 1e-7)))
    costs, ratios = [], []
    for _ in range(repeats):
        cost = _timed(fn, calls)
        costs.append(cost)
        ratios.append(cost / _timed(base, calls))
    return float(np.median(costs)), float(np.median(ratios)), float(np.min(ratios))


def signals(n: int, b: int) -> dict[str, np.ndarray]:
    """``[b, n]`` float32 batches: sine plus noise, and an impulsive bearing-fault signal."""
    rng = np.random.default_rng(0)
    t = np.arange(n * b) / RATE_HZ
    sine = np.sin(2 * np.pi * 50 * t) + 0.3 * rng.standard_normal(t.size)
    bearing = 0.1 * rng.standard_normal(t.size) + 0.2 * np.sin(2 * np.pi * 29.95 * t)
    bearing[:: int(RATE_HZ / 107.0)] += 2.0          # one-sample impulses (pipeline signal)
    ring = np.exp(-np.arange(64) / 8.0) * np.sin(2 * np.pi * 3000.0 * np.arange(64) / RATE_HZ)
    hits = np.zeros(t.size)
    hits[37:: int(RATE_HZ / 89.0)] = 3.0             # ringing outer-race impacts at 89 Hz
    bearing += np.convolve(hits, ring)[: t.size]
    return {"sine+noise": sine.astype(np.float32).reshape(b, n),
            "bearing": bearing.astype(np.float32).reshape(b, n)}


def cost_rows(n: int, b: int, f: int) -> list[tuple[str, int, Fn, Fn]]:
    """(what, windows per call, part, its rfft reference) for every timed part."""
    rng = np.random.default_rng(1)
    names = [f"f{i}" for i in range(f)]
    drift = DriftMonitor(training_stats(rng.standard_normal((5000, f)), names), names)
    feats = rng.standard_normal((b, f)).astype(np.float32)
    scores, alerts = rng.random(b).astype(np.float32), np.zeros(b, bool)
    timer = StageTimer()
    metas = [WindowMeta("bench", i % 4, 0.0, RATE_HZ) for i in range(b)]
    rows: list[tuple[str, int, Fn, Fn]] = []
    for label, batch in signals(n, b).items():
        dq, one = DataQualityMonitor(), batch[0]

        def rfft_batch(x: np.ndarray = batch) -> object:
            return sfft.rfft(x, axis=1)

        def rfft_one(x: np.ndarray = one) -> object:
            return sfft.rfft(x)

        rows += [
            (f"integrity check, batch of {b} ({label})", b,
             functools.partial(dq.check_batch, batch, metas), rfft_batch),
            (f"integrity check, 1 window ({label})", 1,
             functools.partial(dq.check, one, metas[0]), rfft_one),
        ]
    batch = signals(n, b)["sine+noise"]
    rows += [
        (f"numpy.fft.rfft, batch of {b}", b, lambda: np.fft.rfft(batch, axis=1),
         lambda: sfft.rfft(batch, axis=1)),
        (f"drift update ({f} features), batch of {b}", b,
         lambda: drift.update(feats, scores, alerts), lambda: sfft.rfft(batch, axis=1)),
        ("stage timer record, 1 call", 1, lambda: timer.record("quality", 1e-3, count=b),
         lambda: sfft.rfft(batch[0])),
    ]
    return rows


def scan_shared_data(root: Path, window_samples: int) -> None:
    """Count integrity findings on real bearing recordings (every one is a false alarm)."""
    import scipy.io

    dq = DataQualityMonitor()
    flagged: collections.Counter[str] = collections.Counter()
    total = 0
    for path in sorted((root / "cwru").glob("*.mat")):
        for key, value in scipy.io.loadmat(path).items():
            if key.endswith("_time"):
                x = np.asarray(value, dtype=np.float32).ravel()
                n = x.size // window_samples
                rows = x[: n * window_samples].reshape(n, window_samples)
                total += n
                for q in dq.check_batch(rows, [WindowMeta(path.stem[:30], 0)] * n):
                    flagged.update(q.checks)
    for path in sorted((root / "femto").glob("*.npz")):
        acc = np.load(path)["acc_mg"] / 1000.0
        for axis in range(acc.shape[2]):
            total += acc.shape[0]
            for q in dq.check_batch(acc[:, :, axis], [WindowMeta(path.stem, axis)]
                                    * acc.shape[0]):
                flagged.update(q.checks)
    print(f"real windows checked: {total}; flagged per check: {dict(flagged) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--window-samples", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--shared-data", type=Path, default=None)
    args = parser.parse_args()
    if args.shared_data is not None:
        scan_shared_data(args.shared_data, args.window_samples)
    n, b = args.window_samples, args.batch
    load_before = os.getloadavg()
    print(f"window {n} float32 samples; ratio = cost / scipy.fft.rfft of the same window(s), "
          f"CPU time, timed alternately, {args.repeats} repeats")
    print(f"{'what':52s} {'us/window':>10s} {'x rfft med':>10s} {'x rfft min':>10s}")
    for what, per, fn, base in cost_rows(n, b, args.features):
        cost, med, low = compare(fn, base, args.repeats)
        print(f"{what:52s} {1e6 * cost / per:10.1f} {med:10.2f} {low:10.2f}")
    print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}".format(*load_before)
          + ", after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
