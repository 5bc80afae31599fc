"""``SerialSource``: frames from a serial line (a UART, a USB-serial adapter, or a
pseudo-terminal), read through pyserial and resynchronised by ``StreamDecoder``.

A line that goes away (cable pulled, adapter reset, the other end of a pty closed) is
counted in ``stats["disconnects"]`` and reopened on a later ``read``; the source is never
exhausted until closed.
"""

from __future__ import annotations

import logging
import time

import serial

from foreshock.errors import ConfigError
from foreshock.wire import Frame, StreamDecoder

log = logging.getLogger(__name__)

REOPEN_INTERVAL_S = 1.0


class SerialSource:
    """Reads ``port`` (e.g. ``/dev/ttyUSB0`` or a pty path) at ``baudrate``."""

    def __init__(self, port: str, baudrate: int = 921_600, read_bytes: int = 65_536) -> None:
        if not port:
            raise ConfigError("serial source needs a port, e.g. port = \"/dev/ttyUSB0\"")
        self.port = port
        self.baudrate = baudrate
        self._read_bytes = read_bytes
        self._decoder = StreamDecoder()
        self._closed = False
        self._next_open = 0.0
        self.stats: dict[str, int] = {"frames": 0, "bad_frames": 0, "dropped_bytes": 0,
                                      "disconnects": 0}
        self._line: serial.Serial | None = None
        try:
            self._line = serial.Serial(port, baudrate, timeout=0)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ConfigError(f"serial port {port} cannot be opened: {exc}") from None

    def read(self, timeout_s: float) -> list[Frame]:
        if self._closed:
            return []
        line = self._line or self._reopen()
        if line is None:
            time.sleep(max(0.0, min(timeout_s, self._next_open - time.monotonic())))
            return []
        try:
            line.timeout = max(0.0, timeout_s)
            data = line.read(1)
            if data:
                line.timeout = 0
                data += line.read(max(0, min(line.in_waiting, self._read_bytes)))
        except (serial.SerialException, OSError) as exc:
            self._lost(exc)
            return []
        frames = self._decoder.push(data) if data else []
        self.stats["frames"] += len(frames)
        self.stats["bad_frames"] = self._decoder.bad_frames
        self.stats["dropped_bytes"] = self._decoder.dropped_bytes
        return frames

    def _lost(self, exc: Exception) -> None:
        log.warning("serial port %s lost: %s", self.port, exc)
        self.stats["disconnects"] += 1
        if self._line is not None:
            self._line.close()
        self._line = None
        self._next_open = time.monotonic() + REOPEN_INTERVAL_S

    def _reopen(self) -> serial.Serial | None:
        if time.monotonic() < self._next_open:
            return None
        try:
            self._line = serial.Serial(self.port, self.baudrate, timeout=0)
            log.info("serial port %s reopened", self.port)
        except (serial.SerialException, OSError) as exc:
            log.debug("serial port %s still unavailable: %s", self.port, exc)
            self._next_open = time.monotonic() + REOPEN_INTERVAL_S
        return self._line

    @property
    def exhausted(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._line is not None:
                self._line.close()
            self._line = None
