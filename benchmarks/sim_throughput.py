"""Simulator throughput: one node at 25.6 kHz, frames encoded, as a multiple of real time.

    python benchmarks/sim_throughput.py [--stream-s 60]

Target: at least 50x real time on one core. Measured for a healthy node and for a node with
a growing outer-race fault (impacts, resonance convolution), float32 and int16 frames; the
figure is stream seconds produced per CPU second of this process (single-threaded numpy).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time

from firmware_sim.node import SimNode
from firmware_sim.scenario import Scenario

TARGET_X = 50.0


def measure(scenario: Scenario, stream_s: float) -> tuple[float, float, int]:
    """(x real time by CPU time, x real time by wall time, bytes produced)."""
    node = SimNode(scenario, "bench-1", seed=1, start_time_s=0.0)
    node.next_frame_bytes()  # warm-up: kernels, FFT plans
    cpu0, wall0, start_s = time.process_time(), time.perf_counter(), node.stream_time_s
    produced = 0
    while node.stream_time_s - start_s < stream_s:
        produced += len(node.next_frame_bytes())
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    done_s = node.stream_time_s - start_s
    return done_s / cpu, done_s / wall, produced


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream-s", type=float, default=60.0)
    args = parser.parse_args()
    base = Scenario.load("outer-race-growing")
    cases = {
        "healthy float32": Scenario.from_dict({"name": "h", "sample_rate_hz": 25_600.0}),
        "outer race (at failure) float32": Scenario.from_dict({
            "name": "o", "sample_rate_hz": 25_600.0,
            "life": {"life_s": base.life.life_s, "time_acceleration": 1.0,
                     "start_s": base.life.life_s},
            "faults": [{"kind": "outer_race", "growth": "exponential", "onset_frac": 0.2}]}),
        "inner race int16": Scenario.from_dict({
            "name": "i", "sample_rate_hz": 25_600.0, "sample_format": "int16",
            "faults": [{"kind": "inner_race"}]}),
    }
    worst = float("inf")
    print(f"one node, 25.6 kHz, 1024-sample frames, {args.stream_s:g} s of stream per case")
    for name, scenario in cases.items():
        cpu_x, wall_x, size = measure(scenario, args.stream_s)
        worst = min(worst, cpu_x)
        print(f"  {name:34} {cpu_x:7.1f}x real time (CPU)  {wall_x:7.1f}x (wall)  "
              f"{size / args.stream_s / 1e3:6.1f} kB/s of frames")
    verdict = "meets" if worst >= TARGET_X else "MISSES"
    print(f"slowest case {worst:.1f}x real time: {verdict} the {TARGET_X:g}x target")
    return 0 if worst >= TARGET_X else 1


if __name__ == "__main__":
    raise SystemExit(main())
