"""Agent pipeline throughput against a bare FFT, and resident memory of a running agent.

Run: python benchmarks/pipeline.py [--seconds 300] [--channels 2] [--rounds 3]

1. Throughput: ``--seconds`` of a 12.8 kHz stream per channel (noise, a 1x tone and
   bearing-like impulses) as 1024-sample frames, interleaved across channels as a device
   receives them, go through the live :class:`Agent` path at the default config (0.32 s
   windows, 50 % overlap, ``service.batch_windows`` = 64, default queue) — ReplaySource ->
   frame checks -> Windower -> window integrity checks -> extract -> z-scores against the
   operating-state baselines (agent.baselines, as on a device) -> the shipped ONNX bundle
   -> Decider -> guarded adaptation -> drift -> telemetry bodies — with ``store=False``
   (the outbox and link have their own benchmarks). Each read brings the frames of one
   full batch (64 windows over all channels), the sustained-load case: every step
   processes a full, mixed-channel batch and nothing is dropped. Measured in CPU seconds
   of this process (samples/s/core). The bare FFT is ``scipy.fft.rfft`` of the same
   windows (same count, same length, one batched call per agent batch). Each round times
   the pipeline, then the same pipeline with one fixed commissioning baseline per stream
   (no operating-state baselines: the path before agent.baselines). The bare FFT is
   timed interleaved with the pipeline: after every agent step, ``scipy.fft.rfft`` of one
   batch of the same size (64 windows of the spec length), so both see the same machine
   load; the ratio of a round is its pipeline CPU over its FFT CPU. The parts alone
   (windowing with the frame checks, the window integrity checks, features.extract) are
   timed after, each against its own interleaved FFT the same way. Medians over
   ``--rounds``. Target: pipeline <= 10x the FFT.
2. Memory: a child process builds a real agent (shipped bundle, SQLite outbox in a temp
   dir), processes 30 s of data, and reports VmRSS and VmHWM from /proc. Target < 120 MB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FS = 12_800.0
FRAME = 1024
DEFAULT_HOP_FRAMES = 2   # frames per window hop at the default spec (2048 samples)


def make_frames(seconds: float, channels: int) -> list:
    from foreshock.wire import Frame

    rng = np.random.default_rng(0)
    n_frames = int(seconds * FS / FRAME)
    t = np.arange(n_frames * FRAME) / FS
    frames = []
    for ch in range(channels):
        x = 0.1 * rng.standard_normal(t.size) + 0.2 * np.sin(2 * np.pi * 29.95 * t)
        x[:: int(FS / 107.0)] += 2.0
        x = x.astype(np.float32)
        for s in range(n_frames):
            frames.append(Frame.from_samples("bench", ch, s, round(s * FRAME / FS * 1e6) + 1,
                                             FS, x[s * FRAME:(s + 1) * FRAME], rpm=1797.0))
    frames.sort(key=lambda f: (f.seq, f.channel))
    return frames


class InterleavedFft:
    """``scipy.fft.rfft`` of the next batch of the benchmark's own windows (``[batch, n]``
    float32, taken in turn) after each timed step: the FFT's CPU per window under the same
    load as the step just timed."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        import scipy.fft as sfft

        self.rfft, self.batches = sfft.rfft, batches
        self.cpu, self.windows, self.next = 0.0, 0, 0
        self.rfft(batches[0], axis=1)

    def tick(self) -> None:
        x = self.batches[self.next % len(self.batches)]
        self.next += 1
        t0 = time.process_time()
        self.rfft(x, axis=1)
        self.cpu += time.process_time() - t0
        self.windows += len(x)

    @property
    def per_window(self) -> float:
        return self.cpu / self.windows

    def tight_loop(self) -> float:
        """CPU per window of one batched rfft per batch, back to back (not interleaved)."""
        t0 = time.process_time()
        for x in self.batches:
            self.rfft(x, axis=1)
        return (time.process_time() - t0) / sum(len(x) for x in self.batches)


