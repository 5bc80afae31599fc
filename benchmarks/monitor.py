"""Cost of the on-device monitor per window, against a bare rfft of the same window.

Run: ``python benchmarks/monitor.py [--window-samples 4096] [--batch 64]``. Prints
microseconds per window and the ratio to ``numpy.fft.rfft`` (the floor any spectral feature
pays), all measured in this one run. ``--shared-data ../shared/data`` also runs the
integrity checks over every CWRU channel (4,096-sample windows) and every FEMTO snapshot
and prints how many real-vibration windows each check flags (false alarms).
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agent.monitor import DataQualityMonitor, DriftMonitor, StageTimer, WindowMeta, training_stats

RATE_HZ = 12800.0


def _timed(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def compare(fn: Callable[[], object], base: Callable[[], object], rounds: int = 9,
            round_s: float = 0.05) -> tuple[float, float]:
    """(median s per call of ``fn``, median ratio fn/base), the two timed alternately.

    Alternating rounds keep the ratio fair on a machine whose load changes under us.
    """
    fn(), base()
    calls = max(1, int(round_s / max(_timed(fn, 3), 1e-7)))
    costs, ratios = [], []
    for _ in range(rounds):
        cost = _timed(fn, calls)
        costs.append(cost)
        ratios.append(cost / _timed(base, calls))
    return float(np.median(costs)), float(np.median(ratios))


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-samples", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--shared-data", type=Path, default=None)
    args = parser.parse_args()
    if args.shared_data is not None:
        scan_shared_data(args.shared_data, args.window_samples)
    n, b, f = args.window_samples, args.batch, args.features
    rng = np.random.default_rng(0)
    t = np.arange(n) / RATE_HZ
    one = (np.sin(2 * np.pi * 50 * t) + 0.3 * rng.standard_normal(n)).astype(np.float32)
    batch = np.tile(one, (b, 1)) + 0.01 * rng.standard_normal((b, n)).astype(np.float32)
    dq = DataQualityMonitor()
    meta = WindowMeta("bench", 0, 0.0, RATE_HZ)
    metas = [WindowMeta("bench", i % 4, 0.0, RATE_HZ) for i in range(b)]
    names = [f"f{i}" for i in range(f)]
    drift = DriftMonitor(training_stats(rng.standard_normal((5000, f)), names), names)
    feats = rng.standard_normal((b, f)).astype(np.float32)
    scores, alerts = rng.random(b).astype(np.float32), np.zeros(b, bool)
    timer = StageTimer()

    def rfft_one() -> object:
        return np.fft.rfft(one)

    def rfft_batch() -> object:
        return np.fft.rfft(batch, axis=1)

    rows = [
        ("bare rfft, 1 window", 1, rfft_one, rfft_one),
        (f"bare rfft, batch of {b}", b, rfft_batch, rfft_one),
        ("integrity check, 1 window", 1, lambda: dq.check(one, meta), rfft_one),
        (f"integrity check, batch of {b}", b, lambda: dq.check_batch(batch, metas),
         rfft_batch),
        (f"drift update ({f} features), batch of {b}", b,
         lambda: drift.update(feats, scores, alerts), rfft_batch),
        ("stage timer record (per call)", 1, lambda: timer.record("features", 1e-3), rfft_one),
    ]
    print(f"window {n} float32 samples; ratio = cost / rfft of the same window(s), "
          "timed alternately, median of 9 rounds")
    print(f"{'what':44s} {'us/window':>10s} {'x rfft':>8s}")
    for what, per, fn, base in rows:
        cost, ratio = compare(fn, base)
        if fn is rfft_batch:  # per window in a batch against one window alone
            ratio /= b
        print(f"{what:44s} {1e6 * cost / per:10.1f} {ratio:8.2f}")


if __name__ == "__main__":
    main()
