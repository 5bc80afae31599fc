"""Data integrity per sensor channel: is this window fit to be scored?

Two calls, both pure (times come from the frames and the windows):

- ``DataQualityMonitor.observe_frame(frame)`` for every decoded frame, before the windower
  sees it. It reads what the windower later hides: non-finite raw samples (the windower
  zeroes them), int16 samples at full scale (``raw`` at -32768 or 32767), sequence gaps, and
  the observed sample rate from the frames' timestamps against the declared rate (this
  half is :class:`agent.monitor.frames.FrameEvidence`).
- ``DataQualityMonitor.check(samples, meta) -> Quality`` for every window (``check_batch``
  for ``[n, w]``). It runs the sample checks on the window and adds what the frames since the
  stream's previous window showed.

Checks (figures in each :class:`Issue`; limits in :class:`QualityConfig`):

=============  ======================================================  ========
check          fires when                                              blocking
=============  ======================================================  ========
empty          the window has no samples                               yes
non_finite     any NaN/inf in the window or in its frames' raw data    yes
clipping       samples at int16 full scale, or a pile-up of samples    yes
               at the window's extreme value (a plateau)
flatline       standard deviation below ``flat_std_g``, or most        yes
               consecutive samples equal (a stuck sensor)
spikes         isolated samples far beyond the robust scale (median    yes
               and MAD) whose neighbours are ordinary; bearing impacts
               ring over several samples and are not counted
rate_drift     observed frame rate off the declared rate by more       yes
               than ``rate_tolerance``
seq_gaps       frames were lost since the stream's previous window     no
=============  ======================================================  ========

``Quality.scoreable`` is false when a blocking issue was found: the service must not score
that window. Each (device, channel) runs a small state machine: it turns ``bad`` after
``bad_after`` consecutive windows with issues and back to ``ok`` after ``good_after`` clean
windows, and only those two transitions produce a ``data_quality`` event body in
``Quality.events``; a steady state produces nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.monitor.checks import CHECKS, Issue, QualityConfig, json_number, sample_issues
from agent.monitor.frames import FrameEvidence, StreamState, stream_rate_hz

__all__ = ["DataQualityMonitor", "Issue", "Quality", "QualityConfig", "WindowMeta"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class WindowMeta:
    """What the checker needs to know about a window besides its samples.

    ``at_s``: device time of the window (Unix s). ``full_scale_g``: int16 full scale in g
    (32767 x scale) if the sensor sends int16, else 0 (then frames observed through
    ``observe_frame`` supply it). ``observed_rate_hz``: a rate measured elsewhere, 0 = use the
    frames' timestamps. ``missing_frames``: frames lost before this window as counted by the
    caller, added to what ``observe_frame`` counted.
    """

    device_id: str = ""
    channel: int = 0
    at_s: float = 0.0
    sample_rate_hz: float = 0.0
    full_scale_g: float = 0.0
    observed_rate_hz: float = 0.0
    missing_frames: int = 0

    @classmethod
    def of(cls, window: WindowLike, **extra: Any) -> WindowMeta:
        """Meta of an :class:`agent.window.Window` (duck-typed)."""
        return cls(window.device_id, window.channel, window.start_us / 1e6,
                   float(window.source_rate_hz or window.sample_rate_hz), **extra)


class WindowLike(Protocol):
    """What :meth:`WindowMeta.of` reads of an :class:`agent.window.Window`."""

    @property
    def device_id(self) -> str: ...

    @property
    def channel(self) -> int: ...

    @property
    def start_us(self) -> int: ...

    @property
    def sample_rate_hz(self) -> float: ...

    @property
    def source_rate_hz(self) -> float: ...


@dataclass(frozen=True)
class Quality:
    """Verdict on one window. ``events``: data_quality event bodies to put in the outbox."""

    device_id: str
    channel: int
    issues: tuple[Issue, ...] = ()
    events: tuple[dict[str, Any], ...] = ()

    @property
    def ok(self) -> bool:
        return not self.issues

    @property
    def scoreable(self) -> bool:
        return not any(i.blocking for i in self.issues)

    @property
    def checks(self) -> tuple[str, ...]:
        return tuple(i.check for i in self.issues)


class DataQualityMonitor(FrameEvidence):
    """Integrity checks and per-channel state; see the module docstring."""

    def __init__(self, config: QualityConfig | None = None, *, max_streams: int = 256) -> None:
        super().__init__(config, max_streams=max_streams)
        self.counters = {"windows_checked": 0, "windows_bad": 0, "windows_unscoreable": 0,
                         "dq_events": 0, **self.counters}
        self.counters.update({f"dq_{c}": 0 for c in CHECKS})

    def check(self, samples: npt.ArrayLike, meta: WindowMeta) -> Quality:
        """Check one window of samples (float32[n]); never raises on odd values."""
        return self.check_batch(_as_rows(samples, 1), [meta])[0]

    def check_batch(self, windows: npt.ArrayLike, metas: list[WindowMeta]) -> list[Quality]:
        """Check ``[n, w]`` windows in one vectorised pass; ``metas`` has n entries."""
        x = _as_rows(windows, len(metas))
        full = [self._full_scale(m) for m in metas]
        per_row = sample_issues(x, full, self.config)
        return [self._verdict(m, issues) for m, issues in zip(metas, per_row, strict=True)]

    def check_windows(self, windows: Sequence[WindowLike], samples: npt.ArrayLike
                      ) -> list[Quality]:
        """:meth:`check_batch` of windows (``samples``: theirs stacked ``[n, w]``) with the
        metas of :meth:`WindowMeta.of`; the same verdicts, counters and events.

        A clean window of a healthy stream with no frame evidence pending gets the stream's
        shared clean verdict without building its meta; every other window takes the
        general path.
        """
        x = _as_rows(samples, len(windows))
        keys = [(w.device_id, int(w.channel)) for w in windows]
        full = {k: s.full_scale_g if (s := self._streams.get(k)) else 0.0 for k in set(keys)}
        per_row = sample_issues(x, [full[k] for k in keys], self.config)
        if not any(per_row):
            shared = self._all_clean(windows, keys)
            if shared is not None:
                return shared
        clean: dict[tuple[str, int], tuple[float, Quality | None]] = {}
        out: list[Quality] = []
        fast_count = 0
        for w, key, found in zip(windows, keys, per_row, strict=True):
            if not found:
                rate = float(w.source_rate_hz or w.sample_rate_hz)
                cached = clean.get(key)
                if cached is None or cached[0] != rate:
                    cached = clean[key] = (rate, self._clean_verdict(key, rate))
                if cached[1] is not None:
                    fast_count += 1
                    out.append(cached[1])
                    continue
            out.append(self._verdict(WindowMeta.of(w), found))
            clean.pop(key, None)           # the stream's state may have changed
        self.counters["windows_checked"] += fast_count
        return out

    def _all_clean(self, windows: Sequence[WindowLike], keys: list[tuple[str, int]]
                   ) -> list[Quality] | None:
        """The verdicts of a batch of windows without sample issues when every window gets
        its stream's shared clean verdict (known streams, one rate per stream in the
        batch): one :meth:`_clean_verdict` per stream instead of a look-up per window.
        None (nothing changed that the general path would not do) otherwise."""
        rate_of = [float(w.source_rate_hz or w.sample_rate_hz) for w in windows]
        rates = dict(zip(keys, rate_of, strict=True))
        if (len(set(zip(keys, rate_of, strict=True))) != len(rates)
                or not all(k in self._streams for k in rates)):
            return None
        verdicts: dict[tuple[str, int], Quality] = {}
        for key, rate in rates.items():
            verdict = self._clean_verdict(key, rate)
            if verdict is None:
                return None
            verdicts[key] = verdict
        self.counters["windows_checked"] += len(keys)
        return [verdicts[k] for k in keys]

    def _clean_verdict(self, key: tuple[str, int], rate_hz: float) -> Quality | None:
        """The shared clean verdict if a clean window of this stream at ``rate_hz`` gets it
        now (what :meth:`_verdict` would decide), after consuming the stream's (empty) frame
        evidence; None if the window must take the general path."""
        stream = self._streams.get(key)
        if stream is None and len(self._streams) < self.max_streams:
            stream = self._stream(*key)
        if (stream is None or stream.bad or stream.run or stream.non_finite
                or stream.missing_frames or stream.saturated >= self.config.clip_min_samples):
            return None
        rate = stream_rate_hz(stream, self.config)
        if rate > 0 and rate_hz > 0 and abs(rate / rate_hz - 1.0) > self.config.rate_tolerance:
            return None
        stream.saturated = 0
        if stream.clean_verdict is None:
            stream.clean_verdict = Quality(key[0], key[1])
        return stream.clean_verdict

    def _full_scale(self, meta: WindowMeta) -> float:
        if meta.full_scale_g > 0:
            return meta.full_scale_g
        stream = self._streams.get((meta.device_id, int(meta.channel)))
        return stream.full_scale_g if stream else 0.0

    def _verdict(self, meta: WindowMeta, found: list[Issue]) -> Quality:
        stream = self._stream(meta.device_id, meta.channel)
        issues = self._frame_issues(meta, found, stream)
        counters = self.counters
        counters["windows_checked"] += 1
        if not issues and stream is not None and not stream.bad and stream.run == 0:
            if stream.clean_verdict is None:  # a clean window of a healthy stream: the common case
                stream.clean_verdict = Quality(meta.device_id, int(meta.channel))
            return stream.clean_verdict
        for issue in issues:
            counters[f"dq_{issue.check}"] += 1
        if issues:
            counters["windows_bad"] += 1
        if any(i.blocking for i in issues):
            counters["windows_unscoreable"] += 1
        events = self._transition(stream, meta, issues) if stream else []
        return Quality(meta.device_id, int(meta.channel), tuple(issues), tuple(events))

    def _frame_issues(self, meta: WindowMeta, found: list[Issue],
                      stream: StreamState | None) -> list[Issue]:
        """Add what the frames since the previous window showed; reset that evidence."""
        issues = list(found)
        missing = int(meta.missing_frames)
        if stream is not None:
            if stream.non_finite and not any(i.check == "non_finite" for i in issues):
                issues.append(Issue("non_finite", stream.non_finite, 0, "samples"))
            if stream.saturated >= self.config.clip_min_samples and not any(
                    i.check == "clipping" for i in issues):
                issues.append(Issue("clipping", stream.saturated,
                                    self.config.clip_min_samples, "samples at full scale"))
            missing += stream.missing_frames
            stream.non_finite = stream.saturated = stream.missing_frames = 0
        rate = meta.observed_rate_hz or (stream_rate_hz(stream, self.config) if stream else 0.0)
        if rate > 0 and meta.sample_rate_hz > 0:
            off = abs(rate / meta.sample_rate_hz - 1.0)
            if off > self.config.rate_tolerance:
                issues.append(Issue("rate_drift", off, self.config.rate_tolerance,
                                    f"fraction (observed {rate:.6g} Hz)"))
        if missing > 0:
            issues.append(Issue("seq_gaps", missing, 0, "frames"))
        if len(issues) > 1:
            issues.sort(key=lambda i: CHECKS.index(i.check))
        return issues

    def _transition(self, stream: StreamState, meta: WindowMeta,
                    issues: list[Issue]) -> list[dict[str, Any]]:
        """Hysteresis: bad after ``bad_after`` windows with issues, ok after ``good_after``."""
        cfg = self.config
        flipped = bool(issues) != stream.bad
        stream.run = stream.run + 1 if flipped else 0
        if stream.bad:
            stream.bad_windows += bool(issues)
        if issues:
            stream.last_issues = tuple(issues)
        if not flipped or stream.run < (cfg.good_after if stream.bad else cfg.bad_after):
            return []
        stream.bad, stream.run = not stream.bad, 0
        detail: dict[str, Any] = {
            "device_id": meta.device_id, "channel": int(meta.channel),
            "state": "bad" if stream.bad else "ok", "window_ts": json_number(meta.at_s),
            "issues": [i.to_json() for i in stream.last_issues],
        }
        if stream.bad:
            stream.since_s, stream.bad_windows = meta.at_s, cfg.bad_after
        else:
            detail.update(bad_since_ts=json_number(stream.since_s), bad_windows=stream.bad_windows)
        log.info("channel %s/%s data quality %s: %s", meta.device_id, meta.channel,
                 detail["state"], ", ".join(i.check for i in stream.last_issues))
        self.counters["dq_events"] += 1
        return [{"type": "data_quality", "detail": detail}]

    def states(self) -> dict[str, str]:
        """``{"device/channel": "ok" | "bad"}`` for every stream seen."""
        return {f"{d}/{c}": "bad" if s.bad else "ok" for (d, c), s in list(self._streams.items())}


def _as_rows(windows: npt.ArrayLike, n: int) -> npt.NDArray[np.floating[Any]]:
    """``[n, w]`` float32 or float64 (no copy of float32 windows); other types as float64."""
    x = np.asarray(windows)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    return x.reshape(n, -1) if x.size else np.zeros((n, 0))
