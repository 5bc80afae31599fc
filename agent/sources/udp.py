"""``UdpSource``: one frame per UDP datagram, from any number of sensor nodes."""

from __future__ import annotations

import logging
import select
import socket

from agent.sources import decode_counted
from foreshock.errors import ConfigError
from foreshock.wire import MAX_FRAME_BYTES, Frame

log = logging.getLogger(__name__)


class UdpSource:
    """Listens on ``host:port`` (port 0 picks a free one; see ``address``).

    A datagram that is not exactly one valid frame is dropped and counted.
    """

    def __init__(self, host: str = "0.0.0.0", port: int = 0, batch: int = 256,
                 recv_buffer_bytes: int = 4 * 1024 * 1024) -> None:
        if not 0 <= port < 65536:
            raise ConfigError(f"source port {port} is invalid; use 0..65535")
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer_bytes)
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise ConfigError(f"cannot listen for UDP on {host}:{port}: {exc}") from None
        self._sock.setblocking(False)
        self._batch = batch
        self._closed = False
        self.stats: dict[str, int] = {"frames": 0, "bad_frames": 0, "dropped_bytes": 0}

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def read(self, timeout_s: float) -> list[Frame]:
        if self._closed:
            return []
        ready, _, _ = select.select([self._sock], [], [], max(0.0, timeout_s))
        frames: list[Frame] = []
        while ready and len(frames) < self._batch:
            try:
                data = self._sock.recv(MAX_FRAME_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.debug("UDP receive failed: %s", exc)
                break
            decode_counted(data, frames, self.stats)
        self.stats["frames"] += len(frames)
        return frames

    @property
    def exhausted(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()
