"""``FileSource``: frames from a recording, a plain concatenation of frames (docs/protocol.md).

The file is read in chunks through :class:`foreshock.wire.StreamDecoder`, so garbage and
damaged frames are skipped and counted, and a truncated last frame is counted as dropped.
"""

from __future__ import annotations

import logging
from pathlib import Path

from foreshock.errors import DataError
from foreshock.wire import Frame, StreamDecoder

log = logging.getLogger(__name__)


class FileSource:
    """Replays a recorded frame stream as fast as the reader asks, in file order."""

    def __init__(self, path: str | Path, chunk_bytes: int = 65_536, batch: int = 256) -> None:
        self.path = Path(path)
        try:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise DataError(f"recording {self.path} cannot be read: {exc}") from None
        self._chunk_bytes = chunk_bytes
        self._batch = batch
        self._decoder = StreamDecoder()
        self._pending: list[Frame] = []
        self._eof = False
        self.stats: dict[str, int] = {"frames": 0, "bad_frames": 0, "dropped_bytes": 0}

    def read(self, timeout_s: float) -> list[Frame]:
        while len(self._pending) < self._batch and not self._eof:
            chunk = self._fh.read(self._chunk_bytes)
            if not chunk:
                self._finish()
                break
            self._pending.extend(self._decoder.push(chunk))
            self._sync_stats()
        out, self._pending = self._pending[: self._batch], self._pending[self._batch:]
        self.stats["frames"] += len(out)
        return out

    def _finish(self) -> None:
        self._eof = True
        leftover = self._decoder.pending_bytes  # a truncated last frame
        self._sync_stats()
        self.stats["dropped_bytes"] += leftover
        self._fh.close()

    def _sync_stats(self) -> None:
        self.stats["bad_frames"] = self._decoder.bad_frames
        self.stats["dropped_bytes"] = self._decoder.dropped_bytes

    @property
    def exhausted(self) -> bool:
        return self._eof and not self._pending

    def close(self) -> None:
        self._eof = True
        self._pending = []
        self._fh.close()
