"""``foreshock gateway``: run the ingest service, show the fleet, export data.

Errors are ForeshockError subclasses; the root CLI prints them as one line plus a hint.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import typer

from foreshock.errors import ConfigError, LinkError
from gateway.config import GatewayConfig
from gateway.config import command_key as load_command_key

log = logging.getLogger(__name__)
app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Gateway: ingest, store, fleet, export, feedback.")
DEFAULT_DB = "sqlite:///gateway.db"


@app.command()
def run(config: Path = typer.Option(..., "--config", help="Gateway TOML file "
                                    "(see gateway/gateway.toml.sample).")) -> None:
    """Ingest device topics into the store until SIGTERM or Ctrl-C."""
    from gateway.service import Gateway

    cfg = GatewayConfig.load(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    gateway = Gateway(cfg)
    gateway.start()
    try:
        while not stop.wait(60):
            s = gateway.stats()
            log.info("messages %d, records %d, duplicates %d, invalid %d, gaps %d",
                     s.messages, s.records_stored, s.duplicates_dropped, s.invalid, s.gaps)
    finally:
        gateway.stop()


def _db_url(db: str | None, config: Path | None) -> str:
    if db:
        return db
    if config:
        return GatewayConfig.load(config).db_url
    return DEFAULT_DB


@app.command()
def fleet(db: str = typer.Option(None, "--db", help=f"Store url (default {DEFAULT_DB})."),
          config: Path = typer.Option(None, "--config", help="Take the store url from "
                                      "this gateway TOML file."),
          site: str = typer.Option(None, "--site", help="Only this site.")) -> None:
    """Show every device: online state, versions, outbox, last alert, quality, rollout."""
    from rich.console import Console
    from rich.table import Table

    from gateway.fleet import FLEET_COLUMNS, fleet_rows
    from gateway.store import open_store

    store = open_store(_db_url(db, config))
    try:
        rows = fleet_rows(store, site)
    finally:
        store.close()
    table = Table(*FLEET_COLUMNS, title=f"Foreshock fleet ({len(rows)} devices)")
    for row in rows:
        table.add_row(*(row[c] for c in FLEET_COLUMNS))
    # piped output (grep, logs) gets full rows instead of wrapped cells
    Console(width=None if sys.stdout.isatty() else 240).print(table)


@app.command()
def export(device: str = typer.Option(..., "--device", help="Device id."),
           out: Path = typer.Option(..., "--out", help="Output file."),
           kind: str = typer.Option("telemetry", "--kind", help="alerts or telemetry."),
           fmt: str = typer.Option("csv", "--format", help="csv or parquet (needs pyarrow)."),
           since: str = typer.Option(None, "--since", help="ISO 8601 or Unix seconds."),
           until: str = typer.Option(None, "--until", help="ISO 8601 or Unix seconds."),
           db: str = typer.Option(None, "--db", help=f"Store url (default {DEFAULT_DB})."),
           config: Path = typer.Option(None, "--config", help="Take the store url from "
                                       "this gateway TOML file.")) -> None:
    """Write a device's alerts or telemetry in a time range as CSV or Parquet."""
    from gateway import fleet as fleet_mod
    from gateway.store import open_store

    if kind not in ("alerts", "telemetry"):
        raise ConfigError(f"--kind {kind!r} is not allowed; use alerts or telemetry")
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"--format {fmt!r} is not allowed; use csv or parquet")
    window: dict[str, Any] = {"since": fleet_mod.parse_time(since, "since"),
                              "until": fleet_mod.parse_time(until, "until")}
    store = open_store(_db_url(db, config))
    try:
        n = fleet_mod.export(store, out, device=device, kind=kind,  # type: ignore[arg-type]
                             fmt=fmt, **window)  # type: ignore[arg-type]
    finally:
        store.close()
    typer.echo(f"wrote {n} {kind} rows of {device} to {out}")


