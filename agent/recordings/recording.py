"""The :class:`Recording` value: vibration in g as contiguous segments, with its rate,
channels and what the source states (shaft speed, fault label, bearing), and its frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from foreshock.errors import DataError
from foreshock.wire import MAX_SAMPLE_RATE_HZ, Frame

FRAME_SAMPLES = 1024
EPOCH_US = 1_700_000_000_000_000


@dataclass(frozen=True)
class Recording:
    """Vibration in g: ``data`` float32[segments, samples, channels] at ``sample_rate_hz``.

    ``t_s`` is each segment's start time; ``rpm`` 0 means unknown; ``label`` is a fault
    label when the source states one (CWRU file names, simulator scenarios); ``bearing`` a
    catalogue bearing name when the source implies one.
    """

    name: str
    data: npt.NDArray[np.float32]
    t_s: npt.NDArray[np.float64]
    sample_rate_hz: float
    channels: tuple[str, ...]
    rpm: float = 0.0
    label: str | None = None
    bearing: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.ndim != 3 or self.data.shape[2] != len(self.channels):
            raise DataError(f"{self.name}: data shape {self.data.shape} does not match "
                            f"channels {self.channels}")
        if self.data.size == 0 or self.t_s.shape != (self.data.shape[0],):
            raise DataError(f"{self.name}: no samples, or segment starts do not match "
                            f"the {self.data.shape[0]} segments")
        if not np.isfinite(self.sample_rate_hz) or not (
                100 <= self.sample_rate_hz <= MAX_SAMPLE_RATE_HZ):
            raise DataError(f"{self.name}: sample rate {self.sample_rate_hz:g} Hz is absurd "
                            f"(allowed 100 Hz to {MAX_SAMPLE_RATE_HZ:g} Hz)")
        if not np.isfinite(self.rpm) or not 0 <= self.rpm <= 100_000:
            raise DataError(f"{self.name}: rpm {self.rpm:g} is absurd (allowed 0 to 100000)")

    @property
    def duration_s(self) -> float:
        return float(self.data.shape[0] * self.data.shape[1] / self.sample_rate_hz)

    def channel_index(self, name: str | None) -> int:
        """Index of a channel by name (case-insensitive); ``None`` is the first."""
        if name is None:
            return 0
        for i, c in enumerate(self.channels):
            if c.lower() == name.lower():
                return i
        raise DataError(f"{self.name}: no channel {name!r}",
                        hint=f"channels are {', '.join(self.channels)}")

    def channel(self, name: str | None = None) -> npt.NDArray[np.float32]:
        """float32[segments, samples] of one channel (default: the first)."""
        return self.data[:, :, self.channel_index(name)]

    def override(self, *, channel: str | None = None, sample_rate_hz: float | None = None,
                 rpm: float | None = None) -> Recording:
        """Only ``channel`` (when given), with the rate and shaft speed overridden."""
        data, channels = self.data, self.channels
        if channel is not None:
            i = self.channel_index(channel)
            data, channels = data[:, :, i:i + 1], (channels[i],)
        return replace(self, data=data, channels=channels,
                       sample_rate_hz=float(sample_rate_hz or self.sample_rate_hz),
                       rpm=float(self.rpm if rpm is None else rpm))

    def frames(self, channel: str | None = None, device_id: str = "replay") -> list[Frame]:
        """The chosen channel as frames (channel number = its index in the recording)."""
        col = self.channel_index(channel)
        out: list[Frame] = []
        seq = 0
        for seg, start in zip(self.data, self.t_s, strict=True):
            x = seg[:, col]
            for off in range(0, x.size, FRAME_SAMPLES):
                ts_us = EPOCH_US + round((start + off / self.sample_rate_hz) * 1e6)
                out.append(Frame.from_samples(device_id, col, seq % 2**32, ts_us,
                                              self.sample_rate_hz, x[off:off + FRAME_SAMPLES],
                                              rpm=self.rpm))
                seq += 1
            seq += 1  # a deliberate gap: windows never straddle two segments
        return out

