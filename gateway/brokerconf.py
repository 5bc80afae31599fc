"""``foreshock gateway broker-config``: a secured mosquitto configuration for one site.

What it writes into ``--out`` (default ``/etc/foreshock/broker``)::

    mosquitto.conf      TLS listener (client certificate required, CN = username = client
                        id), CRL, ACL, persistence, queue limits
    acl                 per-device confinement with pattern rules (%u), gateway and viewer
                        identities
    certs/ca.crt, certs/crl.pem, certs/server.crt, certs/server.key (0600)

Queue limits: mosquitto's defaults (1000 queued messages per client) made a subscriber that
fell behind lose up to 12 % of 50,000 QoS 1 messages, silently, while the devices had
already been acknowledged (DESIGN.md, measured lessons). So the queue per client is
unlimited by default (``max_queued_messages 0``) with a larger ``max_inflight_messages``,
and ``persistent_client_expiration`` bounds what an abandoned session can hold.

Why ``use_username_as_clientid``: the client id becomes the certificate CN, so one device
cannot take over (disconnect) another device's session by reusing its client id. Each
gateway instance therefore needs its own identity (``foreshock gateway ca issue _gateway2``)
and its own ``--gateway`` entry here.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import typer

from foreshock import topics
from foreshock.errors import ConfigError

from .ca import ROLE_NAME_RE, SiteCa, write_private, write_public

log = logging.getLogger(__name__)

DEFAULT_OUT: Final = Path("/etc/foreshock/broker")
# A device publishes these under its own subtree foreshock/v1/<site>/<device>/...
DEVICE_WRITE: Final = ("state", "telemetry", "alert", "event", "health", "model/status")
# ... reads its commands and model transfers, and both ends of its raw frame topics.
DEVICE_READ: Final = ("cmd/#", "model/offer", "model/chunk")
DEVICE_READWRITE: Final = ("frames/#",)
MAX_PACKET_BYTES: Final = 8 * 1024 * 1024  # > foreshock.messages.MAX_PAYLOAD_BYTES


@dataclass(frozen=True)
class BrokerOptions:
    """Everything ``broker-config`` needs. ``port`` may be ``"{port}"`` for a template."""

    ca_dir: Path
    out_dir: Path = DEFAULT_OUT
    sites: tuple[str, ...] = ()
    port: int | str = 8883
    bind: str = "0.0.0.0"
    gateways: tuple[str, ...] = ("_gateway",)
    viewers: tuple[str, ...] = ("_viewer",)
    persistence_dir: Path | None = None
    max_queued_messages: int = 0
    max_inflight_messages: int = 100
    client_expiration: str = "14d"
    user: str = "mosquitto"
    log_types: tuple[str, ...] = field(default=("error", "warning", "notice", "information"))

    def __post_init__(self) -> None:
        for site in self.sites:
            topics.check_id(site, "site")
        for name in (*self.gateways, *self.viewers):
            if not ROLE_NAME_RE.match(name):
                raise ConfigError(f"identity {name!r} must start with '_' (as issued by "
                                  "`foreshock gateway ca issue`)")
        if self.max_queued_messages < 0 or self.max_inflight_messages < 1:
            raise ConfigError("max_queued_messages must be >= 0 (0 = unlimited) and "
                              "max_inflight_messages >= 1")


def render_acl(opts: BrokerOptions, sites: Sequence[str]) -> str:
    """The ACL file text: pattern rules for devices, user blocks for roles."""
    lines = [
        "# Foreshock broker ACL, written by `foreshock gateway broker-config`.",
        "# The username is the client certificate's CN (use_identity_as_username);",
        "# %u below is that CN, i.e. the device id. Anything not granted is denied.",
        "",
    ]
    for site in sites:
        base = f"{topics.ROOT}/{site}/%u"
        lines.append(f"# devices of site {site}: their own subtree only")
        lines += [f"pattern write {base}/{kind}" for kind in DEVICE_WRITE]
        lines += [f"pattern read {base}/{kind}" for kind in DEVICE_READ]
        lines += [f"pattern readwrite {base}/{kind}" for kind in DEVICE_READWRITE]
        # gateway presence: devices hold their outbox until a gateway is live (docs/topics.md)
        lines.append(f"pattern read {topics.gateway_presence(site)}")
        lines.append("")
    for name in opts.gateways:
        lines += [f"# gateway instance {name}: ingest (shared subscriptions), commands, "
                  "model rollout, _control", f"user {name}",
                  f"topic readwrite {topics.ROOT}/#",
                  f"topic read $share/+/{topics.ROOT}/#",
                  "topic read $SYS/#", ""]
    for name in opts.viewers:
        lines += [f"# control-room viewer {name}: read only", f"user {name}",
                  f"topic read {topics.ROOT}/#", ""]
    return "\n".join(lines)


def render_conf(opts: BrokerOptions) -> str:
    """The mosquitto.conf text (paths point into ``opts.out_dir``)."""
    out = opts.out_dir.resolve()
    data = (opts.persistence_dir or out / "data").resolve()
    certs = out / "certs"
    lines = [
        "# Foreshock site broker, written by `foreshock gateway broker-config`.",
        "# Start: mosquitto -c " + str(out / "mosquitto.conf"),
        f"user {opts.user}",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {out / 'acl'}",
        "",
        "# persistence: queued QoS 1 messages and sessions survive a broker restart",
        "persistence true",
        f"persistence_location {data}/",
        "autosave_interval 60",
        f"persistent_client_expiration {opts.client_expiration}",
        "",
        "# queue limits: never drop QoS 1 messages for a slow subscriber (DESIGN.md)",
        f"max_queued_messages {opts.max_queued_messages}",
        "max_queued_bytes 0",
        f"max_inflight_messages {opts.max_inflight_messages}",
        f"max_packet_size {MAX_PACKET_BYTES}",
        "",
        "log_dest stderr",
        *[f"log_type {t}" for t in opts.log_types],
        "connection_messages true",
        "",
        "# TLS listener: a client certificate from the site CA is required",
        f"listener {opts.port} {opts.bind}",
        f"cafile {certs / 'ca.crt'}",
        f"certfile {certs / 'server.crt'}",
        f"keyfile {certs / 'server.key'}",
        f"crlfile {certs / 'crl.pem'}",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "tls_version tlsv1.2",
        "",
    ]
    return "\n".join(lines)


def write_broker_config(opts: BrokerOptions) -> list[Path]:
    """Write conf, ACL and certificate copies; returns the files written."""
    site_ca = SiteCa(opts.ca_dir)
    site_ca.load()
    server = site_ca.identity_dir("server")
    if not (server / "cert.pem").exists():
        raise ConfigError(f"no broker server certificate in {server}",
                          hint=f"foreshock gateway ca issue server --role server "
                               f"--host BROKER_HOST --ca-dir {opts.ca_dir}")
    sites = opts.sites or (site_ca.site,)
    out = opts.out_dir
    certs = out / "certs"
    certs.mkdir(mode=0o700, parents=True, exist_ok=True)
    (opts.persistence_dir or out / "data").mkdir(mode=0o700, parents=True, exist_ok=True)
    written = [out / "mosquitto.conf", out / "acl", certs / "ca.crt", certs / "crl.pem",
               certs / "server.crt", certs / "server.key"]
    write_public(written[0], render_conf(opts).encode())
    write_public(written[1], render_acl(opts, sites).encode())
    write_public(written[2], site_ca.cert_path.read_bytes())
    write_public(written[3], site_ca.crl_path.read_bytes())
    write_public(written[4], (server / "cert.pem").read_bytes())
    write_private(written[5], (server / "key.pem").read_bytes())
    _hand_over(out, opts.persistence_dir or out / "data", opts.user)
    log.info("wrote mosquitto configuration in %s", out)
    return written


def _hand_over(out: Path, data: Path, user: str) -> None:
    """As root, give the broker's user its files: mosquitto drops privileges before it
    reads certificates, so they must be readable by that user (and by nobody else)."""
    if os.geteuid() != 0 or user == "root":
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"user {user!r} does not exist on this host",
                          hint="install mosquitto, or pass --user with the broker's user"
                          ) from None
    for path in [out, data, *out.rglob("*"), *data.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)


def broker_config(
    ca_dir: Path = typer.Option(Path("/var/lib/foreshock/ca"), "--ca-dir",
                                envvar="FORESHOCK_CA_DIR", help="Site CA directory."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Directory for mosquitto.conf, acl, "
                                                        "certs/."),
    site: list[str] = typer.Option([], "--site", help="Site ids served [default: the CA's]."),
    port: int = typer.Option(8883, "--port", help="TLS listener port."),
    bind: str = typer.Option("0.0.0.0", "--bind", help="Listener address."),
    gateway: list[str] = typer.Option(["_gateway"], "--gateway",
                                      help="Gateway identities (certificate CNs)."),
    viewer: list[str] = typer.Option(["_viewer"], "--viewer",
                                     help="Read-only control-room identities."),
    persistence_dir: Path | None = typer.Option(None, "--persistence-dir",
                                                help="[default: <out>/data]"),
    max_queued_messages: int = typer.Option(0, "--max-queued-messages",
                                            help="Per-client queue; 0 = unlimited (no "
                                                 "silent QoS 1 loss)."),
    max_inflight_messages: int = typer.Option(100, "--max-inflight-messages"),
    user: str = typer.Option("mosquitto", "--user", help="User mosquitto runs as; owns "
                                                         "the written files when run as root."),
) -> None:
    """Write a TLS + per-device ACL mosquitto configuration from the site CA."""
    opts = BrokerOptions(
        ca_dir=ca_dir, out_dir=out, sites=tuple(site), port=port, bind=bind,
        gateways=tuple(gateway), viewers=tuple(viewer), persistence_dir=persistence_dir,
        max_queued_messages=max_queued_messages, max_inflight_messages=max_inflight_messages,
        user=user)
    for path in write_broker_config(opts):
        typer.echo(f"wrote {path}")
    exe = shutil.which("mosquitto") or "mosquitto"
    typer.echo(f"start: {exe} -c {out.resolve() / 'mosquitto.conf'}")
