"""``foreshock agent replay``: a recording or frame file run through the agent's own
pipeline (:class:`agent.service.Agent`, no outbox, no link), one row per window."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.recordings.readers import FRAME_SUFFIXES, load, load_frames
from foreshock.errors import ConfigError, DataError
from foreshock.wire import MAX_SAMPLE_RATE_HZ, Frame


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
