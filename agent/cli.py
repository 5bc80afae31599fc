"""``foreshock agent``: run the device agent, show its status, replay a recording.

Errors are :class:`ForeshockError` subclasses; the root CLI prints one line and exits 2 for
usage, config and data errors, 1 for operational failures.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
from pathlib import Path
from typing import Any

import typer

from foreshock.errors import ConfigError

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Device agent: run, replay a recording, status, rebaseline.")

DEFAULT_CONFIG = Path("/etc/foreshock/agent.toml")


@app.command()
def run(config: Path = typer.Option(DEFAULT_CONFIG, "--config", "-c",
                                    help="Agent TOML config.")) -> None:
    """Run the agent until SIGTERM or SIGINT (systemd: Type=notify)."""
    from agent.config import AgentConfig
    from agent.security import check_startup_files, install_log_redaction
    from agent.service import Agent

    install_log_redaction()
    cfg = AgentConfig.load(config)
    check_startup_files(config, cfg.link)
    source = open_source(cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent = Agent(cfg, source)
    agent.run(stop)


def open_source(cfg: Any) -> Any:
    """The configured source; ``source.params`` are its constructor's keywords."""
    kind, params = cfg.source.type, dict(cfg.source.params)
    if kind == "sim":
        raise ConfigError("source.type = 'sim' is for the demo, which plugs a simulated node "
                          "in directly; use serial, udp, mqtt or file for `agent run`")
    if kind == "mqtt":
        params.setdefault("broker_url", cfg.link.broker_url)
        params.setdefault("site", cfg.device.site)
        params.setdefault("device", cfg.device.device_id)
    module, cls = {"serial": ("serial", "SerialSource"), "udp": ("udp", "UdpSource"),
                   "mqtt": ("mqtt", "MqttSource"), "file": ("file", "FileSource")}[kind]
    import importlib

    factory = getattr(importlib.import_module(f"agent.sources.{module}"), cls)
    try:
        return factory(**params)
    except TypeError as exc:
        raise ConfigError(f"[source] params for {kind}: {exc}") from None


@app.command()
def status(config: Path | None = typer.Option(None, "--config", "-c", help="Agent config."),
           state_dir: Path | None = typer.Option(None, "--state-dir",
                                                 help="The agent's state directory."),
           as_json: bool = typer.Option(False, "--json", help="Print the status JSON.")) -> None:
    """Health, queue depth per class, last alert, model version and counters."""
    path = _status_path(config, state_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no status file at {path}",
                          hint="is the agent running? (systemctl status foreshock-agent)"
                          ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"status file {path} is unreadable: {exc}") from None
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for line in _status_lines(data):
        typer.echo(line)


@app.command()
def rebaseline(
    config: Path | None = typer.Option(None, "--config", "-c", help="Agent config."),
    state_dir: Path | None = typer.Option(None, "--state-dir",
                                          help="The agent's state directory."),
    stream: str | None = typer.Option(None, "--stream", help="Only this stream "
                                      "(DEVICE/CHANNEL); default all."),
    state: str | None = typer.Option(None, "--state", help="Only this operating state "
                                     "(e.g. s3, s3l1); default all."),
    why: str = typer.Option("maintenance", "--why", help="Reason, kept in the audit log."),
    who: str | None = typer.Option(None, "--who", help="Operator (default: $USER)."),
) -> None:
    """Forget saved baselines (after maintenance); they are learned again.

    Stop the agent first (or send the ``rebaseline`` command from the gateway to a running
    agent): a running agent keeps its own copy and saves it over this one.
    """
    import getpass
    import time

    from agent.baselines import rebaseline_saved

    if state_dir is None:
        from agent.config import AgentConfig

        state_dir = AgentConfig.load(config or DEFAULT_CONFIG).service.state_dir
    operator = who or f"cli:{getpass.getuser()}"
    n = rebaseline_saved(state_dir, stream=stream, state=state, who=operator, why=why,
                         at_s=time.time())
    typer.echo(f"reset {n} baseline state(s) in {state_dir}; recorded in the audit log")


def _status_path(config: Path | None, state_dir: Path | None) -> Path:
    if state_dir is not None:
        return state_dir / "status.json"
    from agent.config import AgentConfig

    cfg = AgentConfig.load(config or DEFAULT_CONFIG)
    return cfg.service.status_file


