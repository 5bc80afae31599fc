"""Frame evidence per sensor channel, read before the windower sees the frames.

:class:`FrameEvidence` is the frame half of :class:`agent.monitor.DataQualityMonitor`:
``observe_frame`` / ``observe_frames`` record what the windower later hides — non-finite raw
samples (the windower zeroes them), int16 samples at full scale, sequence gaps, and the
observed sample rate from the frames' timestamps — in each stream's :class:`StreamState`,
where the window checks (:mod:`agent.monitor.quality`) read it. Pure: times come from the
frames.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.monitor.checks import Issue, QualityConfig

if TYPE_CHECKING:
    from agent.monitor.quality import Quality

SEQ_MOD = 2**32
REORDER_FRAMES = 8  # as agent.window: a frame further back is a restart, not a late frame


class FrameLike(Protocol):
    """What :meth:`DataQualityMonitor.observe_frame` reads of a :class:`foreshock.wire.Frame`."""

    @property
    def device_id(self) -> str: ...

    @property
    def channel(self) -> int: ...

    @property
    def seq(self) -> int: ...

    @property
    def timestamp_us(self) -> int: ...

    @property
    def sample_rate_hz(self) -> float: ...

    @property
    def scale(self) -> float: ...

    @property
    def raw(self) -> npt.NDArray[Any]: ...

    @property
    def count(self) -> int: ...


@dataclass
class StreamState:
    """Per-(device, channel) state: frame evidence since the last window, rate, verdicts."""

    last_seq: int | None = None
    full_scale_g: float = 0.0
    non_finite: int = 0
    saturated: int = 0
    missing_frames: int = 0
    declared_hz: float = 0.0
    marks: deque[tuple[float, int]] = field(default_factory=deque)
    total_samples: int = 0
    bad: bool = False
    run: int = 0
    since_s: float = 0.0
    bad_windows: int = 0
    last_issues: tuple[Issue, ...] = ()
    clean_verdict: Quality | None = None  # the verdict shared by this stream's clean windows


class FrameEvidence:
    """Per-stream frame evidence; the base of :class:`agent.monitor.DataQualityMonitor`.
    ``counters`` holds the frame counters (``dq_dropped_streams``, ``time_steps``,
    ``frames_ignored``); the subclass adds its own to the same dict."""

    def __init__(self, config: QualityConfig | None = None, *, max_streams: int = 256) -> None:
        self.config = config or QualityConfig()
        self.max_streams = max_streams
        self._streams: dict[tuple[str, int], StreamState] = {}
        self.counters: dict[str, int] = {"dq_dropped_streams": 0, "time_steps": 0,
                                         "frames_ignored": 0}

    def _stream(self, device_id: str, channel: int) -> StreamState | None:
        key = (device_id, int(channel))
        stream = self._streams.get(key)
        if stream is None:
            if len(self._streams) >= self.max_streams:
                self.counters["dq_dropped_streams"] += 1
                return None
            stream = self._streams[key] = StreamState()
        return stream

    def observe_frame(self, frame: FrameLike) -> None:
        """Record one frame's raw evidence (non-finite, saturation, gaps, timing).

        A frame whose sequence number does not advance (a duplicate, or a frame at most
        ``agent.window.REORDER_FRAMES`` behind a newer one) is counted in
        ``frames_ignored`` and otherwise ignored, as the windower drops it; after a gap or a
        restart of the node's numbering the rate estimate restarts at that frame.
        """
        stream = self._stream(frame.device_id, frame.channel)
        if stream is None:
            return
        if stream.last_seq is not None:
            step = (int(frame.seq) - stream.last_seq) % SEQ_MOD
            late = step >= SEQ_MOD // 2 and SEQ_MOD - step <= REORDER_FRAMES
            if step == 0 or late:  # duplicate or late: the windower drops it
                self.counters["frames_ignored"] += 1
                return
            if step >= SEQ_MOD // 2:  # the node restarted its numbering (as the windower)
                stream.marks.clear()
            elif step > 1:  # frames lost: the rate estimate restarts at this frame
                stream.missing_frames += step - 1
                stream.marks.clear()
        raw = np.asarray(frame.raw)
        if raw.dtype == np.int16:
            stream.full_scale_g = 32767.0 * float(frame.scale)
            stream.saturated += int(np.count_nonzero((raw == 32767) | (raw == -32768)))
        else:
            stream.non_finite += int(raw.size - np.count_nonzero(np.isfinite(raw)))
        stream.last_seq = int(frame.seq)
        self._observe_rate(stream, frame.timestamp_us / 1e6, int(frame.count),
                           float(frame.sample_rate_hz))

    def observe_frames(self, frames: Iterable[FrameLike]) -> None:
        """:meth:`observe_frame` every frame, with the same counts and state.

        A stream's run of frames that simply continue it (consecutive sequence numbers, the
        declared rate, one sample format, no time step) is recorded with a few array
        operations; any other run goes frame by frame.
        """
        groups: dict[tuple[str, int], list[FrameLike]] = {}
        for frame in frames:
            groups.setdefault((frame.device_id, frame.channel), []).append(frame)
        for key, group in groups.items():
            stream = self._streams.get(key)
            if stream is None or len(group) < 2 or not self._observe_run(stream, group):
                for frame in group:
                    self.observe_frame(frame)

    def _observe_run(self, stream: StreamState, group: list[FrameLike]) -> bool:
        """The fast path of :meth:`observe_frames`; False (nothing done) if it does not apply."""
        if stream.last_seq is None or not stream.marks:
            return False
        n = len(group)
        first = (stream.last_seq + 1) % SEQ_MOD
        if [f.seq for f in group] != list(range(first, first + n)):
            return False
        rate = stream.declared_hz
        if {f.sample_rate_hz for f in group} != {rate}:
            return False
        raws = [f.raw for f in group]
        dtypes = {r.dtype for r in raws}
        if len(dtypes) != 1:
            return False
        dtype = dtypes.pop()
        scale = float(group[0].scale)
        if dtype == np.int16 and {f.scale for f in group} != {scale}:
            return False
        counts = np.fromiter([r.size for r in raws], np.int64, n)
        ts = np.fromiter([f.timestamp_us for f in group], np.float64, n) / 1e6
        last_ts, last_total = stream.marks[-1]
        prev_ts = np.empty(n)
        prev_ts[0], prev_ts[1:] = last_ts, ts[:-1]
        gaps = np.empty(n, np.int64)
        gaps[0], gaps[1:] = stream.total_samples - last_total, counts[:-1]
        if np.any(np.abs(ts - (prev_ts + gaps / rate)) > self.config.time_step_s):
            return False                # a time step: the per-frame path counts it
        joined = np.concatenate(raws)
        if dtype == np.int16:
            stream.full_scale_g = 32767.0 * scale
            if joined.max() == 32767 or joined.min() == -32768:
                stream.saturated += int(np.count_nonzero((joined == 32767) | (joined == -32768)))
        else:
            finite = np.isfinite(joined)
            if not finite.all():
                stream.non_finite += int(joined.size - np.count_nonzero(finite))
        stream.last_seq = (first + n - 1) % SEQ_MOD
        totals = stream.total_samples + np.cumsum(counts) - counts
        keep = self.config.rate_frames
        marks = zip(ts[-keep:].tolist(), totals[-keep:].tolist(), strict=True)
        if n >= keep:
            stream.marks = deque(marks)
        else:
            stream.marks.extend(marks)
            while len(stream.marks) > keep:
                stream.marks.popleft()
        stream.total_samples += int(counts.sum())
        return True

    def _observe_rate(self, stream: StreamState, ts_s: float, count: int, rate_hz: float) -> None:
        marks = stream.marks
        if rate_hz != stream.declared_hz:
            marks.clear()
            stream.declared_hz = rate_hz
        if marks:
            last_ts, last_total = marks[-1]
            expected = last_ts + (stream.total_samples - last_total) / rate_hz
            if abs(ts_s - expected) > self.config.time_step_s:
                self.counters["time_steps"] += 1
                marks.clear()
        marks.append((ts_s, stream.total_samples))
        stream.total_samples += count
        while len(marks) > self.config.rate_frames:
            marks.popleft()

    def observed_rate_hz(self, device_id: str, channel: int) -> float:
        """Rate measured from frame timestamps over the recent frames; 0 if too short."""
        stream = self._streams.get((device_id, int(channel)))
        return stream_rate_hz(stream, self.config) if stream is not None else 0.0


def stream_rate_hz(stream: StreamState, cfg: QualityConfig) -> float:
    """Samples per second between the stream's oldest and newest rate marks (0: too short)."""
    if len(stream.marks) < 2:
        return 0.0
    (t0, n0), (t1, n1) = stream.marks[0], stream.marks[-1]
    if t1 - t0 < cfg.rate_min_span_s:
        return 0.0
    return (n1 - n0) / (t1 - t0)
