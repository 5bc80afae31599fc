"""Detector inference cost: onnxruntime fp32 vs int8 QDQ vs TFLite (ai-edge-litert),
per call (batch 1) and batched, on the shipped default bundle. Prints figures; ratios are
measured in one run on one machine.

    python benchmarks/inference.py [--bundle DIR] [--calls N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.build import DETECTOR_FP32, DETECTOR_INT8, DETECTOR_TFLITE
from models.build_default import BUNDLES, DEFAULT_NAME, DEFAULT_VERSION
from models.runtime import OnnxRunner, TfliteRunner


def per_call_us(fn: Callable[[np.ndarray], object], z: np.ndarray, calls: int) -> float:
    fn(z)  # warm-up (and TFLite tensor allocation for this batch size)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(z)
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=BUNDLES / DEFAULT_NAME / DEFAULT_VERSION)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    fp32 = OnnxRunner(args.bundle / DETECTOR_FP32)
    runners: dict[str, OnnxRunner | TfliteRunner] = {
        "onnx fp32": fp32, "onnx int8": OnnxRunner(args.bundle / DETECTOR_INT8),
        "tflite fp32": TfliteRunner(args.bundle / DETECTOR_TFLITE)}
    k = int(fp32.session.get_inputs()[0].shape[1])
    rng = np.random.default_rng(0)
    sizes = {name: (args.bundle / f).stat().st_size for name, f in
             zip(runners, (DETECTOR_FP32, DETECTOR_INT8, DETECTOR_TFLITE), strict=True)}
    print(f"bundle {args.bundle} ({k} inputs)")
    print(f"{'runtime':<12} {'file B':>7} {'batch 1 us':>11} {'batch 64 us/win':>16} "
          f"{'batch 1024 us/win':>18}")
    base = None
    for name, run in runners.items():
        one = per_call_us(run, rng.normal(size=(1, k)).astype(np.float32), args.calls)
        b64 = per_call_us(run, rng.normal(size=(64, k)).astype(np.float32),
                          max(1, args.calls // 10)) / 64
        b1k = per_call_us(run, rng.normal(size=(1024, k)).astype(np.float32),
                          max(1, args.calls // 50)) / 1024
        base = base or one
        print(f"{name:<12} {sizes[name]:>7} {one:>11.1f} {b64:>16.2f} {b1k:>18.3f}"
              f"   (batch-1 cost x{one / base:.2f} of onnx fp32)")


if __name__ == "__main__":
    main()
