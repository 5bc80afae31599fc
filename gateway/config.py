"""Gateway configuration: one frozen dataclass, loaded from the ``[gateway]`` TOML table.

See ``gateway/gateway.toml.sample`` for every key with its default and meaning. A config
key, its field and its CLI option share one name. Validation happens here, at load, and
fails with one :class:`~foreshock.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from foreshock import topics
from foreshock.bundle import load_private_key
from foreshock.config import check_range, from_table, read_toml
from foreshock.errors import ConfigError

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

BROKER_SCHEMES = ("mqtt", "mqtts")
# Where `foreshock gateway ca init` puts the site's model-signing key; devices pin its
# public half, so it also signs commands (docs/provisioning.md).
DEFAULT_COMMAND_KEY = Path("/var/lib/foreshock/model-signing/model-signing.key")


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


@dataclass(frozen=True)
class GatewayConfig:
    """Everything one gateway instance needs. Defaults suit one site on one machine."""

    broker_url: str = "mqtt://127.0.0.1:1883"
    site: str = "+"
    db_url: str = "sqlite:///gateway.db"
    share_group: str = "foreshock-gateway"
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str = ""
    username: str = ""
    password: str = ""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    keepalive_s: int = 30
    session_expiry_s: int = 3600
    connect_timeout_s: float = 10.0
    store_retry_s: float = 5.0
    fleet_interval_s: float = 10.0
    presence_interval_s: float = 2.0
    republish_alerts: bool = True
    invalid_log_interval_s: float = 60.0
    command_key_file: str = ""

    def __post_init__(self) -> None:
        if self.site != "+":
            topics.check_id(self.site, "site")
        if self.share_group:
            topics.check_id(self.share_group, "share_group")

        broker(self.broker_url)
        if not self.db_url:
            raise ConfigError("db_url is empty; use sqlite:///path or postgresql://...")
        check_range("keepalive_s", self.keepalive_s, 5, 3600)
        check_range("session_expiry_s", self.session_expiry_s, 0, 2**32 - 1)
        check_range("connect_timeout_s", self.connect_timeout_s, 0.1, 600)
        check_range("fleet_interval_s", self.fleet_interval_s, 0, 86400)
        check_range("presence_interval_s", self.presence_interval_s, 0, 3600)
        check_range("store_retry_s", self.store_retry_s, 0.01, 3600)
        check_range("invalid_log_interval_s", self.invalid_log_interval_s, 0, 86400)

    @classmethod
    def for_site(cls, broker_url: str, site: str, db_url: str, **overrides: Any) -> GatewayConfig:
        """A config for the demo and tests: one site, one broker, one store."""
        return cls(broker_url=broker_url, site=site, db_url=db_url, **overrides)

    @classmethod
    def load(cls, path: Path | str) -> GatewayConfig:
        """Read the ``[gateway]`` table of a TOML file."""
        data = read_toml(path)
        table = data.get("gateway")
        if table is None:
            raise ConfigError(f"config file {path} has no [gateway] table",
                              hint="start from gateway/gateway.toml.sample")
        return from_table(cls, table, "gateway")

    def effective_client_id(self) -> str:
        """``client_id`` or ``foreshock-gw-<host>-<pid>`` (stable ids keep MQTT sessions)."""
        if self.client_id:
            return self.client_id
        return f"foreshock-gw-{socket.gethostname()[:20]}-{os.getpid()}"

    def mqtt_client(self, client_id: str, **options: Any) -> mqtt.Client:
        """A paho client with the gateway's broker identity: protocol, ``username`` /
        ``password`` (or those of ``broker_url``) and TLS (``mqtts://`` or the TLS files).
        ``options`` go to ``paho.mqtt.client.Client`` (e.g. ``manual_ack``)."""
        import ssl

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        addr = broker(self.broker_url)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311 if self.protocol == "3.1.1"
                             else mqtt.MQTTv5, **options)
        username = self.username or addr.username
        if username:
            client.username_pw_set(username, self.password or addr.password)
        if addr.tls or self.tls_ca_file:
            client.tls_set(ca_certs=self.tls_ca_file or None,
                           certfile=self.tls_cert_file or None,
                           keyfile=self.tls_key_file or None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        return client

    def with_(self, **changes: Any) -> GatewayConfig:
        return replace(self, **changes)


def command_key(path: str | Path | None) -> Ed25519PrivateKey | None:
    """The private key that signs device commands (rebaseline, feedback, rollback).

    ``path`` (``--command-key`` / ``command_key_file``) must load; with none, the site's
    model-signing key at its default place if it exists, else None (commands go unsigned
    and devices refuse the state-changing ones). Raises BundleError for an unusable key.
    """
    if path:
        return load_private_key(Path(path))
    try:
        present = DEFAULT_COMMAND_KEY.is_file()
    except OSError:   # a directory we may not read
        present = False
    return load_private_key(DEFAULT_COMMAND_KEY) if present else None


def broker(url: str) -> BrokerAddress:
    """Parse ``mqtt://[user[:pass]@]host[:port]`` (``mqtts://`` for TLS)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"broker_url = {url!r} is invalid: {exc}") from None
    if parts.scheme not in BROKER_SCHEMES or not parts.hostname:
        raise ConfigError(f"broker_url = {url!r} is invalid; use mqtt://host:1883 or "
                          "mqtts://host:8883")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname, port or (8883 if tls else 1883), tls,
                         parts.username, parts.password)
