"""The batched paths of agent.monitor.quality give what the per-frame and per-window
paths give: ``observe_frames`` vs ``observe_frame``, ``check_windows`` vs ``check_batch``."""

from __future__ import annotations

import dataclasses

import numpy as np

from agent.features import DEFAULT_SPEC
from agent.monitor import DataQualityMonitor, QualityConfig, WindowMeta
from agent.window import Windower
from foreshock.wire import Frame, SampleFormat

FS = DEFAULT_SPEC.sample_rate_hz
N = 1024


def stream_frames(seed: int) -> list[Frame]:
    """Two float32 channels and one int16 channel of node1 (and a bit of node2) with gaps,
    duplicates, late frames, a restart, a clock step, a rate change, NaN, saturation and a
    stuck stretch."""
    rng = np.random.default_rng(seed)
    out = []
    t0 = 1_700_000_000_000_000
    for s in range(120):
        for ch in (0, 1, 2):
            x = (0.3 * rng.standard_normal(N)).astype(np.float32)
            rate = FS
            ts = t0 + round(s * N / FS * 1e6)
            if ch == 0 and 50 <= s < 58:
                x[:] = 0.25                                  # stuck: flatline windows
            if (ch, s) == (1, 33):
                x[7] = np.nan
            if ch == 1 and s >= 90:
                ts += 2_000_000                              # a clock step
            if ch == 2 and s >= 100:
                rate = 25_600.0                              # the node changed its rate
            fmt, scale = SampleFormat.FLOAT32, 1.0
            if ch == 2:
                fmt, scale = SampleFormat.INT16, 1.0 / 32767 * 1.2
                if s in (20, 21):
                    x[:40] = 5.0                             # saturates int16
                if s % 10 == 5:
                    x[:2] = 5.0                              # too few to count as clipping
            seq = s if not (ch == 1 and s >= 70) else s - 60   # a restart on channel 1
            out.append(Frame.from_samples("node1", ch, seq, ts, rate, x, sample_format=fmt,
                                          scale=scale, rpm=1790.0 if s % 5 else 0.0))
        if s < 30:                                           # a fourth stream
            out.append(Frame.from_samples("node2", 0, s, t0 + round(s * N / FS * 1e6), FS,
                                          rng.standard_normal(N).astype(np.float32)))
    out = [f for f in out if (f.channel, f.seq) not in ((0, 23), (0, 24), (2, 61))]  # gaps
    out.insert(40, out[38])                                     # a duplicate
    out.insert(90, out[70])                                     # a late frame
    return out


def state(mon: DataQualityMonitor) -> tuple[object, ...]:
    streams = {k: dataclasses.replace(s, marks=list(s.marks), clean_verdict=None)  # type: ignore[arg-type]
               for k, s in mon._streams.items()}
    return dict(mon.counters), streams


def test_observe_frames_matches_observe_frame() -> None:
    for seed in range(3):
        frames = stream_frames(seed)
        one, bulk = DataQualityMonitor(), DataQualityMonitor()
        for f in frames:
            one.observe_frame(f)
        for i in range(0, len(frames), 37):
            bulk.observe_frames(frames[i:i + 37])
        assert state(bulk) == state(one)
        assert one.counters["time_steps"] >= 1 and one.counters["frames_ignored"] >= 2
        assert sum(s.saturated for s in one._streams.values()) > 0


def test_check_windows_matches_check_batch() -> None:
    cfg = QualityConfig(bad_after=2, good_after=2)
    for seed in range(3):
        frames = stream_frames(seed)
        windower = Windower(DEFAULT_SPEC)
        one, bulk = DataQualityMonitor(cfg, max_streams=3), DataQualityMonitor(cfg, max_streams=3)
        expected, got = [], []
        for i in range(0, len(frames), 24):
            chunk = frames[i:i + 24]
            for mon in (one, bulk):
                mon.observe_frames(chunk)
            windows = windower.push_many(chunk)
            if not windows:
                continue
            x = np.stack([w.samples for w in windows])
            expected += one.check_batch(x, [WindowMeta.of(w) for w in windows])
            got += bulk.check_windows(windows, x)
        assert got == expected
        assert one.counters == bulk.counters
        assert {"flatline", "seq_gaps", "non_finite"} <= {c for q in got for c in q.checks}
        assert one.counters["dq_events"] > 0 and one.counters["dq_dropped_streams"] > 0
