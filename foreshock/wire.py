"""Sensor frame codec. The normative spec is ``docs/protocol.md``; this module follows it.

A frame carries one block of consecutive samples of one channel of one sensor node::

    offset size  field
    0      2     magic            b"FS"
    2      1     version          1
    3      1     sample_format    0 = int16 scaled, 1 = float32
    4      1     channel          0..255
    5      1     device_id_len    1..32
    6      4     seq              u32, per (device, channel), wraps at 2**32
    10     8     timestamp_us     u64, time of the first sample, µs since the Unix epoch
    18     4     sample_rate_hz   f32, > 0 and <= 200 000
    22     4     rpm              f32, shaft speed measured by the node; 0 = unknown
    26     4     scale            f32, physical units (g) per LSB for int16; 1.0 for float32
    30     2     count            u16, samples in this frame, 1..MAX_SAMPLES
    32     n     device_id        ASCII [A-Za-z0-9_.-]
    32+n   ...   samples          count x int16 or count x float32
    end-4  4     crc32            of every byte before it (zlib.crc32)

All integers and floats are little-endian.
"""

from __future__ import annotations

import enum
import re
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from foreshock.errors import FrameError

MAGIC = b"FS"
VERSION = 1
MAX_SAMPLES = 8192
MAX_DEVICE_ID = 32
MAX_SAMPLE_RATE_HZ = 200_000.0
HEADER = struct.Struct("<2sBBBBIQfffH")
HEADER_SIZE = HEADER.size  # 32
CRC_SIZE = 4
MAX_FRAME_BYTES = HEADER_SIZE + MAX_DEVICE_ID + 4 * MAX_SAMPLES + CRC_SIZE
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")  # as foreshock.topics.ID_RE


