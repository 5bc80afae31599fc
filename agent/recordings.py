"""Every recording format Foreshock reads, for ``foreshock agent replay`` and for training.

This is the one home of the file readers: ``models.datasets`` imports them, so training and
replay read a recording identically (docs/architecture.md). Only numpy, the standard library
and, lazily when a ``.mat`` is read, ``scipy.io``. ``load(path)`` picks by suffix / layout:

- CWRU ``.mat`` (``X<rec>_DE_time`` / ``_FE_time`` / ``_BA_time`` in g, channels ``DE``,
  ``FE``, ``BA``; shaft speed from ``X<rec>RPM``) and MFPT-style ``.mat`` (a ``bearing``
  struct with ``gs`` in g, ``sr`` and shaft ``rate`` in Hz; channel ``gs``). CWRU files do
  not state their sample rate: an explicit ``sample_rate_hz`` wins, then a ``12k``/``48k``
  token in the file name, then the CWRU record number (normal baselines 97-100 and the 48 kHz
  drive-end records), else 12 kHz.
- FEMTO ``.npz`` packing (``acc_mg`` int32 [snapshots, 2560, 2], ``t_s``, ``sample_rate_hz``)
  and FEMTO's original folders of ``acc_NNNNN.csv`` snapshots (hour, minute, second,
  microsecond, horizontal g, vertical g; ``,`` or ``;`` separated) given as a directory;
  channels ``horizontal``, ``vertical``; the rig's shaft speed from ``Bearing<cond>_<n>``.
- WAV (8/16/24/32-bit PCM scaled to [-1, 1) g times ``scale``; channels ``ch0``, ``ch1``...).
- CSV: one column per channel, an optional header naming them; a ``t_s``/``time`` column
  gives the rate, else ``sample_rate_hz`` must.
- ``.fsf`` / ``.frames``: a recorded frame stream (docs/protocol.md), replayed as is
  (:func:`load_frames`).

Simulator scenarios (``sim:<scenario>``) are rendered by ``models.datasets`` only: the agent
never imports ``firmware_sim``. To replay one, record it to a frame file and replay that:
``foreshock sim run --scenario NAME --transport file --out rec.fsf --max-speed`` then
``foreshock agent replay rec.fsf``.

A recording is a stack of contiguous segments (one for a continuous record, one per FEMTO
snapshot) so windows never straddle a gap. Bad input raises :class:`DataError` (exit 2).
"""

from __future__ import annotations

import re
import wave
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from foreshock.errors import ConfigError, DataError
from foreshock.wire import MAX_SAMPLE_RATE_HZ, Frame, StreamDecoder

FRAME_SAMPLES = 1024
EPOCH_US = 1_700_000_000_000_000
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


