"""foreshock.files.atomic_write on real files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from foreshock.files import atomic_write


def test_atomic_write_replaces_whole_file_with_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state.json"
    atomic_write(path, b"old")
    atomic_write(path, b"x" * 200_000, mode=0o600)
    assert path.read_bytes() == b"x" * 200_000
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(path.parent)) == ["state.json"]


def test_atomic_write_that_fails_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    atomic_write(path, b"kept")
    with pytest.raises(TypeError):
        atomic_write(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"kept"
    assert os.listdir(tmp_path) == ["state.json"]


def test_atomic_write_creates_private_parents_for_private_files(tmp_path: Path) -> None:
    atomic_write(tmp_path / "ca" / "key.pem", b"k", 0o600)
    atomic_write(tmp_path / "pub" / "cert.pem", b"c", 0o644, dir_mode=0o700)
    atomic_write(tmp_path / "open" / "state.json", b"s")
    modes = {d: stat.S_IMODE((tmp_path / d).stat().st_mode) for d in ("ca", "pub", "open")}
    assert modes["ca"] == 0o700 and modes["pub"] == 0o700
    assert modes["open"] & 0o755 == modes["open"] and modes["open"] & 0o700 == 0o700
