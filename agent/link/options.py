"""The link's settings: :class:`LinkOptions` (how it connects and batches, with defaults)
and :class:`LinkConfig` (where it connects plus those options, validated on construction).

The agent's ``[link]`` section (:class:`agent.config.LinkSection`) derives from
:class:`LinkOptions` too, so every option and its default is declared once; only
``require_gateway`` defaults differently there (on in the agent's config, off in a bare
:class:`LinkConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from foreshock import topics
from foreshock.errors import ConfigError
from foreshock.messages import MAX_PAYLOAD_BYTES

BATCH_ENVELOPE_BYTES: Final = 512


@dataclass(frozen=True)
class LinkOptions:
    """Every field of :class:`LinkConfig` but where it connects (``broker_url``, ``site``,
    ``device_id``), with its default; checked by :class:`LinkConfig`."""

    client_id: str = ""
    keepalive_s: int = 30
    tls_ca_path: str | None = None
    tls_cert_path: str | None = None
    tls_key_path: str | None = None
    max_inflight: int = 16
    batch_max_records: int = 1000
    batch_max_bytes: int = 256 * 1024
    backoff_min_s: float = 0.5
    backoff_max_s: float = 60.0
    connect_timeout_s: float = 10.0
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    require_gateway: bool = False
    gateway_timeout_s: float = 6.0


@dataclass(frozen=True)
class _Endpoint:
    broker_url: str
    site: str
    device_id: str


@dataclass(frozen=True)
class LinkConfig(LinkOptions, _Endpoint):
    """Where and how the link connects. ``broker_url`` is ``mqtt://`` or ``mqtts://host:port``.

    Fields: ``broker_url``, ``site``, ``device_id`` (positional; a dataclass takes the fields
    of its last base first), then those of :class:`LinkOptions`.
    """

    def __post_init__(self) -> None:
        topics.check_id(self.site, "site")
        topics.check_id(self.device_id, "device_id")
        url = urlsplit(self.broker_url)
        if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
            raise ConfigError(f"broker_url {self.broker_url!r} is invalid: use "
                              "mqtt://host:port or mqtts://host:port")
        try:
            _ = url.port
        except ValueError:
            raise ConfigError(f"broker_url {self.broker_url!r} has a bad port") from None
        checks = {"keepalive_s": self.keepalive_s >= 5, "max_inflight": self.max_inflight >= 1,
                  "batch_max_records": 1 <= self.batch_max_records <= 10_000,
                  "batch_max_bytes": BATCH_ENVELOPE_BYTES < self.batch_max_bytes
                  <= MAX_PAYLOAD_BYTES // 2,
                  "backoff_min_s": 0 < self.backoff_min_s <= self.backoff_max_s,
                  "protocol": self.protocol in ("auto", "5", "3.1.1"),
                  "gateway_timeout_s": 0 < self.gateway_timeout_s <= 3600,
                  "require_gateway": isinstance(self.require_gateway, bool)}
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"link {key}={getattr(self, key)!r} is out of range")
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ConfigError("link tls_cert_path and tls_key_path must be given together")

    @property
    def host(self) -> str:
        return str(urlsplit(self.broker_url).hostname)

    @property
    def tls(self) -> bool:
        return urlsplit(self.broker_url).scheme == "mqtts"

    @property
    def port(self) -> int:
        return urlsplit(self.broker_url).port or (8883 if self.tls else 1883)
