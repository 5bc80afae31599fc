"""Frames to fixed-length windows, one stream per (device, channel).

``Windower(spec).push(frame)`` returns the windows that ``frame`` completed. Windows have
``spec.window_samples`` samples at ``spec.sample_rate_hz``; consecutive windows of a stream
overlap by ``spec.overlap`` (a fraction in [0, 1)). When a stream's rate differs from the
spec rate, each window is cut at the stream's own rate (``window_samples * rate /
spec_rate`` samples) and resampled with :func:`agent.features.resample`, so windows always
cover the same time span and the model sees the rate it was trained on.

Every frame is checked, and what the checks find is counted in ``counters``:

- ``seq_gaps`` / ``missing_frames``: the sequence number jumped forward. Samples were lost,
  so the stream's buffer is **reset**: a window never spans a gap (it would show a step
  that is not in the machine). ``resets`` counts every reset.
- ``duplicates``: the frame repeats the last sequence number; dropped.
- ``out_of_order``: the frame is at most ``REORDER_FRAMES`` older than the last accepted
  one; dropped (its window has moved on, and inserting it would reorder samples).
- ``restarts``: the sequence number went back further than that: the node rebooted and
  started counting again. The buffer is reset and the stream follows the new numbering
  (otherwise a rebooted sensor would be ignored until its new count passed the old one).
- ``rate_changes``: the sample rate differs from the stream's previous frames; the buffer
  is reset and the stream continues at the new rate.
- ``dropped_streams``: frames of a new stream beyond ``max_streams``; dropped.

Sequence numbers are u32 and wrap; a difference of less than 2**31 forward is a gap,
anything else is backwards. Buffers are bounded: a stream holds at most one window plus one
frame of samples, in one contiguous array per stream. The windows that one
:meth:`Windower.push_many` completes on its fast path are copied out once, into one
``[n, window_samples]`` array shared by all streams, and each window is a read-only row of
it; :func:`stacked` gives that array back for a run of those windows (no second copy to
stack a batch). Other windows are read-only views of one copy per stream.

Pure: no I/O, no clock; times come from the frames' ``timestamp_us``.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Protocol

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from foreshock.wire import Frame

log = logging.getLogger(__name__)

SEQ_MOD = 2**32
REORDER_FRAMES = 8  # a frame up to this many behind is late; further back is a restart
COUNTERS = ("frames", "samples", "windows", "seq_gaps", "missing_frames", "duplicates",
            "out_of_order", "restarts", "rate_changes", "resets", "dropped_streams",
            "non_finite")


# the [n, window_samples] arrays push_many cut windows into, by id (see stacked)
_BLOCKS: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()


def stacked(windows: Sequence[Window]) -> npt.NDArray[np.float32] | None:
    """The windows' samples ``[n, window_samples]`` without a copy, when the windows are
    consecutive rows of one array cut by :meth:`Windower.push_many`, in the order it
    returned them (as a FIFO queue of its windows keeps them); None otherwise."""
    if not windows:
        return None
    block = windows[0].samples.base
    if block is None or _BLOCKS.get(id(block)) is not block:
        return None
    for w in windows:
        if w.samples.base is not block:
            return None
    n, row = len(windows), block.strides[0]
    first = (windows[0].samples.ctypes.data - block.ctypes.data) // row
    last = (windows[-1].samples.ctypes.data - block.ctypes.data) // row
    if last - first != n - 1:
        return None
    out: npt.NDArray[np.float32] = block[first:first + n]
    return out


class WindowSpec(Protocol):
    """What the windower needs of a :class:`agent.features.FeatureSpec`."""

    @property
    def sample_rate_hz(self) -> float: ...

    @property
    def window_samples(self) -> int: ...

    @property
    def overlap(self) -> float: ...


@dataclass(eq=False, slots=True)
class Window:
    """``samples`` float32[window_samples] in g at ``sample_rate_hz`` (the spec rate).

    Read-only by convention (not frozen: a frozen dataclass costs several microseconds per
    window to build, a measurable share of the pipeline).

    ``start_us`` is the time of the first sample; ``rpm`` the latest shaft speed reported
    by the stream's frames (0 = unknown); ``source_rate_hz`` the stream's own rate.
    """

    device_id: str
    channel: int
    start_us: int
    samples: npt.NDArray[np.float32]
    rpm: float
    sample_rate_hz: float
    source_rate_hz: float = 0.0

    @property
    def duration_s(self) -> float:
        return self.samples.size / self.sample_rate_hz

    @property
    def end_s(self) -> float:
        """Time just after the last sample, Unix seconds."""
        return self.start_us / 1e6 + self.duration_s


class _Stream:
    """One stream's samples in a contiguous buffer: ``data[:fill]`` are the pending ones."""

    __slots__ = ("data", "fill", "last_seq", "rate_hz", "rpm", "start_us")

    def __init__(self, rate_hz: float, last_seq: int, start_us: int = 0) -> None:
        self.rate_hz = rate_hz
        self.last_seq = last_seq
        self.start_us = start_us
        self.data: npt.NDArray[np.float32] = np.zeros(0, np.float32)
        self.fill = 0
        self.rpm = 0.0

    @property
    def buf(self) -> npt.NDArray[np.float32]:
        """The pending samples (a view)."""
        return self.data[:self.fill]

    def reset(self) -> None:
        self.fill = 0

    def reserve(self, size: int) -> None:
        """Make room for ``size`` samples in ``data`` (keeping the pending ones)."""
        if size > self.data.size:
            grown = np.empty(max(size, 2 * self.data.size), np.float32)
            grown[:self.fill] = self.data[:self.fill]
            self.data = grown

    def append(self, samples: npt.NDArray[np.float32]) -> None:
        end = self.fill + samples.size
        self.reserve(end)
        self.data[self.fill:end] = samples
        self.fill = end

    def consume(self, samples: int) -> None:
        """Drop the first ``samples`` pending samples (one memmove of the rest)."""
        rest = self.fill - samples
        self.data[:rest] = self.data[samples:self.fill]
        self.fill = rest


