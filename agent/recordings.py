"""Small readers that turn a recording into frames for ``foreshock agent replay``.

The agent may not import ``models`` (docs/architecture.md), so replay has its own readers,
kept to what replay needs (numpy, the standard library, ``scipy.io`` only for ``.mat``):

- CWRU ``.mat``: ``X<rec>_DE_time`` / ``_FE_time`` / ``_BA_time`` in g (channels ``DE``,
  ``FE``, ``BA``), shaft speed from ``X<rec>RPM``. The rate is not in the file: ``48k`` in
  the name or the normal baselines 97-100 mean 48 kHz, else 12 kHz; ``--sample-rate-hz``
  overrides.
- FEMTO ``.npz`` (``acc_mg`` int32 [snapshots, 2560, 2], ``t_s``, ``sample_rate_hz``;
  channels ``horizontal``, ``vertical``); the test rig's speed from the bearing's name.
- WAV (PCM, each channel ``ch0``, ``ch1``, ... scaled to [-1, 1) g) and CSV (one column per
  channel, optional header naming them; a ``t_s``/``time`` column gives the rate).
- ``.fsf`` / ``.frames``: a recorded frame stream (docs/protocol.md), replayed as is.

Each contiguous segment (one per FEMTO snapshot) becomes frames with consecutive sequence
numbers; between segments the sequence jumps, so the windower never joins two snapshots.
Bad input raises :class:`DataError` (exit 2).
"""

from __future__ import annotations

import csv
import re
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from foreshock.errors import DataError
from foreshock.wire import Frame, StreamDecoder

FRAME_SAMPLES = 1024
EPOCH_US = 1_700_000_000_000_000
FEMTO_RPM = {"1": 1800.0, "2": 1650.0, "3": 1500.0}


@dataclass(frozen=True, eq=False)
class Recording:
    """``segments``: float32[segments, samples, channels] in g; ``t_s`` segment starts."""

    name: str
    segments: npt.NDArray[np.float32]
    t_s: npt.NDArray[np.float64]
    sample_rate_hz: float
    channels: tuple[str, ...]
    rpm: float = 0.0

    def channel_index(self, name: str | None) -> int:
        if name is None:
            return 0
        for i, c in enumerate(self.channels):
            if c.lower() == name.lower():
                return i
        raise DataError(f"{self.name}: no channel {name!r}",
                        hint=f"channels are {', '.join(self.channels)}")

    def frames(self, channel: str | None = None, device_id: str = "replay") -> list[Frame]:
        """The chosen channel as frames (channel number = its index in the file)."""
        col = self.channel_index(channel)
        out: list[Frame] = []
        seq = 0
        for seg, start in zip(self.segments, self.t_s, strict=True):
            x = seg[:, col]
            for off in range(0, x.size, FRAME_SAMPLES):
                ts_us = EPOCH_US + round((start + off / self.sample_rate_hz) * 1e6)
                out.append(Frame.from_samples(device_id, col, seq % 2**32, ts_us,
                                              self.sample_rate_hz, x[off:off + FRAME_SAMPLES],
                                              rpm=self.rpm))
                seq += 1
            seq += 1  # a deliberate gap: windows never straddle two segments
        return out


def load(path: Path | str, *, sample_rate_hz: float | None = None) -> Recording:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"recording {p} does not exist or is not a file")
    readers = {".mat": _mat, ".npz": _npz, ".wav": _wav, ".csv": _csv, ".txt": _csv}
    reader = readers.get(p.suffix.lower())
    if reader is None:
        raise DataError(f"{p}: unknown recording format {p.suffix!r}",
                        hint="supported: .mat (CWRU), .npz (FEMTO), .wav, .csv, "
                             ".fsf/.frames (frame stream)")
    try:
        rec = reader(p, sample_rate_hz)
    except (OSError, ValueError, KeyError, EOFError, wave.Error) as exc:
        raise DataError(f"{p}: cannot read: {exc}") from None
    if not 100.0 <= rec.sample_rate_hz <= 200_000.0:
        raise DataError(f"{p}: sample rate {rec.sample_rate_hz:g} Hz is absurd "
                        "(allowed 100 Hz to 200 kHz)")
    if rec.segments.size == 0:
        raise DataError(f"{p}: no samples")
    return rec


def load_frames(path: Path | str) -> list[Frame]:
    """A recorded frame stream; undecodable bytes are skipped (as a live source would)."""
    dec = StreamDecoder()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    frames = dec.push(data)
    if not frames:
        raise DataError(f"{path}: no valid frames found")
    return frames


def _one(name: str, cols: list[npt.NDArray[Any]], names: list[str], rate: float,
         rpm: float = 0.0) -> Recording:
    data = np.stack([np.asarray(c, np.float32).ravel() for c in cols], axis=-1)[None]
    return Recording(name, data, np.zeros(1), float(rate), tuple(names), rpm)


