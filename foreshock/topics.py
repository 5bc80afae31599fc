"""MQTT topic names. Every topic string in Foreshock is built here (spec: docs/topics.md).

Device topics live under ``foreshock/v1/<site>/<device>/``::

    state            retained; birth message on connect, last will marks offline
    telemetry        batched feature/score records                      device -> gateway
    alert            alert records (raised / updated / cleared)          device -> gateway
    event            data_quality, drift, model and outbox events        device -> gateway
    health           periodic health and counters                        device -> gateway
    model/status     OTA progress of a model bundle                      device -> gateway
    frames/<ch>      raw sensor frames (docs/protocol.md), sensor node -> agent
    cmd/<name>       commands to the device                              gateway -> device
    model/offer      a model bundle offer (manifest)                     gateway -> device
    model/chunk      bundle file chunks                                  gateway -> device

Site-wide control-room topics live under ``foreshock/v1/<site>/_control/``.
Site and device ids match ``[A-Za-z0-9][A-Za-z0-9_.-]{0,31}``.
"""

from __future__ import annotations

import re
from typing import Final

from foreshock.errors import ConfigError

ROOT: Final = "foreshock/v1"
ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")

DEVICE_KINDS: Final = ("state", "telemetry", "alert", "event", "health", "model/status",
                        "cmd/feedback")
RECORD_KINDS: Final = ("telemetry", "alert", "event", "health")
COMMANDS: Final = ("rebaseline", "feedback", "rollback", "snapshot", "ping")


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a valid site or device id, else raise ConfigError."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise ConfigError(
            f"{what} {value!r} is invalid: use 1-32 characters of A-Z a-z 0-9 _ . - "
            "starting with a letter or digit"
        )
    return value


def device_root(site: str, device: str) -> str:
    return f"{ROOT}/{check_id(site, 'site')}/{check_id(device, 'device')}"


def state(site: str, device: str) -> str:
    return f"{device_root(site, device)}/state"


def record(site: str, device: str, kind: str) -> str:
    """Topic for a batch of records of ``kind`` (telemetry, alert, event, health)."""
    if kind not in RECORD_KINDS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {RECORD_KINDS}")
    return f"{device_root(site, device)}/{kind}"


def model_status(site: str, device: str) -> str:
    return f"{device_root(site, device)}/model/status"


def frames(site: str, device: str, channel: int | None = None) -> str:
    """Raw frame topic for one channel, or a wildcard over all channels."""
    suffix = "+" if channel is None else str(int(channel))
    return f"{device_root(site, device)}/frames/{suffix}"


def command(site: str, device: str, name: str) -> str:
    if name not in COMMANDS:
        raise ValueError(f"unknown command {name!r}; expected one of {COMMANDS}")
    return f"{device_root(site, device)}/cmd/{name}"


def commands(site: str, device: str) -> str:
    """Subscription filter for every command addressed to one device."""
    return f"{device_root(site, device)}/cmd/+"


def model_offer(site: str, device: str) -> str:
    return f"{device_root(site, device)}/model/offer"


def model_chunk(site: str, device: str) -> str:
    return f"{device_root(site, device)}/model/chunk"


def control_alert(site: str) -> str:
    """Where the gateway re-publishes every stored alert for the control room."""
    return f"{ROOT}/{check_id(site, 'site')}/_control/alert"


def control_fleet(site: str) -> str:
    """Retained fleet summary the gateway publishes for control-room views."""
    return f"{ROOT}/{check_id(site, 'site')}/_control/fleet"


def gateway_presence(site: str) -> str:
    """Where gateway instances announce themselves live (not retained; the payload names the
    instance). Devices hold their outbox until a gateway has announced itself since their
    latest connect."""
    return f"{ROOT}/{check_id(site, 'site')}/_control/gateway"


def is_control(topic: str) -> bool:
    """True for site-wide control-room topics (``foreshock/v1/<site>/_control/...``), which
    a ``+`` in a device filter also matches."""
    parts = topic.split("/")
    return len(parts) > 3 and parts[3] == "_control"


def device_filter(kind: str, site: str = "+", share_group: str | None = None) -> str:
    """Subscription filter for one device topic kind over all devices of a site.

    With ``share_group`` the filter is an MQTT 5 shared subscription, so several gateway
    instances split the load: ``$share/<group>/foreshock/v1/<site>/+/<kind>``.
    """
    if kind not in DEVICE_KINDS:
        raise ValueError(f"unknown device topic kind {kind!r}; expected one of {DEVICE_KINDS}")
    base = f"{ROOT}/{site}/+/{kind}"
    return f"$share/{share_group}/{base}" if share_group else base


def parse(topic: str) -> tuple[str, str, str]:
    """Split a device topic into (site, device, kind); raises ValueError otherwise."""
    parts = topic.split("/")
    if len(parts) < 5 or "/".join(parts[:2]) != ROOT:
        raise ValueError(f"not a Foreshock device topic: {topic!r}")
    site, device, kind = parts[2], parts[3], "/".join(parts[4:])
    if not ID_RE.match(site) or not ID_RE.match(device):
        raise ValueError(f"bad site or device in topic {topic!r}")
    return site, device, kind