def _status_lines(data: dict[str, Any]) -> list[str]:
    counters = data.get("counters", {})
    model = data.get("model") or {}
    link = data.get("link") or {}
    depth = data.get("outbox_depth") or counters.get("outbox_depth") or {}
    lines = [
        f"device   {data.get('site')}/{data.get('device')}  agent {data.get('agent_version')}"
        f"  pid {data.get('pid')}  up {data.get('uptime_s', 0):.0f} s",
        f"model    {model.get('name', '?')} {model.get('version', '?')}",
        f"link     {'connected' if link.get('connected') else 'DISCONNECTED'} "
        f"{link.get('broker') or '(no broker configured)'}",
        "outbox   " + "  ".join(f"{k} {v.get('rows', 0)} rows/{v.get('bytes', 0)} B"
                                for k, v in depth.items()),
        "counters " + "  ".join(f"{k} {v}" for k, v in counters.items()
                                if isinstance(v, int) and "." not in k),
        *_monitor_lines(data),
    ]
    for key, s in (data.get("streams") or {}).items():
        state = "commissioning" if s.get("commissioning") else "monitoring"
        inc = s.get("incident")
        lines.append(f"stream   {key}: {state}, threshold {s.get('threshold', 0):.3g}"
                     + (f", open incident {inc['id']} ({inc['severity']})" if inc else ""))
    alert = data.get("last_alert")
    if alert:
        lines.append(f"alert    {alert.get('status')} {alert.get('severity')} "
                     f"ch{alert.get('channel')}: "
                     f"{(alert.get('explanation') or {}).get('summary', '')}")
    else:
        lines.append("alert    none since start")
    return lines


def _monitor_lines(data: dict[str, Any]) -> list[str]:
    """Data quality per channel, drift state and latency percentiles per stage."""
    counters = data.get("counters", {})
    channels = data.get("channels") or {}
    lines = ["quality  " + ("  ".join(f"{k} {v}" for k, v in channels.items())
                            or "no channel seen yet")
             + f"  ({counters.get('windows_unscoreable', 0)} windows not scored)"]
    drift = data.get("drift")
    if drift is None:
        lines.append("drift    off (the model ships no training_stats)")
    else:
        moving = ", ".join(drift.get("drifting") or []) or "none"
        lines.append(f"drift    drifting: {moving}; {drift.get('windows', 0)} windows, "
                     f"max PSI {drift.get('max_psi', 0)} ({drift.get('max_psi_feature')})")
    for stage, st in (data.get("latency_ms") or {}).items():
        lines.append(f"latency  {stage:<9} p50 {st.get('p50_ms', 0):.3f} ms  "
                     f"p90 {st.get('p90_ms', 0):.3f} ms  p99 {st.get('p99_ms', 0):.3f} ms  "
                     f"({st.get('count', 0)} windows)")
    if data.get("metrics_url"):
        lines.append(f"metrics  {data['metrics_url']}")
    return lines


@app.command()
def replay(
    path: Path = typer.Argument(..., help="Recording: .mat, .npz, .wav, .csv, .fsf."),
    channel: str | None = typer.Option(None, "--channel", help="Channel name in the file."),
    sample_rate_hz: float | None = typer.Option(None, "--sample-rate-hz"),
    rpm: float | None = typer.Option(None, "--rpm", help="Shaft speed; overrides the file."),
    bearing: str | None = typer.Option(None, "--bearing", help="Catalogue bearing name."),
    bpfo: float | None = typer.Option(None, "--bpfo"),
    bpfi: float | None = typer.Option(None, "--bpfi"),
    bsf: float | None = typer.Option(None, "--bsf"),
    ftf: float | None = typer.Option(None, "--ftf"),
    commission_s: float = typer.Option(10.0, "--commission-s",
                                       help="The first S seconds are the baseline."),
    bundle: Path | None = typer.Option(None, "--bundle", help="Model bundle directory."),
    trusted_key: list[Path] = typer.Option([], "--trusted-key",
                                           help="Public key(s) for --bundle."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl or table."),
) -> None:
    """Run a recording through the live pipeline; one JSON object per window."""
    from agent.recordings import ReplayOptions, replay_recording

    if fmt not in ("jsonl", "table"):
        raise ConfigError(f"--format {fmt!r} is not allowed; use jsonl or table")
    opts = ReplayOptions(path, channel, sample_rate_hz, rpm, bearing,
                         (bpfo, bpfi, bsf, ftf), commission_s, bundle, tuple(trusted_key))
    if fmt == "table":
        typer.echo(f"{'t_s':>9} {'ch':>3} {'score':>8} {'alert':>5} {'severity':>8} "
                   f"{'fault':>12} {'p':>5}")
    for row in replay_recording(opts):
        typer.echo(json.dumps(row, allow_nan=False) if fmt == "jsonl" else _table(row))


def _table(row: dict[str, Any]) -> str:
    score = row["anomaly_score"]
    s = "   -    " if score is None or math.isnan(score) else f"{score:8.3f}"
    return (f"{row['t_s']:9.2f} {row['channel']:>3} {s} {'YES' if row['alert'] else '':>5} "
            f"{row['severity'] or '':>8} {row['fault']:>12} {row['fault_probability']:5.2f}")
