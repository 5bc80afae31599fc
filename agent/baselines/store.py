"""Files of the baselines: the append-only audit log and the bank's atomic save.

``baselines.json`` (the bank, written with :func:`foreshock.files.atomic_write`: temp file,
fsync, rename, directory fsync) and ``baselines.audit.jsonl`` (one fsynced JSON line per
change) in the agent's state dir; reference windows are stored as base64 of little-endian
float32.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from foreshock.errors import ConfigError

log = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float32]
BANK_FILE = "baselines.json"
AUDIT_FILE = "baselines.audit.jsonl"


class AuditLog:
    """Append-only JSON lines, fsynced per record (``path`` None: kept in memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return list(self.records)
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("audit log %s: skipping a torn line", self.path)
        return out


def pack_rows(rows: FloatArray) -> str:
    """Rows as base64 of little-endian float32 (exact, a quarter of the JSON decimal size)."""
    return base64.b64encode(np.ascontiguousarray(rows, "<f4").tobytes()).decode("ascii")


def need_dir(path: Path | None) -> Path:
    if path is None:
        raise ConfigError("no state directory for the baselines")
    return path
