"""``foreshock gateway deploy``: run one rollout over MQTT until it completes or aborts.

Uses its own MQTT client: a plain subscription on the site's ``model/status`` topics and
QoS 1 publications of offers, chunks and rollback commands. Devices still downloading are
offered again every ``reoffer_s`` (they answer with the chunks they still miss), so a
device that was offline when the rollout started resumes when it comes back.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from foreshock import topics
from foreshock.errors import ConfigError, LinkError
from gateway.config import broker
from gateway.rollout import RolloutManager, RolloutPlan
from gateway.store import Store

log = logging.getLogger(__name__)


def targets(store: Store, to: str) -> tuple[str, tuple[str, ...]]:
    """``SITE`` (every registered device of the site) or ``SITE/ITEM[,ITEM...]`` where an
    item is a device id or a group given as a glob over registered ids (``pump-*``)."""
    site, _, rest = to.partition("/")
    topics.check_id(site, "site")
    registered = [d.device for d in store.devices(site)]
    if not rest:
        devices = tuple(registered)
    else:
        picked: list[str] = []
        for item in (i for i in rest.split(",") if i):
            if any(c in item for c in "*?["):
                picked += fnmatch.filter(registered, item)
            else:
                picked.append(topics.check_id(item, "device"))
        devices = tuple(dict.fromkeys(picked))
    if not devices:
        raise ConfigError(f"--to {to!r} names no devices",
                          hint="list them with `foreshock gateway fleet`, or use SITE/DEVICE")
    return site, devices


def deploy(plan: RolloutPlan, broker_url: str, store: Store, trusted_keys: Sequence[Any], *,
           timeout_s: float = 3600.0, reoffer_s: float = 60.0,
           progress: Callable[[RolloutManager], None] | None = None,
           command_key: Ed25519PrivateKey | None = None) -> RolloutManager:
    """Run the rollout; returns the manager (``state`` complete, aborted or timed out).

    ``command_key`` signs the ``cmd/rollback`` sent on abort (devices refuse unsigned ones).
    """
    addr = broker(broker_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                         client_id=f"foreshock-deploy-{uuid.uuid4().hex[:8]}")
    if addr.username:
        client.username_pw_set(addr.username, addr.password)
    if addr.tls:
        client.tls_set()
    manager = RolloutManager(plan, store, lambda t, p, q: _publish(client, t, p, q),
                             trusted_keys, command_key=command_key)
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, m: manager.on_status(m.topic, bytes(m.payload))
    try:
        client.connect(addr.host, addr.port, 30)
    except OSError as exc:
        raise LinkError(f"cannot connect to broker {broker_url}: {exc}") from None
    client.subscribe(topics.device_filter("model/status", plan.site), qos=1)
    client.loop_start()
    try:
        if not subscribed.wait(10):
            raise LinkError(f"broker {broker_url} did not accept the status subscription")
        manager.start()
        _wait(manager, timeout_s, reoffer_s, progress)
    finally:
        client.disconnect()
        client.loop_stop()
    return manager


def _publish(client: mqtt.Client, topic: str, payload: bytes, qos: int) -> None:
    client.publish(topic, payload, qos=qos)


def _wait(manager: RolloutManager, timeout_s: float, reoffer_s: float,
          progress: Callable[[RolloutManager], None] | None) -> None:
    deadline = time.monotonic() + timeout_s
    next_offer = time.monotonic() + reoffer_s
    last: dict[str, int] = {}
    while True:  # report first, then poll: the canary phase is always reported
        summary = manager.summary()
        if progress and summary != last:
            progress(manager)
            last = summary
        if manager.done() or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
        if time.monotonic() >= next_offer:
            manager.reoffer()
            next_offer = time.monotonic() + reoffer_s
    if not manager.done():
        log.warning("rollout %s still %s after %g s: %s", manager.rollout_id, manager.state,
                    timeout_s, manager.summary())