@app.command()
def feedback(alert_id: int = typer.Argument(None, help="Stored alert id (alerts table)."),
             incident: str = typer.Option(None, "--incident", help="Label an incident "
                                          "(its most anomalous alert) instead."),
             label: str = typer.Option(..., "--label", help="confirmed, false_alarm or "
                                       "maintenance_done."),
             note: str = typer.Option("", "--note", help="Free text kept with the label."),
             operator: str = typer.Option(None, "--by", help="Operator (default: $USER)."),
             db: str = typer.Option(None, "--db", help=f"Store url (default {DEFAULT_DB})."),
             config: Path = typer.Option(None, "--config", help="Gateway TOML file: the "
                                         "store url, and the broker and command key the "
                                         "label is sent to the device with."),
             broker_url: str = typer.Option(None, "--broker", help="Send the label to the "
                                            "device as a signed cmd/feedback through this "
                                            "broker (default with --config: its broker_url)."),
             command_key: Path = typer.Option(None, "--command-key", help="ed25519 private "
                                              "key (PEM) that signs cmd/feedback (default: "
                                              "command_key_file, else the site's "
                                              "model-signing key)."),
             publish: bool = typer.Option(True, "--publish/--no-publish", help="With a "
                                          "broker: also send the label to the device.")
             ) -> None:
    """Mark an alert confirmed, false alarm or maintenance done: stored with its features
    and, with a broker, sent to the device as a signed cmd/feedback (docs/learning.md)."""
    import getpass
    import time

    from gateway import feedback as fb
    from gateway.store import open_store

    fb.check_label(label)
    if (alert_id is None) == (incident is None):
        raise ConfigError("give exactly one of ALERT_ID or --incident")
    cfg = GatewayConfig.load(config) if config else GatewayConfig()
    send = publish and bool(broker_url or config)
    if send:
        cfg = cfg.with_(broker_url=broker_url) if broker_url else cfg
        signer = _feedback_signer(command_key or cfg.command_key_file)
    who, ts = operator or getpass.getuser(), time.time()
    store = open_store(db or cfg.db_url)
    try:
        row = fb.record(store, label=label, operator=who, ts=ts, alert_id=alert_id,
                        incident=incident, note=note)
    finally:
        store.close()
    typer.echo(f"feedback {row.id}: {row.label} on {row.site}/{row.device} incident "
               f"{row.incident} ({len(row.features)} features stored)")
    if not send:
        typer.echo("stored only (not sent to the device: give --broker or --config)")
        return
    topic, payload = fb.feedback_command(row.site, row.device, incident=row.incident,
                                         label=label, operator=who, ts=ts, note=note,
                                         key=signer)
    try:
        fb.publish_command(cfg, topic, payload)
    except LinkError as exc:
        raise LinkError(f"feedback stored, but not sent to the device: {exc}",
                        hint=exc.hint) from None
    typer.echo(f"sent signed cmd/feedback on {topic}")


def _feedback_signer(path: str | Path | None) -> Any:
    """The key that signs cmd/feedback; ConfigError before anything is stored when there
    is none (devices refuse an unsigned label)."""
    signer = load_command_key(path)
    if signer is None:
        raise ConfigError("no key to sign cmd/feedback with; devices refuse it unsigned",
                          hint="give --command-key PATH or command_key_file, or "
                               "--no-publish to store the label only")
    return signer


def _mount_security() -> None:
    """`foreshock gateway ca ...` and `foreshock gateway broker-config` (docs/provisioning.md)."""
    from gateway.brokerconf import broker_config
    from gateway.ca import ca_app

    app.add_typer(ca_app, name="ca", help="Site certificate authority and model-signing key.")
    app.command("broker-config")(broker_config)


_mount_security()


@app.command()
def deploy(bundle: Path = typer.Argument(..., help="Signed bundle directory."),
           to: str = typer.Option(..., "--to", help="SITE (every registered device) or "
                                  "SITE/DEVICE[,DEVICE...]; a glob (SITE/pump-*) picks a group "
                                  "of registered devices; canaries are taken in order."),
           key: list[Path] = typer.Option(..., "--key", help="Trusted model-signing public "
                                          "key (PEM); repeat for several."),
           canary: int = typer.Option(1, "--canary", help="Devices that go first."),
           abort_on: float = typer.Option(20.0, "--abort-on", help="Abort and roll back when "
                                          "this percentage of offered devices failed."),
           shadow_windows: int = typer.Option(100, "--shadow-windows",
                                              help="Windows each device runs the candidate "
                                                   "in shadow before promoting it."),
           timeout_s: float = typer.Option(3600.0, "--timeout-s", help="Give up waiting."),
           config: Path = typer.Option(None, "--config", help="Gateway TOML (broker, store)."),
           broker_url: str = typer.Option(None, "--broker", help="Broker url (overrides "
                                          "--config)."),
           db: str = typer.Option(None, "--db", help=f"Store url (default {DEFAULT_DB})."),
           command_key: Path = typer.Option(None, "--command-key", help="ed25519 private "
                                            "key (PEM) that signs the rollback command "
                                            "(default: command_key_file, else the site's "
                                            "model-signing key).")
           ) -> None:
    """Roll a signed model bundle out: canary first, widen, abort and roll back on failure."""
    from gateway.deploy import deploy as run_deploy
    from gateway.deploy import targets
    from gateway.rollout import RolloutManager, RolloutPlan
    from gateway.store import open_store

    cfg = GatewayConfig.load(config) if config else GatewayConfig()
    signer = load_command_key(command_key or cfg.command_key_file)
    store = open_store(db or cfg.db_url)

    def progress(m: RolloutManager) -> None:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(m.summary().items()))
        typer.echo(f"rollout {m.rollout_id} {m.state}: {counts}")

    try:
        site, devices = targets(store, to)
        plan = RolloutPlan(bundle, site, devices, canary=canary, abort_on_pct=abort_on,
                           shadow_windows=shadow_windows)
        manager = run_deploy(plan, broker_url or cfg.broker_url, store, list(key),
                             timeout_s=timeout_s, progress=progress,
                             command_key=signer)
    finally:
        store.close()
    typer.echo(f"rollout {manager.rollout_id} of {manager.bundle['name']} "
               f"{manager.bundle['version']}: {manager.state} {manager.summary()}")
    if manager.state != "complete":
        raise typer.Exit(1)
