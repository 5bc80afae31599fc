"""Sensor sources. Every source yields decoded :class:`foreshock.wire.Frame` objects.

Implementations name their medium: ``SerialSource`` (pyserial), ``UdpSource``,
``MqttSource`` (raw frame topic), ``FileSource`` (a recorded frame stream) and the in-memory
``ReplaySource``. The agent never imports ``firmware_sim``: the demo plugs a simulated node in
through this same protocol.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from foreshock.errors import FrameError
from foreshock.wire import Frame, decode


@runtime_checkable
class Source(Protocol):
    """Where frames come from.

    ``read(timeout_s)`` returns the frames that arrived (possibly none) and waits at most
    ``timeout_s`` for the first one. ``exhausted`` becomes true when a finite source has
    nothing more to give. ``stats`` counts what the source dropped (``bad_frames``,
    ``dropped_bytes``) so health messages can report it. ``close()`` is idempotent.
    """

    stats: dict[str, int]

    def read(self, timeout_s: float) -> list[Frame]: ...

    @property
    def exhausted(self) -> bool: ...

    def close(self) -> None: ...


def decode_counted(data: bytes, frames: list[Frame], stats: dict[str, int]) -> None:
    """Decode one datagram or message into ``frames``; a bad one is dropped and counted in
    ``stats`` (``bad_frames``, ``dropped_bytes``)."""
    try:
        frames.append(decode(data))
    except FrameError:
        stats["bad_frames"] += 1
        stats["dropped_bytes"] += len(data)


class ReplaySource:
    """Frames from memory, in the given order: for tests, replay and the demo."""

    def __init__(self, frames: Iterable[Frame], batch: int = 64) -> None:
        self._frames = list(frames)
        self._pos = 0
        self._batch = batch
        self.stats: dict[str, int] = {"bad_frames": 0, "dropped_bytes": 0}

    def read(self, timeout_s: float) -> list[Frame]:
        out = self._frames[self._pos : self._pos + self._batch]
        self._pos += len(out)
        return out

    @property
    def exhausted(self) -> bool:
        return self._pos >= len(self._frames)

    def close(self) -> None:
        self._pos = len(self._frames)
