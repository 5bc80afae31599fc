"""The file readers behind :func:`load`, one per format (the list is in
:mod:`agent.recordings`), and :func:`load_frames` for recorded frame streams."""

from __future__ import annotations

import re
import wave
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.recordings.recording import Recording
from foreshock.errors import DataError
from foreshock.wire import Frame, StreamDecoder

CWRU_48K_RECORDS = frozenset(range(97, 101)) | frozenset(range(109, 113)) | frozenset(
    range(122, 126)) | frozenset(range(135, 139)) | frozenset(range(174, 178)) | frozenset(
    range(189, 193)) | frozenset(range(201, 205)) | frozenset(range(213, 217)) | frozenset(
    range(226, 230)) | frozenset(range(238, 242)) | frozenset(range(250, 254)) | frozenset(
    range(262, 266)) | frozenset(range(3001, 3009))
CWRU_FAULTS = {"IR": "inner_race", "OR": "outer_race", "B": "ball"}
FEMTO_RPM = {"1": 1800.0, "2": 1650.0, "3": 1500.0}
FRAME_SUFFIXES = (".fsf", ".frames")
SUPPORTED = ("supported: .mat (CWRU, MFPT), .npz (FEMTO), a FEMTO acc_*.csv folder, .wav, "
             ".csv, .fsf/.frames (frame stream)")
# What the readers' libraries raise on damaged bytes; load() turns them into one DataError.
READ_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, EOFError,
               NotImplementedError, RuntimeError, wave.Error, zipfile.BadZipFile)


def load(path: str | Path, *, channel: str | None = None, sample_rate_hz: float | None = None,
         rpm: float | None = None) -> Recording:
    """Read any supported recording file or FEMTO folder; ``channel`` keeps that one
    channel; ``sample_rate_hz`` and ``rpm`` override the file."""
    p = Path(path)
    if str(path).startswith("sim:"):
        raise DataError(f"{path}: simulator scenarios are not files",
                        hint="record one with `foreshock sim run --transport file --out "
                             "rec.fsf` and give rec.fsf")
    if not p.exists():
        raise DataError(f"recording {p} does not exist")
    try:
        rec = _read(p, sample_rate_hz)
    except READ_ERRORS as exc:
        raise DataError(f"{p}: cannot read: {exc}") from None
    return rec.override(channel=channel, sample_rate_hz=sample_rate_hz, rpm=rpm)


def _read(p: Path, sample_rate_hz: float | None) -> Recording:
    suffix = p.suffix.lower()
    if p.is_dir():
        return load_femto_csv_dir(p)
    if suffix == ".mat":
        return load_mat(p, sample_rate_hz=sample_rate_hz)
    if suffix == ".npz":
        return load_femto_npz(p)
    if suffix == ".wav":
        return load_wav(p)
    if suffix in (".csv", ".txt"):
        return load_csv(p, sample_rate_hz=sample_rate_hz)
    hint = SUPPORTED if suffix not in FRAME_SUFFIXES else "read frame files with load_frames()"
    raise DataError(f"{p}: unknown recording format {p.suffix!r}", hint=hint)