class Windower:
    """Cuts frames into overlapping windows per (device, channel); see the module doc."""

    def __init__(self, spec: WindowSpec, *, max_streams: int = 64) -> None:
        if not 0.0 <= float(spec.overlap) < 1.0:
            raise ValueError(f"overlap {spec.overlap!r} must be in [0, 1)")
        if spec.window_samples < 8 or spec.sample_rate_hz <= 0:
            raise ValueError("window_samples must be >= 8 and sample_rate_hz > 0")
        self.spec = spec
        self.max_streams = max_streams
        self.hop_samples = max(1, round(spec.window_samples * (1.0 - float(spec.overlap))))
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._streams: dict[tuple[str, int], _Stream] = {}

    @property
    def streams(self) -> int:
        return len(self._streams)

    def push(self, frame: Frame) -> list[Window]:
        """Accept one frame; return the windows it completed (often none)."""
        self.counters["frames"] += 1
        key = (frame.device_id, frame.channel)
        stream = self._streams.get(key)
        if stream is None:
            if len(self._streams) >= self.max_streams:
                self.counters["dropped_streams"] += 1
                return []
            stream = _Stream(frame.sample_rate_hz, frame.seq, frame.timestamp_us)
            self._streams[key] = stream
        elif not self._check(stream, frame):
            return []
        stream.last_seq = frame.seq
        return self._append(key, stream, frame)

    def _check(self, stream: _Stream, frame: Frame) -> bool:
        """Sequence and rate checks; False means drop the frame."""
        step = (frame.seq - stream.last_seq) % SEQ_MOD
        if step == 0:
            self.counters["duplicates"] += 1
            return False
        if step >= SEQ_MOD // 2:
            if SEQ_MOD - step <= REORDER_FRAMES:
                self.counters["out_of_order"] += 1
                return False
            self.counters["restarts"] += 1
            self._reset(stream)
            return True
        if step > 1:
            self.counters["seq_gaps"] += 1
            self.counters["missing_frames"] += step - 1
            self._reset(stream)
        if abs(frame.sample_rate_hz - stream.rate_hz) > 1e-6 * stream.rate_hz:
            self.counters["rate_changes"] += 1
            self._reset(stream)
            stream.rate_hz = frame.sample_rate_hz
        return True

    def _reset(self, stream: _Stream) -> None:
        if stream.buf.size:
            self.counters["resets"] += 1
        stream.reset()

    def _span(self, rate_hz: float) -> tuple[int, int]:
        """(window, hop) in samples at the stream's own rate."""
        ratio = rate_hz / float(self.spec.sample_rate_hz)
        if abs(ratio - 1.0) < 1e-9:
            return self.spec.window_samples, self.hop_samples
        return (max(8, round(self.spec.window_samples * ratio)),
                max(1, round(self.hop_samples * ratio)))

    def push_many(self, frames: Iterable[Frame]) -> list[Window]:
        """:meth:`push` every frame; the windows they completed, stream by stream.

        A stream's run of frames that continue it (consecutive sequence numbers, same rate,
        finite samples) is appended in one copy and cut in one pass; any other run goes
        frame by frame through :meth:`push`. Same windows and counters either way.
        """
        groups: dict[tuple[str, int], list[Frame]] = {}
        for frame in frames:
            groups.setdefault((frame.device_id, frame.channel), []).append(frame)
        out: list[Window] = []
        cuts: list[tuple[int, tuple[str, int], _Stream, int, list[float]]] = []
        for key, group in groups.items():
            stream = self._streams.get(key)
            if (stream is None or len(group) < 2
                    or not self._push_run(key, stream, group, out, cuts)):
                for frame in group:
                    out += self.push(frame)
        if cuts:
            self._cut_shared(cuts, out)
        return out

    def _cut_shared(self, cuts: list[tuple[int, tuple[str, int], _Stream, int, list[float]]],
                    out: list[Window]) -> None:
        """Cut the fast-path streams' windows into one shared array (rows in the order of
        ``out``) and insert them into ``out`` where each stream's windows belong."""
        win, hop = self.spec.window_samples, self.hop_samples
        block = np.empty((sum(c[3] for c in cuts), win), np.float32)
        rows, parts = 0, []
        for _, _, stream, count, _ in cuts:
            np.copyto(block[rows:rows + count],
                      sliding_window_view(stream.data[:(count - 1) * hop + win], win)[::hop])
            stream.consume(count * hop)
            parts.append((rows, count))
            rows += count
        block.setflags(write=False)
        _BLOCKS[id(block)] = block
        made = [self._windows(key, stream, block[r:r + count], hop, rpms)
                for (_, key, stream, _, rpms), (r, count) in zip(cuts, parts, strict=True)]
        for (pos, *_), windows in zip(reversed(cuts), reversed(made), strict=True):
            out[pos:pos] = windows

    def _push_run(self, key: tuple[str, int], stream: _Stream, group: list[Frame],
                  out: list[Window],
                  cuts: list[tuple[int, tuple[str, int], _Stream, int, list[float]]]) -> bool:
        """The fast path of :meth:`push_many`; False (nothing done) if it does not apply."""
        n = len(group)
        first = (stream.last_seq + 1) % SEQ_MOD
        if [f.seq for f in group] != list(range(first, first + n)):
            return False            # a gap, a repeat or a u32 wrap inside the run: slow path
        if {f.sample_rate_hz for f in group} != {stream.rate_hz}:
            return False
        parts = [f.raw for f in group]
        if {p.dtype for p in parts} != {np.dtype(np.float32)}:
            parts = [f.samples for f in group]   # int16: scaled to g by the frame
        sizes = [p.size for p in parts]
        before = stream.fill
        end = before + sum(sizes)
        stream.reserve(end)
        pending = stream.data[before:end]
        np.concatenate(parts, out=pending)
        if not np.isfinite(pending).all():
            return False            # NaN/inf: the slow path counts and zeroes them
        stream.fill = end
        rpms = [f.rpm for f in group]
        if min(rpms) <= 0:          # frames without a speed keep the latest known one
            rpm = stream.rpm
            for i, value in enumerate(rpms):
                rpm = rpms[i] = value if value > 0 else rpm
        self.counters["frames"] += n
        self.counters["samples"] += end - before
        stream.last_seq, stream.rpm = (first + n - 1) % SEQ_MOD, rpms[-1]
        if before == 0:
            stream.start_us = group[0].timestamp_us
        win, hop = self._span(stream.rate_hz)
        if stream.fill >= win:
            ends = before + np.cumsum(sizes)
            count = (stream.fill - win) // hop + 1
            last = np.searchsorted(ends, np.arange(count) * hop + win, side="left")
            at = [rpms[j] for j in last.tolist()]
            if win == self.spec.window_samples:   # cut later, into push_many's shared array
                cuts.append((len(out), key, stream, int(count), at))
            else:
                out += self._cut(key, stream, win, hop, at)
        return True

    def _append(self, key: tuple[str, int], stream: _Stream, frame: Frame) -> list[Window]:
        samples = frame.samples
        if not math.isfinite(float(np.add.reduce(samples, dtype=np.float64))) and not np.all(
                np.isfinite(samples)):
            self.counters["non_finite"] += 1
            samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
        if stream.fill == 0:
            stream.start_us = frame.timestamp_us
        stream.append(samples)
        self.counters["samples"] += samples.size
        if frame.rpm > 0:
            stream.rpm = frame.rpm
        win, hop = self._span(stream.rate_hz)
        if stream.fill < win:
            return []
        return self._cut(key, stream, win, hop)

    def _cut(self, key: tuple[str, int], stream: _Stream, win: int, hop: int,
             rpms: list[float] | None = None) -> list[Window]:
        """Every complete window in the buffer: read-only views of one copy of the samples
        they span (consecutive windows share their overlap)."""
        count = (stream.fill - win) // hop + 1
        data = stream.data
        # one copy of the samples the windows span; the windows are read-only views of it
        blocks = sliding_window_view(data[:(count - 1) * hop + win].copy(), win)[::hop]
        stream.consume(count * hop)
        target = float(self.spec.sample_rate_hz)
        if win != self.spec.window_samples:
            blocks = np.stack([_fit(_resample(b, stream.rate_hz, target),
                                    self.spec.window_samples) for b in blocks])
        return self._windows(key, stream, blocks, hop, rpms)

    def _windows(self, key: tuple[str, int], stream: _Stream, blocks: npt.NDArray[np.float32],
                 hop: int, rpms: list[float] | None) -> list[Window]:
        """Windows of the rows of ``blocks`` (the stream's next ones, ``hop`` apart at the
        stream's rate); advances the stream's start time."""
        count = len(blocks)
        step_us = hop * 1e6 / stream.rate_hz
        start, rate = stream.start_us, stream.rate_hz
        target = float(self.spec.sample_rate_hz)
        starts = (np.round(np.arange(count) * step_us).astype(np.int64) + start).tolist()
        rpm = [float(r) for r in rpms] if rpms else [float(stream.rpm)] * count
        out = list(map(Window, repeat(key[0], count), repeat(key[1], count), starts,
                       list(blocks), rpm, repeat(target, count), repeat(rate, count)))
        stream.start_us = start + round(count * step_us)
        self.counters["windows"] += count
        return out


def _resample(x: npt.NDArray[np.float32], from_hz: float, to_hz: float) -> npt.NDArray[np.float32]:
    from agent.features import resample

    return np.asarray(resample(x, from_hz, to_hz), dtype=np.float32)


def _fit(x: npt.NDArray[np.float32], n: int) -> npt.NDArray[np.float32]:
    """Trim or edge-pad to exactly ``n`` samples (resampling may round by one)."""
    if x.size >= n:
        return x[:n].copy()
    return np.pad(x, (0, n - x.size), mode="edge")