class SampleFormat(enum.IntEnum):
    """How samples are packed on the wire."""

    INT16 = 0
    FLOAT32 = 1


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame. ``raw`` holds the samples as sent (int16 or float32).

    ``samples`` gives them in physical units (g) as float32.
    """

    device_id: str
    channel: int
    seq: int
    timestamp_us: int
    sample_rate_hz: float
    raw: npt.NDArray[np.int16] | npt.NDArray[np.float32]
    sample_format: SampleFormat = SampleFormat.FLOAT32
    scale: float = 1.0
    rpm: float = 0.0
    _samples: npt.NDArray[np.float32] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not DEVICE_ID_RE.match(self.device_id):
            raise FrameError(f"device_id {self.device_id!r} must match {DEVICE_ID_RE.pattern}")
        if not 0 <= self.channel <= 255:
            raise FrameError(f"channel {self.channel} outside 0..255")
        if not 0 <= self.seq < 2**32:
            raise FrameError(f"seq {self.seq} outside 0..2**32-1")
        if not 0 <= self.timestamp_us < 2**64:
            raise FrameError(f"timestamp_us {self.timestamp_us} outside 0..2**64-1")
        # The wire carries these as float32: validate and keep what the wire can carry.
        with np.errstate(over="ignore", under="ignore"):
            for name in ("sample_rate_hz", "rpm", "scale"):
                value = getattr(self, name)
                if not isinstance(value, (int, float, np.floating, np.integer)):
                    raise FrameError(f"{name} {value!r} must be a number")
                object.__setattr__(self, name, float(np.float32(value)))
        if not (0.0 < self.sample_rate_hz <= MAX_SAMPLE_RATE_HZ):
            raise FrameError(
                f"sample_rate_hz {self.sample_rate_hz!r} outside (0, {MAX_SAMPLE_RATE_HZ:g}]"
            )
        if not (np.isfinite(self.rpm) and 0.0 <= self.rpm < 1e6):
            raise FrameError(f"rpm {self.rpm!r} must be finite and in [0, 1e6)")
        if not (np.isfinite(self.scale) and np.float32(self.scale) > 0):
            raise FrameError(f"scale {self.scale!r} must be finite and > 0")
        fmt = SampleFormat(self.sample_format)
        want = np.int16 if fmt is SampleFormat.INT16 else np.float32
        raw = np.asarray(self.raw)
        if raw.ndim != 1 or raw.dtype != want:
            raise FrameError(f"raw must be a 1-D {np.dtype(want).name} array for {fmt.name}")
        if not 1 <= raw.size <= MAX_SAMPLES:
            raise FrameError(f"count {raw.size} outside 1..{MAX_SAMPLES}")
        object.__setattr__(self, "sample_format", fmt)
        object.__setattr__(self, "raw", raw)

    @classmethod
    def from_samples(
        cls,
        device_id: str,
        channel: int,
        seq: int,
        timestamp_us: int,
        sample_rate_hz: float,
        samples: npt.ArrayLike,
        *,
        sample_format: SampleFormat = SampleFormat.FLOAT32,
        scale: float = 1.0,
        rpm: float = 0.0,
    ) -> Frame:
        """Build a frame from physical values, quantising to int16 with ``scale`` if asked."""
        values = np.asarray(samples, dtype=np.float32)
        if sample_format is SampleFormat.INT16:
            q = np.clip(np.round(values / np.float32(scale)), -32768, 32767)
            raw: npt.NDArray[np.int16] | npt.NDArray[np.float32] = q.astype(np.int16)
        else:
            raw = values
        return cls(device_id, channel, seq, timestamp_us, sample_rate_hz, raw,
                   sample_format, float(np.float32(scale)), float(np.float32(rpm)))

    @property
    def count(self) -> int:
        return int(self.raw.size)

    @property
    def samples(self) -> npt.NDArray[np.float32]:
        """Samples in physical units (g), float32."""
        if self._samples is None:
            if self.sample_format is SampleFormat.INT16:
                vals = self.raw.astype(np.float32) * np.float32(self.scale)
            else:
                vals = self.raw.astype(np.float32, copy=False)
            object.__setattr__(self, "_samples", vals)
        assert self._samples is not None
        return self._samples

    @property
    def duration_s(self) -> float:
        return self.count / self.sample_rate_hz

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (
            self.device_id == other.device_id
            and self.channel == other.channel
            and self.seq == other.seq
            and self.timestamp_us == other.timestamp_us
            and np.float32(self.sample_rate_hz) == np.float32(other.sample_rate_hz)
            and np.float32(self.rpm) == np.float32(other.rpm)
            and np.float32(self.scale) == np.float32(other.scale)
            and self.sample_format == other.sample_format
            and self.raw.dtype == other.raw.dtype
            and np.array_equal(self.raw.view(np.uint8), other.raw.view(np.uint8))
        )

    __hash__ = None  # type: ignore[assignment]


def encode(frame: Frame) -> bytes:
    """Encode ``frame`` to bytes as specified in ``docs/protocol.md``."""
    dev = frame.device_id.encode("ascii")
    header = HEADER.pack(
        MAGIC, VERSION, int(frame.sample_format), frame.channel, len(dev), frame.seq,
        frame.timestamp_us, frame.sample_rate_hz, frame.rpm, frame.scale, frame.count,
    )
    body = header + dev + frame.raw.astype(frame.raw.dtype.newbyteorder("<")).tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


def decode(data: bytes | bytearray | memoryview) -> Frame:
    """Decode one frame. Raises :class:`FrameError` for anything that is not a valid frame."""
    buf = bytes(data)
    if len(buf) < HEADER_SIZE + 1 + 2 + CRC_SIZE:
        raise FrameError(f"frame too short: {len(buf)} bytes")
    if len(buf) > MAX_FRAME_BYTES:
        raise FrameError(f"frame too long: {len(buf)} bytes > {MAX_FRAME_BYTES}")
    (magic, version, fmt, channel, id_len, seq, ts_us, rate, rpm, scale,
     count) = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise FrameError(f"unsupported frame version {version}, this decoder reads {VERSION}")
    if fmt not in (0, 1):
        raise FrameError(f"unknown sample_format {fmt}")
    if not 1 <= id_len <= MAX_DEVICE_ID:
        raise FrameError(f"device_id_len {id_len} outside 1..{MAX_DEVICE_ID}")
    width = 2 if fmt == 0 else 4
    expected = HEADER_SIZE + id_len + width * count + CRC_SIZE
    if len(buf) != expected:
        raise FrameError(f"length {len(buf)} does not match header (expected {expected})")
    (crc,) = struct.unpack_from("<I", buf, len(buf) - CRC_SIZE)
    if zlib.crc32(buf[:-CRC_SIZE]) != crc:
        raise FrameError("CRC32 mismatch")
    try:
        device_id = buf[HEADER_SIZE:HEADER_SIZE + id_len].decode("ascii")
    except UnicodeDecodeError as exc:
        raise FrameError("device_id is not ASCII") from exc
    dtype = np.dtype("<i2") if fmt == 0 else np.dtype("<f4")
    wire_raw = np.frombuffer(buf, dtype=dtype, count=count, offset=HEADER_SIZE + id_len)
    raw: npt.NDArray[np.int16] | npt.NDArray[np.float32] = (
        wire_raw.astype(np.int16) if fmt == 0 else wire_raw.astype(np.float32))
    # Non-finite float32 samples are legal on the wire (a broken ADC); the monitor flags them.
    return Frame(device_id, channel, seq, ts_us, float(rate), raw, SampleFormat(fmt),
                 float(scale), float(rpm))


class StreamDecoder:
    """Finds frames in a byte stream (serial, file), resynchronising on the magic bytes.

    ``push(data)`` returns the frames completed by ``data``; garbage and frames that fail
    to decode are skipped and counted in ``dropped_bytes`` and ``bad_frames``.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.bad_frames = 0
        self.dropped_bytes = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes held waiting for the rest of a frame (a truncated tail at end of stream)."""
        return len(self._buf)

    def push(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while True:
            start = self._buf.find(MAGIC)
            if start < 0:
                keep = 1 if self._buf.endswith(MAGIC[:1]) else 0
                self.dropped_bytes += len(self._buf) - keep
                del self._buf[: len(self._buf) - keep]
                return frames
            if start:
                self.dropped_bytes += start
                del self._buf[:start]
            if len(self._buf) < HEADER_SIZE:
                return frames
            fmt, id_len, count = self._buf[3], self._buf[5], HEADER.unpack_from(self._buf)[-1]
            width = 2 if fmt == 0 else 4
            size = HEADER_SIZE + id_len + width * count + CRC_SIZE
            if fmt not in (0, 1) or not 1 <= id_len <= MAX_DEVICE_ID or size > MAX_FRAME_BYTES:
                self._skip_one()
                continue
            if len(self._buf) < size:
                return frames
            try:
                frames.append(decode(bytes(self._buf[:size])))
            except FrameError:
                self._skip_one()
                continue
            del self._buf[:size]

    def _skip_one(self) -> None:
        self.bad_frames += 1
        self.dropped_bytes += 1
        del self._buf[:1]