def window_batches(frames: list, batch: int) -> list[np.ndarray]:
    """The benchmark's windows (as the windower cuts them), in batches of ``batch``."""
    from agent.features import DEFAULT_SPEC
    from agent.window import Windower

    windower = Windower(DEFAULT_SPEC)
    rows = [w.samples for i in range(0, len(frames), batch * DEFAULT_HOP_FRAMES)
            for w in windower.push_many(frames[i:i + batch * DEFAULT_HOP_FRAMES])]
    return [np.stack(rows[i:i + batch]) for i in range(0, len(rows) - batch + 1, batch)]


def pipeline_cpu_s(frames: list, state: Path, fft: InterleavedFft, learning: bool = True
                   ) -> tuple[float, int]:
    """CPU seconds of the agent loop over ``frames`` (``Agent.run``'s loop, with an FFT of
    one batch timed after each step); windows processed; the FFT. Each read brings
    ``batch_windows`` x hop frames: one full batch of windows, whatever the number of
    channels."""
    from agent.config import AgentConfig
    from agent.service import ONE_BLAS_THREAD, Agent
    from agent.sources import ReplaySource

    cfg = AgentConfig.for_device("bench", "bench", "", state, decision={"commission_s": 5.0})
    batch = cfg.service.batch_windows
    agent = Agent(cfg, ReplaySource(frames, batch=batch * DEFAULT_HOP_FRAMES), store=False)
    if learning:
        agent._open_learning()          # operating-state baselines, as a device runs them
    cpu = 0.0
    with ONE_BLAS_THREAD:
        t0 = time.process_time()
        agent.start()
        try:
            while True:
                agent.step()
                cpu += time.process_time() - t0
                fft.tick()
                t0 = time.process_time()
                if agent.source.exhausted and not agent.queue:
                    break
        finally:
            agent.close()
            cpu += time.process_time() - t0
    if agent.counters["dropped_windows"]:
        raise SystemExit("the benchmark dropped windows: the batches are not as configured")
    return cpu, agent.counters["windows_processed"]


def extract_cpu_s(windows: int, batch: int, fft: InterleavedFft) -> float:
    """CPU seconds of agent.features.extract alone for the same number of windows."""
    from agent.features import DEFAULT_SPEC, extract

    n = DEFAULT_SPEC.window_samples
    x = np.random.default_rng(1).standard_normal((batch, n)).astype(np.float32)
    rpm = np.full(batch, 1797.0, np.float32)
    calls = max(1, windows // batch)
    cpu = 0.0
    extract(DEFAULT_SPEC, x, rpm)
    for _ in range(calls):
        t0 = time.process_time()
        extract(DEFAULT_SPEC, x, rpm)
        cpu += time.process_time() - t0
        fft.tick()
    return cpu * windows / (calls * batch)


def window_cpu_s(frames: list, read_batch: int, fft: InterleavedFft) -> tuple[float, list]:
    """CPU seconds of the frame checks plus the windower over all frames; the windows of
    each read."""
    from agent.features import DEFAULT_SPEC
    from agent.monitor import Monitor
    from agent.window import Windower

    mon, windower, out = Monitor(), Windower(DEFAULT_SPEC), []
    cpu = 0.0
    for i in range(0, len(frames), read_batch):
        chunk = frames[i:i + read_batch]
        t0 = time.process_time()
        mon.quality.observe_frames(chunk)
        out.append(windower.push_many(chunk))
        cpu += time.process_time() - t0
        fft.tick()
    return cpu, out


def quality_cpu_s(reads: list, batch: int, fft: InterleavedFft) -> float:
    """CPU seconds of the window integrity checks (check_windows, on the windower's array as
    the service passes it, or a stacked copy when the batch is not a run of it) alone."""
    from agent.monitor import Monitor
    from agent.window import stacked

    mon = Monitor()
    cpu = 0.0
    for chunk in (w[i:i + batch] for w in reads for i in range(0, len(w), batch)):
        t0 = time.process_time()
        samples = stacked(chunk)
        if samples is None:
            samples = np.stack([w.samples for w in chunk])
        mon.quality.check_windows(chunk, samples)
        cpu += time.process_time() - t0
        fft.tick()
    return cpu


def one_round(frames: list, batches: list[np.ndarray]) -> dict[str, float]:
    """Per window: each part's CPU and its ratio to the FFT timed interleaved with it."""
    ffts = {key: InterleavedFft(batches)
            for key in ("pipeline", "fixed", "window", "quality", "features")}
    batch = len(batches[0])
    with tempfile.TemporaryDirectory() as state:
        cpu, windows = pipeline_cpu_s(frames, Path(state), ffts["pipeline"])
    with tempfile.TemporaryDirectory() as state:
        fixed, _ = pipeline_cpu_s(frames, Path(state), ffts["fixed"], learning=False)
    win_s, wins = window_cpu_s(frames, batch * DEFAULT_HOP_FRAMES, ffts["window"])
    parts = {"pipeline": cpu, "fixed": fixed, "window": win_s,
             "quality": quality_cpu_s(wins, batch, ffts["quality"]),
             "features": extract_cpu_s(windows, batch, ffts["features"])}
    out = {"windows": windows, "fft": ffts["pipeline"].per_window,
           "fft_tight": ffts["pipeline"].tight_loop()}
    for key, part_cpu in parts.items():
        out[key] = part_cpu / windows
        out[key + "_x"] = part_cpu / windows / ffts[key].per_window
    return out


CHILD = r"""
import sys, threading, tempfile
sys.path.insert(0, {root!r})
from benchmarks.pipeline import make_frames
from agent.config import AgentConfig
from agent.service import Agent
from agent.sources import ReplaySource
state = tempfile.mkdtemp()
cfg = AgentConfig.for_device("bench", "bench", "", state, decision={{"commission_s": 5.0}})
agent = Agent(cfg, ReplaySource(make_frames(30.0, 1)))
agent.run(threading.Event())
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
print(agent.model_info["name"], status["VmRSS"].strip(), status["VmHWM"].strip())
"""


def memory() -> str:
    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=root)], capture_output=True,
                         text=True, timeout=300, check=True)
    return out.stdout.strip()