def load_frames(path: Path | str) -> list[Frame]:
    """A recorded frame stream; undecodable bytes are skipped (as a live source would)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    frames = StreamDecoder().push(data)
    if not frames:
        raise DataError(f"{path}: no valid frames found")
    return frames


def _continuous(name: str, columns: list[npt.NDArray[Any]], channels: list[str],
                sample_rate_hz: float, **kw: Any) -> Recording:
    data = np.stack([np.asarray(c, dtype=np.float32).ravel() for c in columns], axis=-1)
    return Recording(name, data[None], np.zeros(1), float(sample_rate_hz), tuple(channels),
                     **kw)


def cwru_label(name: str) -> str | None:
    """Fault label from a CWRU file name (``..._IR007_0_105.mat`` -> inner_race)."""
    m = re.search(r"_(IR|OR|B)\d{3}", name)
    if m:
        return CWRU_FAULTS[m[1]]
    return "normal" if name.lower().startswith("normal") else None


def cwru_sample_rate_hz(name: str, record: int | None) -> float:
    if re.search(r"(^|[_\W])48k", name, re.IGNORECASE):
        return 48_000.0
    if re.search(r"(^|[_\W])12k", name, re.IGNORECASE):
        return 12_000.0
    if record is not None and record in CWRU_48K_RECORDS:
        return 48_000.0
    return 12_000.0


def load_mat(path: Path, *, sample_rate_hz: float | None = None) -> Recording:
    """CWRU or MFPT-style MATLAB v5 file."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=False)
    except (*READ_ERRORS, scipy.io.matlab.MatReadError) as exc:
        raise DataError(f"{path}: not a readable MATLAB v5 file: {exc}") from None
    names = [k for k in mat if not k.startswith("__")]
    series = sorted(k for k in names if re.fullmatch(r"X\d+_(DE|FE|BA)_time", k))
    if series:
        return _cwru(path, mat, series, sample_rate_hz)
    if "bearing" in mat:
        return _mfpt(path, mat["bearing"])
    raise DataError(f"{path}: no CWRU X<rec>_DE_time or MFPT 'bearing' variable",
                    hint=f"variables are {', '.join(names) or 'none'}")


def _cwru(path: Path, mat: dict[str, Any], series: list[str],
          sample_rate_hz: float | None) -> Recording:
    record = int(re.findall(r"\d+", series[0])[0])
    order = {"DE": 0, "FE": 1, "BA": 2}
    series.sort(key=lambda k: order[k.split("_")[1]])
    n = min(mat[k].size for k in series)
    rpm_keys = [k for k in mat if re.fullmatch(r"X\d+RPM", k)]
    rpm = float(np.ravel(mat[rpm_keys[0]])[0]) if rpm_keys else 0.0
    rate = sample_rate_hz or cwru_sample_rate_hz(path.name, record)
    return _continuous(path.name, [np.ravel(mat[k])[:n] for k in series],
                       [k.split("_")[1] for k in series], rate, rpm=rpm,
                       label=cwru_label(path.name), bearing="SKF-6205",
                       meta={"record": record, "format": "cwru"})


def _mfpt(path: Path, struct: Any) -> Recording:
    try:
        b = np.ravel(struct)[0]
        gs = np.asarray(b.gs, dtype=np.float32).ravel()
        rate = float(np.ravel(b.sr)[0])
        shaft_hz = float(np.ravel(b.rate)[0]) if hasattr(b, "rate") else 0.0
    except (AttributeError, ValueError, IndexError, TypeError) as exc:
        raise DataError(f"{path}: MFPT 'bearing' struct lacks gs/sr: {exc}") from None
    return _continuous(path.name, [gs], ["gs"], rate, rpm=shaft_hz * 60.0,
                       meta={"format": "mfpt"})


def _femto_rpm(name: str) -> float:
    m = re.search(r"Bearing(\d)_\d+", name)
    return FEMTO_RPM.get(m[1], 0.0) if m else 0.0


def load_femto_npz(path: Path) -> Recording:
    try:
        with np.load(path, allow_pickle=False) as z:
            acc = z["acc_mg"]
            t_s = np.asarray(z["t_s"], dtype=np.float64)
            rate = float(z["sample_rate_hz"])
            name = str(z["source"]) if "source" in z.files else path.stem
    except (*READ_ERRORS, AttributeError) as exc:
        raise DataError(f"{path}: not a FEMTO .npz (acc_mg, t_s, sample_rate_hz): {exc}") from None
    if acc.ndim != 3 or acc.shape[0] != t_s.size:
        raise DataError(f"{path}: acc_mg shape {acc.shape} does not match t_s {t_s.shape}")
    data = acc.astype(np.float32) / np.float32(1000.0)
    return Recording(name, data, t_s, rate, ("horizontal", "vertical")[: acc.shape[2]],
                     rpm=_femto_rpm(name), bearing="FEMTO", meta={"format": "femto"})


