"""Windower: overlap, resampling, and the per-frame sequence and rate checks."""

from __future__ import annotations

import numpy as np
import pytest

from agent.features import DEFAULT_SPEC
from agent.window import Windower
from foreshock.wire import Frame

FS = DEFAULT_SPEC.sample_rate_hz
N = 1024


def frame(seq: int, *, rate: float = FS, n: int = N, channel: int = 0, ts_us: int | None = None,
          value: float | None = None) -> Frame:
    x = np.full(n, float(seq) if value is None else value, np.float32)
    ts = ts_us if ts_us is not None else round(seq * n / rate * 1e6)
    return Frame.from_samples("node1", channel, seq, ts, rate, x, rpm=1800.0)


def test_overlap_and_timing() -> None:
    w = Windower(DEFAULT_SPEC)
    out = [win for s in range(16) for win in w.push(frame(s))]
    hop = DEFAULT_SPEC.hop_samples
    expected = (16 * N - DEFAULT_SPEC.window_samples) // hop + 1
    assert len(out) == expected
    assert all(win.samples.shape == (DEFAULT_SPEC.window_samples,) for win in out)
    assert out[1].start_us - out[0].start_us == round(hop / FS * 1e6)
    # the second window starts hop samples in: its first sample came from frame hop // N
    assert out[1].samples[0] == hop // N
    assert out[0].rpm == pytest.approx(1800.0)
    assert w.counters["windows"] == expected


def test_gap_resets_duplicate_and_out_of_order_dropped() -> None:
    w = Windower(DEFAULT_SPEC)
    for s in range(3):
        w.push(frame(s))
    assert w.push(frame(2)) == []            # duplicate
    assert w.push(frame(1)) == []            # out of order
    w.push(frame(6))                         # 3 frames missing -> reset
    c = w.counters
    assert (c["duplicates"], c["out_of_order"], c["seq_gaps"], c["missing_frames"]) == (1, 1, 1, 3)
    assert c["resets"] == 1
    out = [win for s in range(7, 10) for win in w.push(frame(s))]
    # after the reset a window needs 4 fresh frames (6..9): no sample from before the gap
    assert len(out) == 1 and out[0].samples.min() >= 6


def test_sequence_wraps() -> None:
    w = Windower(DEFAULT_SPEC)
    w.push(frame(2**32 - 1, ts_us=0))
    w.push(frame(0, ts_us=80_000))
    assert w.counters["seq_gaps"] == 0 and w.counters["out_of_order"] == 0


def test_rate_change_resets_and_resamples() -> None:
    w = Windower(DEFAULT_SPEC)
    w.push(frame(0))
    out = []
    rate = 48_000.0
    t = np.arange(40 * N) / rate
    sine = np.sin(2 * np.pi * 500.0 * t).astype(np.float32)
    for s in range(1, 40):
        f = Frame.from_samples("node1", 0, s, round(s * N / rate * 1e6), rate,
                               sine[(s - 1) * N:s * N])
        out += w.push(f)
    assert w.counters["rate_changes"] == 1
    assert out and all(win.samples.size == DEFAULT_SPEC.window_samples for win in out)
    spectrum = np.abs(np.fft.rfft(out[0].samples))
    peak_hz = np.argmax(spectrum) * FS / DEFAULT_SPEC.window_samples
    assert abs(peak_hz - 500.0) < 2 * DEFAULT_SPEC.bin_hz
    assert out[0].source_rate_hz == rate


def test_streams_are_separate_and_bounded() -> None:
    w = Windower(DEFAULT_SPEC, max_streams=2)
    for ch in range(3):
        w.push(frame(0, channel=ch))
    assert w.streams == 2 and w.counters["dropped_streams"] == 1
    out = [win for s in range(1, 8) for ch in (0, 1) for win in w.push(frame(s, channel=ch))]
    assert {win.channel for win in out} == {0, 1}


def test_buffer_is_bounded() -> None:
    w = Windower(DEFAULT_SPEC)
    for s in range(500):
        w.push(frame(s))
    stream = next(iter(w._streams.values()))
    assert stream.buf.size < DEFAULT_SPEC.window_samples + N


def test_push_many_matches_push_frame_by_frame() -> None:
    """The bulk path gives the same windows (samples, times, rpm) and counters as push(),
    with gaps, duplicates, NaN frames, rpm changes and two interleaved streams."""
    rng = np.random.default_rng(3)
    frames = []
    for s in range(40):
        for ch in (0, 1):
            x = rng.standard_normal(N).astype(np.float32)
            if (s, ch) == (17, 1):
                x[5] = np.nan
            frames.append(Frame.from_samples("node1", ch, s, round(s * N / FS * 1e6), FS, x,
                                             rpm=0.0 if s % 4 == 1 else 1700.0 + 10 * (s // 7)))
    frames = [f for f in frames if (f.seq, f.channel) != (23, 0)]      # a gap on channel 0
    frames.insert(30, frames[29])                                      # a duplicate
    one, bulk = Windower(DEFAULT_SPEC), Windower(DEFAULT_SPEC)
    expected = [w for f in frames for w in one.push(f)]
    got = [w for i in range(0, len(frames), 9) for w in bulk.push_many(frames[i:i + 9])]
    key = lambda w: (w.channel, w.start_us)   # noqa: E731  (bulk output is per stream)
    expected.sort(key=key)
    got.sort(key=key)
    assert [(w.channel, w.start_us, w.rpm) for w in got] == \
        [(w.channel, w.start_us, w.rpm) for w in expected]
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(got, expected, strict=True))
    assert bulk.counters == one.counters and one.counters["non_finite"] == 1