def main() -> None:
    import statistics

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    frames = make_frames(args.seconds, args.channels)
    samples = len(frames) * FRAME
    from agent.config import ServiceConfig

    batches = window_batches(frames, ServiceConfig().batch_windows)
    rounds = [one_round(frames, batches) for _ in range(args.rounds)]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    windows, per_window = int(rounds[0]["windows"]), med("pipeline")
    print(f"pipeline: {samples} samples, {windows} windows, median of {args.rounds} rounds "
          f"{per_window * 1e6:.0f} CPU us/window -> "
          f"{samples / (per_window * windows):,.0f} samples/s/core")
    print(f"bare rfft of the same windows, one batched call per batch: "
          f"{med('fft') * 1e6:.1f} us/window interleaved with the steps (back to back: "
          f"{med('fft_tight') * 1e6:.1f}, pipeline / that "
          f"{statistics.median(r['pipeline'] / r['fft_tight'] for r in rounds):.1f}x)")
    for key, what in (("window", "frame checks + windowing"),
                      ("quality", "window integrity checks (agent.monitor)"),
                      ("features", "features.extract")):
        print(f"  {what} alone: {med(key) * 1e6:.1f} us/window ({med(key + '_x'):.1f}x the FFT)")
    rest = statistics.median(r["pipeline_x"] - r["window_x"] - r["quality_x"] - r["features_x"]
                             for r in rounds)
    print(f"  the rest (z, inference, decisions, drift, telemetry, loop): {rest:.1f}x the FFT")
    learn = statistics.median(r["pipeline"] - r["fixed"] for r in rounds)
    print(f"    of which operating-state baselines (agent.baselines z + adaptation, vs one "
          f"fixed baseline per stream): {learn * 1e6:.1f} us/window; pipeline without them "
          f"{med('fixed_x'):.1f}x the FFT")
    each = ", ".join(f"{r['pipeline_x']:.1f}" for r in rounds)
    print(f"ratio pipeline / FFT: {med('pipeline_x'):.1f}x (rounds: {each}; target <= 10x)")
    name, rss_kb, _, hwm_kb, _ = memory().split()
    print(f"running agent with model {name}: VmRSS {int(rss_kb) / 1024:.0f} MB, "
          f"peak VmHWM {int(hwm_kb) / 1024:.0f} MB (target < 120 MB)")


if __name__ == "__main__":
    main()