@dataclass(frozen=True)
class Recording:
    """Vibration in g: ``data`` float32[segments, samples, channels] at ``sample_rate_hz``.

    ``t_s`` is each segment's start time; ``rpm`` 0 means unknown; ``label`` is a fault
    label when the source states one (CWRU file names, simulator scenarios); ``bearing`` a
    catalogue bearing name when the source implies one.
    """

    name: str
    data: npt.NDArray[np.float32]
    t_s: npt.NDArray[np.float64]
    sample_rate_hz: float
    channels: tuple[str, ...]
    rpm: float = 0.0
    label: str | None = None
    bearing: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.ndim != 3 or self.data.shape[2] != len(self.channels):
            raise DataError(f"{self.name}: data shape {self.data.shape} does not match "
                            f"channels {self.channels}")
        if self.data.size == 0 or self.t_s.shape != (self.data.shape[0],):
            raise DataError(f"{self.name}: no samples, or segment starts do not match "
                            f"the {self.data.shape[0]} segments")
        if not np.isfinite(self.sample_rate_hz) or not (
                100 <= self.sample_rate_hz <= MAX_SAMPLE_RATE_HZ):
            raise DataError(f"{self.name}: sample rate {self.sample_rate_hz:g} Hz is absurd "
                            f"(allowed 100 Hz to {MAX_SAMPLE_RATE_HZ:g} Hz)")
        if not np.isfinite(self.rpm) or not 0 <= self.rpm <= 100_000:
            raise DataError(f"{self.name}: rpm {self.rpm:g} is absurd (allowed 0 to 100000)")

    @property
    def duration_s(self) -> float:
        return float(self.data.shape[0] * self.data.shape[1] / self.sample_rate_hz)

    def channel_index(self, name: str | None) -> int:
        """Index of a channel by name (case-insensitive); ``None`` is the first."""
        if name is None:
            return 0
        for i, c in enumerate(self.channels):
            if c.lower() == name.lower():
                return i
        raise DataError(f"{self.name}: no channel {name!r}",
                        hint=f"channels are {', '.join(self.channels)}")

    def channel(self, name: str | None = None) -> npt.NDArray[np.float32]:
        """float32[segments, samples] of one channel (default: the first)."""
        return self.data[:, :, self.channel_index(name)]

    def override(self, *, channel: str | None = None, sample_rate_hz: float | None = None,
                 rpm: float | None = None) -> Recording:
        """Only ``channel`` (when given), with the rate and shaft speed overridden."""
        data, channels = self.data, self.channels
        if channel is not None:
            i = self.channel_index(channel)
            data, channels = data[:, :, i:i + 1], (channels[i],)
        return replace(self, data=data, channels=channels,
                       sample_rate_hz=float(sample_rate_hz or self.sample_rate_hz),
                       rpm=float(self.rpm if rpm is None else rpm))

    def frames(self, channel: str | None = None, device_id: str = "replay") -> list[Frame]:
        """The chosen channel as frames (channel number = its index in the recording)."""
        col = self.channel_index(channel)
        out: list[Frame] = []
        seq = 0
        for seg, start in zip(self.data, self.t_s, strict=True):
            x = seg[:, col]
            for off in range(0, x.size, FRAME_SAMPLES):
                ts_us = EPOCH_US + round((start + off / self.sample_rate_hz) * 1e6)
                out.append(Frame.from_samples(device_id, col, seq % 2**32, ts_us,
                                              self.sample_rate_hz, x[off:off + FRAME_SAMPLES],
                                              rpm=self.rpm))
                seq += 1
            seq += 1  # a deliberate gap: windows never straddle two segments
        return out


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


@dataclass(frozen=True)
class ReplayOptions:
    """The options of ``foreshock agent replay`` (see agent/cli.py)."""

    path: Path
    channel: str | None = None
    sample_rate_hz: float | None = None
    rpm: float | None = None
    bearing: str | None = None
    orders: tuple[float | None, float | None, float | None, float | None] = (None,) * 4
    commission_s: float = 10.0
    bundle: Path | None = None
    trusted_keys: tuple[Path, ...] = ()


def _check(opts: ReplayOptions) -> None:
    rate = opts.sample_rate_hz
    if rate is not None and not 100.0 <= rate <= MAX_SAMPLE_RATE_HZ:
        raise ConfigError(f"--sample-rate-hz {rate:g} is absurd; "
                          f"allowed 100..{MAX_SAMPLE_RATE_HZ:g}")
    if opts.rpm is not None and not 0.0 <= opts.rpm <= 100_000.0:
        raise ConfigError(f"--rpm {opts.rpm:g} is absurd; allowed 0..100000")
    if not 0.0 <= opts.commission_s <= 86_400.0:
        raise ConfigError(f"--commission-s {opts.commission_s:g} is absurd; allowed 0..86400")
    given = [o is not None for o in opts.orders]
    if any(given) and not all(given):
        raise ConfigError("give all four of --bpfo --bpfi --bsf --ftf, or --bearing")
    if any(given) and opts.bearing:
        raise ConfigError("give either --bearing or --bpfo/--bpfi/--bsf/--ftf, not both")


