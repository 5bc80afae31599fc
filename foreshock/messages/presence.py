"""Presence: the device's retained ``state`` message and the gateway's presence message.

The retained ``state`` message (also the last will, with ``online`` false)::

    {"schema": "foreshock.state/1", "site": ..., "device": ..., "online": true,
     "boot_id": ..., "ts": ..., "agent_version": "0.1.0", "model": {"name":..,"version":..}}

A gateway instance announces itself on the gateway presence topic (docs/topics.md "Gateway
presence").
"""

from __future__ import annotations

import math
from typing import Any, Final

from foreshock.errors import MessageError
from foreshock.messages.codec import NUM, check_schema, dumps, loads, need

STATE_SCHEMA: Final = "foreshock.state/1"
GATEWAY_PRESENCE_SCHEMA: Final = "foreshock.gateway_presence/1"


def state_message(site: str, device: str, *, online: bool, boot_id: str, ts: float,
                  agent_version: str, model: dict[str, str] | None = None) -> bytes:
    return dumps({
        "schema": STATE_SCHEMA, "site": site, "device": device, "online": online,
        "boot_id": boot_id, "ts": ts, "agent_version": agent_version, "model": model or {},
    })


def decode_state(payload: bytes | str) -> dict[str, Any]:
    obj = loads(payload)
    check_schema(obj, STATE_SCHEMA)
    need(obj, "device", (str,), "state")
    need(obj, "online", (bool,), "state")
    need(obj, "boot_id", (str,), "state")
    need(obj, "ts", NUM, "state")
    return obj


def gateway_presence_message(site: str, gateway: str, *, online: bool, ts: float,
                             interval_s: float) -> bytes:
    """A gateway instance (``gateway`` = its MQTT client id) says it is live and subscribed
    (``online`` true, repeated every ``interval_s``) or leaving (``online`` false)."""
    return dumps({"schema": GATEWAY_PRESENCE_SCHEMA, "site": site, "gateway": gateway,
                  "online": online, "ts": ts, "interval_s": interval_s})


def decode_gateway_presence(payload: bytes | str) -> dict[str, Any]:
    obj = loads(payload)
    check_schema(obj, GATEWAY_PRESENCE_SCHEMA)
    need(obj, "site", (str,), "gateway presence")
    need(obj, "gateway", (str,), "gateway presence")
    need(obj, "online", (bool,), "gateway presence")
    need(obj, "ts", NUM, "gateway presence")
    interval_s = need(obj, "interval_s", NUM, "gateway presence")
    if not (math.isfinite(interval_s) and interval_s >= 0):
        raise MessageError(f"gateway presence: interval_s {interval_s!r} must be >= 0")
    return obj