def _mat(p: Path, rate: float | None) -> Recording:
    import scipy.io

    mat = scipy.io.loadmat(str(p))
    series = sorted(k for k in mat if re.match(r"^X\d+_(DE|FE|BA)_time$", k))
    if not series:
        raise DataError(f"{p}: not a CWRU .mat file (no X<rec>_DE_time variable)")
    rpm_keys = [k for k in mat if re.match(r"^X\d+RPM$", k)]
    rpm = float(np.ravel(mat[rpm_keys[0]])[0]) if rpm_keys else 0.0
    record = int(re.findall(r"\d+", series[0])[0])
    default = 48_000.0 if "48k" in p.name.lower() or 97 <= record <= 100 else 12_000.0
    cols = [np.ravel(mat[k]) for k in series]
    n = min(c.size for c in cols)
    names = [k.split("_")[1] for k in series]
    return _one(p.name, [c[:n] for c in cols], names, rate or default, rpm)


def _npz(p: Path, rate: float | None) -> Recording:
    with np.load(p) as z:
        if "acc_mg" not in z:
            raise DataError(f"{p}: not a FEMTO .npz (no acc_mg array)")
        acc = np.asarray(z["acc_mg"], np.float32) / 1000.0
        t_s = np.asarray(z["t_s"], np.float64) if "t_s" in z else np.arange(len(acc)) * 10.0
        fs = float(rate or z.get("sample_rate_hz", 25_600.0))
    m = re.search(r"Bearing(\d)_", p.name)
    rpm = FEMTO_RPM.get(m[1], 0.0) if m else 0.0
    if acc.ndim != 3:
        raise DataError(f"{p}: acc_mg must be [snapshots, samples, channels]")
    return Recording(p.name, acc, np.asarray(t_s, np.float64), fs,
                     ("horizontal", "vertical")[:acc.shape[2]], rpm)


def _wav(p: Path, rate: float | None) -> Recording:
    with wave.open(str(p), "rb") as w:
        width, nch, fs = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width not in (1, 2, 4):
        raise DataError(f"{p}: {8 * width}-bit WAV is not supported (use 8, 16 or 32 bit)")
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    x = np.frombuffer(raw, dtype=dtype).astype(np.float32)
    if width == 1:
        x -= 128.0
    x /= float(2 ** (8 * width - 1))
    x = x.reshape(-1, nch)
    return _one(p.name, [x[:, i] for i in range(nch)], [f"ch{i}" for i in range(nch)],
                rate or fs)


def _csv(p: Path, rate: float | None) -> Recording:
    with open(p, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if not rows:
        raise DataError(f"{p}: empty CSV")
    header = None if _numeric(rows[0]) else [h.strip() for h in rows[0]]
    body = np.asarray(rows[1:] if header else rows, dtype=np.float64)
    names = header or [f"ch{i}" for i in range(body.shape[1])]
    time_col = next((i for i, h in enumerate(names) if h.lower() in ("t_s", "time")), None)
    if time_col is not None:
        dt = np.diff(body[:, time_col])
        rate = rate or (1.0 / float(np.median(dt)) if dt.size and np.median(dt) > 0 else None)
    if not rate:
        raise DataError(f"{p}: CSV has no t_s/time column; give --sample-rate-hz")
    keep = [i for i in range(body.shape[1]) if i != time_col]
    return _one(p.name, [body[:, i] for i in keep], [names[i] for i in keep], rate)


def _numeric(row: list[str]) -> bool:
    try:
        [float(v) for v in row]
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
    from foreshock.errors import ConfigError

    if opts.sample_rate_hz is not None and not 100.0 <= opts.sample_rate_hz <= 200_000.0:
        raise ConfigError(f"--sample-rate-hz {opts.sample_rate_hz:g} is absurd; "
                          "allowed 100..200000")
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
    suffix = opts.path.suffix.lower()
    if suffix in (".fsf", ".frames"):
        frames, snapshot, femto = load_frames(opts.path), False, False
    else:
        rec = load(opts.path, sample_rate_hz=opts.sample_rate_hz)
        if opts.rpm is not None:
            rec = Recording(rec.name, rec.segments, rec.t_s, rec.sample_rate_hz,
                            rec.channels, opts.rpm)
        frames = rec.frames(opts.channel)
        seg_s = rec.segments.shape[1] / rec.sample_rate_hz
        snapshot, femto = seg_s < DEFAULT_SPEC.window_s, rec.name.startswith("Bearing")
    features: dict[str, object] = {"spec": "snapshot" if snapshot else "default",
                                   "rpm": opts.rpm or 0.0}
    if opts.bearing or femto:
        features["bearing"] = opts.bearing or "FEMTO"
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
