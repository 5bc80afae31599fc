"""Durable small-file writes (agent state, provisioning, the gateway's site CA).

``atomic_write(path, data)`` writes to a temporary name beside ``path``, fsyncs it, renames
it over ``path`` and fsyncs the directory: after a crash or a power cut the file is either
the old one or the new one, never a torn mix, and a completed write survives.
"""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *,
                 dir_mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably; the file gets ``mode``, and a
    missing parent directory is created with ``dir_mode`` (default 0o755, or 0o700 when
    the file is private)."""
    if dir_mode is None:
        dir_mode = 0o755 if mode & 0o044 else 0o700
    path.parent.mkdir(mode=dir_mode, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)     # a full disk must not leave a temp file behind
        raise
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    """fsync a directory, so a rename or a new file in it survives a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