def _frames_and_config(opts: ReplayOptions) -> tuple[list[Frame], object]:
    from agent.config import AgentConfig
    from agent.features import DEFAULT_SPEC

    _check(opts)
    bearing = opts.bearing
    if opts.path.suffix.lower() in FRAME_SUFFIXES:
        frames, snapshot = _frame_file(opts.path, opts.channel), False
    else:
        rec = load(opts.path, sample_rate_hz=opts.sample_rate_hz, rpm=opts.rpm)
        frames = rec.frames(opts.channel)
        snapshot = rec.data.shape[1] / rec.sample_rate_hz < DEFAULT_SPEC.window_s
        if opts.orders[0] is None:
            bearing = bearing or rec.bearing
    features: dict[str, object] = {"spec": "snapshot" if snapshot else "default",
                                   "rpm": opts.rpm or 0.0}
    if bearing:
        features["bearing"] = bearing
    if all(o is not None for o in opts.orders):
        features.update(zip(("bpfo", "bpfi", "bsf", "ftf"), opts.orders, strict=True))
    # The shipped bundle is built for DEFAULT_SPEC's 0.32 s windows; short snapshots use the
    # snapshot spec with the model-free detector unless a bundle for them is given.
    model: dict[str, object] = {"default_bundle": not snapshot}
    if opts.bundle is not None:
        model = {"bundle": str(opts.bundle), "trusted_keys": [str(k) for k in opts.trusted_keys]}
    cfg = AgentConfig.for_device(
        "replay", "replay", "", Path("."), features=features, model=model,
        decision={"commission_s": opts.commission_s, "min_commission_windows": 2},
        service={"max_queued_windows": 100_000})
    return frames, cfg


def _frame_file(path: Path, channel: str | None) -> list[Frame]:
    """A frame file's frames, of one channel (its number) when ``channel`` is given."""
    frames = load_frames(path)
    if channel is None:
        return frames
    kept = [f for f in frames if str(f.channel) == channel.strip()]
    if not kept:
        have = sorted({f.channel for f in frames})
        raise DataError(f"{path}: no channel {channel!r}",
                        hint=f"channels are {', '.join(map(str, have))}")
    return kept


def replay_recording(opts: ReplayOptions) -> list[dict[str, object]]:
    """Run the recording through :class:`agent.service.Agent` (no outbox, no link) and
    return one row per window: t_s (window end, from the recording's start), channel,
    anomaly_score (null while commissioning), alert (an incident is open), incident (the
    record this window produced: raised / updated / cleared, else null), severity, fault,
    fault_probability (of the alert when one was produced, else the model's top label),
    explanation (of the alert record), commissioning, zone."""
    import math
    import threading

    from agent.pipeline import WindowResult
    from agent.service import Agent
    from agent.sources import ReplaySource

    frames, cfg = _frames_and_config(opts)
    rows: list[dict[str, object]] = []
    t0 = frames[0].timestamp_us / 1e6

    def keep(r: WindowResult) -> None:
        alert = r.alert
        rows.append({
            "t_s": round(r.window.end_s - t0, 4), "channel": r.window.channel,
            "anomaly_score": None if math.isnan(r.anomaly) else round(r.anomaly, 5),
            "alert": r.incident_open,
            "incident": alert["status"] if alert else None,
            "severity": alert["severity"] if alert else None,
            "fault": alert["fault"] if alert else r.fault,
            "fault_probability": round(alert["fault_probability"] if alert
                                       else r.fault_probability, 4),
            "commissioning": r.commissioning, "zone": r.zone,
            "explanation": r.explanation,
        })

    # Small reads keep the window queue short; replay must never drop a window.
    agent = Agent(cfg, ReplaySource(frames, batch=64), store=False, on_result=keep)  # type: ignore[arg-type]
    agent.run(threading.Event())
    if not rows:
        spec = agent.pipeline.spec
        raise DataError(f"{opts.path}: no complete window: the feature spec needs "
                        f"{spec.window_s:.3f} s of continuous samples per window",
                        hint="use a recording with longer segments, or a bundle built for "
                             "short snapshots")
    return rows
