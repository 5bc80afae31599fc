"""Bad recordings given to ``foreshock agent replay``: random bytes (and damaged real
headers) in .mat, .npz, .csv and .wav files end with exit 2 and one error line (plus an
optional hint) besides the CLI's log lines, never a traceback."""

from __future__ import annotations

import io
import re
import tempfile
import wave
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from foreshock.cli import main


def _wav_header() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(12800)
        w.writeframes(b"\x00\x01" * 64)
    return buf.getvalue()


def _npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.arange(10.0))
    return buf.getvalue()


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x.npy", b"\x93NUMPY garbage")
    return buf.getvalue()


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")  # the CLI's log format
HEADERS = {".mat": b"MATLAB 5.0 MAT-file, Platform: GLNXA64" + b" " * 86 + b"\x00\x01IM",
           ".npz": _npz_bytes(), ".csv": b"time,accel\n0.0,0.1\n", ".wav": _wav_header()}


@st.composite
def damaged(draw: st.DrawFn, suffix: str) -> bytes:
    """Random bytes, or a real header truncated and followed by random bytes."""
    tail = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        return tail
    head = HEADERS[suffix] if draw(st.booleans()) else _zip_bytes()
    return head[:draw(st.integers(0, len(head)))] + tail


def replay(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(["agent", "replay", str(path)])
    return int(exc.value.code or 0), capsys.readouterr().err


def check(suffix: str, raw: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"rec{suffix}"
        path.write_bytes(raw)
        code, err = replay(path, capsys)
    if code == 0:  # the bytes happened to be a readable recording
        return
    lines = [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert "Traceback" not in err
    assert code == 2, err
    assert lines and lines[0].startswith("error: ") and len(lines) <= 2, err
    assert len(lines) == 1 or lines[1].startswith("hint: "), err


FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(raw=damaged(".wav"))
@example(raw=b"RIFF\xa4\x00\x00\x00WAVE\x00\x00\x00\x00\x00\x00\x00\x01")
def test_damaged_wav_exits_2_with_one_line(raw: bytes,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    check(".wav", raw, capsys)


@FUZZ
@given(raw=damaged(".mat"))
@example(raw=b"")
def test_damaged_mat_exits_2_with_one_line(raw: bytes,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    check(".mat", raw, capsys)


@FUZZ
@given(raw=damaged(".npz"))
@example(raw=b"PK\x03\x04")
def test_damaged_npz_exits_2_with_one_line(raw: bytes,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    check(".npz", raw, capsys)


@FUZZ
@given(raw=damaged(".csv"))
@example(raw=b"time,accel\n")
def test_damaged_csv_exits_2_with_one_line(raw: bytes,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    check(".csv", raw, capsys)