def load_femto_csv_dir(folder: Path, sample_rate_hz: float = 25_600.0) -> Recording:
    """A FEMTO bearing's folder of ``acc_NNNNN.csv`` snapshots (in name order)."""
    files = sorted(folder.glob("acc_*.csv"))
    if not files:
        raise DataError(f"{folder}: no acc_NNNNN.csv snapshots in this folder", hint=SUPPORTED)
    snaps, starts = [], []
    for f in files:
        lines = f.read_text().splitlines()
        sep = ";" if lines and ";" in lines[0] else ","
        try:
            arr = np.loadtxt(lines, delimiter=sep, dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise DataError(f"{f}: not a FEMTO snapshot: {exc}") from None
        if arr.shape[0] == 0 or arr.shape[1] < 6:
            raise DataError(f"{f}: expected rows of 6 columns (h, m, s, us, horiz, vert)")
        snaps.append(arr[:, 4:6].astype(np.float32))
        starts.append(arr[0, 0] * 3600 + arr[0, 1] * 60 + arr[0, 2] + arr[0, 3] * 1e-6)
    n = min(s.shape[0] for s in snaps)
    t = np.asarray(starts) - starts[0]
    t = np.where(t < 0, t + 86400.0, t)  # runs that cross midnight
    name = folder.name
    return Recording(name, np.stack([s[:n] for s in snaps]), t, sample_rate_hz,
                     ("horizontal", "vertical"), rpm=_femto_rpm(name), bearing="FEMTO",
                     meta={"format": "femto-csv"})


def load_wav(path: Path, scale: float = 1.0) -> Recording:
    """PCM WAV: full scale is ``scale`` g."""
    try:
        with wave.open(str(path), "rb") as w:
            n_ch, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError, RuntimeError) as exc:  # RuntimeError: bad chunk
        raise DataError(f"{path}: not a PCM WAV file: {exc}") from None
    raw = raw[: len(raw) - len(raw) % (width * n_ch)]  # a truncated last sample frame
    x: npt.NDArray[Any]
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width in (2, 4):
        dt = np.int16 if width == 2 else np.int32
        x = np.frombuffer(raw, dt).astype(np.float32) / float(np.iinfo(dt).max + 1)
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        v = (b[:, 0].astype(np.int32) | b[:, 1].astype(np.int32) << 8
             | b[:, 2].astype(np.int32) << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)
    else:
        raise DataError(f"{path}: unsupported WAV sample width {width} bytes")
    x = x.reshape(-1, n_ch) * np.float32(scale)
    return _continuous(path.name, [x[:, i] for i in range(n_ch)],
                       [f"ch{i}" for i in range(n_ch)], float(rate), meta={"format": "wav"})


def load_csv(path: Path, *, sample_rate_hz: float | None = None) -> Recording:
    """One column per channel, optional header; ``,`` or ``;`` separated."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{path}: empty CSV")
    sep = ";" if lines[0].count(";") > lines[0].count(",") else ","
    first = [c.strip() for c in lines[0].split(sep)]
    has_header = any(re.search(r"[A-Za-z_]", c) and not _is_number(c) for c in first)
    names = first if has_header else [f"ch{i}" for i in range(len(first))]
    body = lines[1:] if has_header else lines
    try:
        arr = np.loadtxt(body, delimiter=sep, ndmin=2) if body else np.zeros((0, len(names)))
    except ValueError as exc:
        raise DataError(f"{path}: non-numeric CSV data: {exc}") from None
    if arr.shape[0] == 0 or arr.shape[1] != len(names):
        raise DataError(f"{path}: {arr.shape[0]} data rows of {arr.shape[1]} columns under "
                        f"{len(names)} names; need at least one row, one value per name")
    time_cols = [i for i, c in enumerate(names) if c.lower() in ("t_s", "time", "time_s", "t")]
    rate = sample_rate_hz
    if time_cols and rate is None and arr.shape[0] > 1:
        dt = float(np.median(np.diff(arr[:, time_cols[0]])))
        rate = 1.0 / dt if dt > 0 else None
    if rate is None:
        raise DataError(f"{path}: CSV has no time column; give the sample rate",
                        hint="pass --sample-rate-hz")
    keep = [i for i in range(arr.shape[1]) if i not in time_cols]
    if not keep:
        raise DataError(f"{path}: CSV has a time column but no channel column")
    return _continuous(path.name, [arr[:, i] for i in keep], [names[i] for i in keep], rate,
                       meta={"format": "csv"})


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

