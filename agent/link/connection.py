"""The connection half of :class:`agent.link.Link`: one supervisor thread and its MQTT client.

The supervisor connects (MQTT 5, falling back to 3.1.1 when the broker refuses the
protocol), runs the network loop, and after a loss waits :func:`backoff_s` before a fresh
client reconnects. Every connection starts with a retained ``state`` birth message; the
retained last will says ``online: false``. The MQTT callbacks land here: CONNACK (the
in-flight window from the broker's Receive Maximum), PUBACKs (queued for the drain),
subscriptions, commands (handed to the subscriber's callback) and gateway presence (the
gate of ``require_gateway``). Publishing from the outbox is in :mod:`agent.link.drain`.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from foreshock import __version__, topics
from foreshock.errors import MessageError
from foreshock.messages import decode_gateway_presence, state_message

from .options import LinkConfig

log = logging.getLogger(__name__)

UNSUPPORTED_PROTOCOL: Final = 132  # CONNACK reason code (3.1.1 return code 1 maps here)
CommandCallback = Callable[[str, bytes], None]


def backoff_s(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before reconnect ``attempt`` (0-based): ``min_s * 2**attempt`` capped at
    ``max_s``, then a uniform jitter over its upper half so a fleet does not reconnect in
    step after a broker restart."""
    delay = min(max_s, min_s * 2.0 ** min(attempt, 60))
    return rng.uniform(delay / 2, delay)


class Connection:
    """The MQTT connection of one device (lifecycle, supervisor, callbacks, gateway gate);
    :class:`agent.link.Link` adds the drain."""

    def __init__(self, config: LinkConfig, *, boot_id: str, agent_version: str = __version__,
                 model: dict[str, str] | None = None) -> None:
        self.config = config
        self.boot_id = boot_id
        self.agent_version = agent_version
        self._model = dict(model or {})
        self._current: tuple[int, mqtt.Client | None] = (0, None)  # generation, client
        self._connected_once = False
        self._window = config.max_inflight
        self._connack_seen = False
        self._up_since_connect = False
        self._silent_tries = 0
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._acks: queue.SimpleQueue[tuple[int, int, bool]] = queue.SimpleQueue()
        self._stats_lock = threading.Lock()
        self._stats = dict.fromkeys(
            ("published_msgs", "published_records", "acked_records", "reconnects", "connects",
             "connect_failures", "rejected_msgs", "command_errors", "inflight_peak",
             "subscriptions", "subscribe_failures", "drains_held", "gateway_presences",
             "presence_errors", "presence_refused", "stray_messages"), 0)
        self._gateway_until = 0.0  # monotonic time the gate stays open to; 0: closed
        self._presence_refused = False  # the broker's ACL denies the presence topic
        self._protocol = (MQTTProtocolVersion.MQTTv311 if config.protocol == "3.1.1"
                          else MQTTProtocolVersion.MQTTv5)
        self._command_cb: CommandCallback | None = None
        self._rng = random.Random()
        self._thread: threading.Thread | None = None
        self._topic_state = topics.state(config.site, config.device_id)
        self._topic_presence = topics.gateway_presence(config.site)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the supervisor thread; it connects and reconnects until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._supervise, name="foreshock-link",
                                            daemon=True)
            self._thread.start()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def protocol(self) -> str:
        """The MQTT version in use or next to try: ``"5"`` or ``"3.1.1"``."""
        return "5" if self._protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Mark the device offline (retained state), disconnect cleanly, join the thread."""
        self._stop.set()
        client = self._current[1]
        if client is not None and self.connected:
            info = client.publish(self._topic_state, self._state(online=False), qos=1,
                                  retain=True)
            try:
                info.wait_for_publish(min(timeout_s, 2.0))
            except (RuntimeError, ValueError):
                pass
            client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    @property
    def gateway_present(self) -> bool:
        """True when the link may publish from the outbox: always without
        ``require_gateway``; with it, a gateway announced itself live since the latest
        connect and within ``gateway_timeout_s``."""
        if not self.config.require_gateway or self._presence_refused:
            return True
        return self.connected and time.monotonic() < self._gateway_until

    def stats(self) -> dict[str, int]:
        with self._stats_lock:
            out = dict(self._stats)
        out["gateway_present"] = int(self.gateway_present)
        return out

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[name] += n

    def set_model(self, model: dict[str, str]) -> None:
        """Record the running model (name, version) and republish the retained state."""
        self._model = dict(model)
        client = self._current[1]
        if client is not None and self.connected:
            client.publish(self._topic_state, self._state(online=True), qos=1, retain=True)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        """Publish one message outside the outbox (model status); False when the link is
        down or the client refuses it, so the caller keeps it and tries again later."""
        client = self._current[1]
        if client is None or not self.connected:
            return False
        info = client.publish(topic, payload, qos=qos)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def subscribe_commands(self, callback: CommandCallback) -> None:
        """Deliver every command, model offer and model chunk as ``callback(topic, payload)``.

        The callback runs on the network thread: keep it short (queue the work)."""
        self._command_cb = callback
        client = self._current[1]
        if client is not None and self.connected:
            self._subscribe(client)

    def _command_filters(self) -> tuple[str, ...]:
        """What :meth:`subscribe_commands` subscribes to: this device's commands, model
        offers and model chunks."""
        site, dev = self.config.site, self.config.device_id
        return (topics.commands(site, dev), topics.model_offer(site, dev),
                topics.model_chunk(site, dev))

    def _subscribe(self, client: mqtt.Client) -> None:
        filters = [(self._topic_presence, 1)] if self.config.require_gateway else []
        if self._command_cb is not None:
            filters += [(f, 1) for f in self._command_filters()]
        if filters:
            client.subscribe(filters)

    def _state(self, *, online: bool) -> bytes:
        return state_message(self.config.site, self.config.device_id, online=online,
                             boot_id=self.boot_id, ts=time.time(),
                             agent_version=self.agent_version, model=self._model)

    # -- connection supervisor -----------------------------------------------------------
    def _new_client(self) -> mqtt.Client:
        cfg = self.config
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        client = mqtt.Client(CallbackAPIVersion.VERSION2,
                             client_id=cfg.client_id or f"foreshock-{cfg.site}-{cfg.device_id}",
                             protocol=self._protocol, clean_session=None if v5 else True,
                             reconnect_on_failure=False)
        client.connect_timeout = cfg.connect_timeout_s
        client.max_inflight_messages_set(cfg.max_inflight)
        client.will_set(self._topic_state, self._state(online=False), qos=1, retain=True)
        if cfg.tls:
            client.tls_set(ca_certs=cfg.tls_ca_path, certfile=cfg.tls_cert_path,
                           keyfile=cfg.tls_key_path)
        gen = self._current[0] + 1
        client.on_connect = lambda c, _u, _f, rc, props: self._on_connect(c, gen, rc, props)
        client.on_disconnect = lambda c, _u, _f, rc, _p: self._on_disconnect(c, gen, rc)
        client.on_publish = lambda _c, _u, mid, rc, _p: self._on_publish(gen, mid, rc)
        client.on_message = self._on_message
        client.on_subscribe = lambda _c, _u, _mid, codes, _p: self._on_subscribe(codes)
        self._current = (gen, client)
        return client

    def _supervise(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            client = self._new_client()
            started = time.monotonic()
            got_connack = self._run_connection(client)
            up_s = time.monotonic() - started
            if self._up_since_connect and up_s >= min(30.0, self.config.backoff_max_s):
                attempt = 0  # a connection that held resets the backoff; a flapping one not
            if self._stop.is_set():
                break
            if not got_connack and self.config.protocol == "auto":
                self._toggle_protocol_on_silence()
            self._stop.wait(backoff_s(attempt, self.config.backoff_min_s,
                                      self.config.backoff_max_s, self._rng))
            attempt = min(attempt + 1, 60)

    def _run_connection(self, client: mqtt.Client) -> bool:
        """Connect and run the network loop until the connection ends; True if CONNACKed."""
        self._connack_seen = self._up_since_connect = False
        cfg = self.config
        try:
            if self._protocol == MQTTProtocolVersion.MQTTv5:
                client.connect(cfg.host, cfg.port, cfg.keepalive_s, clean_start=True)
            else:
                client.connect(cfg.host, cfg.port, cfg.keepalive_s)
        except (OSError, ValueError) as exc:
            self._count("connect_failures")
            log.info("MQTT connect to %s failed: %s", cfg.broker_url, exc)
            return False
        deadline = time.monotonic() + cfg.connect_timeout_s
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and not self._stop.is_set():
            rc = client.loop(timeout=0.05)
            if not self._connack_seen and time.monotonic() > deadline:
                log.info("MQTT broker %s sent no CONNACK in %.1f s", cfg.broker_url,
                         cfg.connect_timeout_s)
                client.disconnect()
                break
        if self._stop.is_set() and client.is_connected():
            for _ in range(40):  # let stop() flush its offline message and DISCONNECT
                if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        if not self._connack_seen:
            self._count("connect_failures")
        self._mark_down()
        return self._connack_seen

    def _toggle_protocol_on_silence(self) -> None:
        """A broker that closes on an MQTT 5 CONNECT without answering may be 3.1.1 only."""
        self._silent_tries += 1
        if self._silent_tries % 2 == 0:
            self._protocol = (MQTTProtocolVersion.MQTTv311
                              if self._protocol == MQTTProtocolVersion.MQTTv5
                              else MQTTProtocolVersion.MQTTv5)

    def _mark_down(self) -> None:
        if self._connected.is_set():
            log.warning("MQTT link to %s lost", self.config.broker_url)
        self._connected.clear()
        self._wake.set()

    def _on_connect(self, client: mqtt.Client, gen: int, rc: Any, props: Any) -> None:
        self._connack_seen = True
        # paho does not enforce the broker's MQTT 5 Receive Maximum: our window does
        self._window = min(self.config.max_inflight,
                           int(getattr(props, "ReceiveMaximum", self.config.max_inflight)))
        if rc.is_failure:
            self._count("connect_failures")
            if rc.value == UNSUPPORTED_PROTOCOL and self.config.protocol == "auto":
                self._protocol = MQTTProtocolVersion.MQTTv311
                log.info("broker refused MQTT 5; falling back to 3.1.1")
            else:
                log.warning("MQTT broker %s refused the connection: %s",
                            self.config.broker_url, rc)
            client.disconnect()
            return
        self._silent_tries = 0
        self._up_since_connect = True
        self._count("connects")
        if self._connected_once:
            self._count("reconnects")
        self._connected_once = True
        self._gateway_until = 0.0  # only a presence heard on this connection opens the gate
        client.publish(self._topic_state, self._state(online=True), qos=1, retain=True)
        self._subscribe(client)
        if gen == self._current[0]:
            self._connected.set()
            self._wake.set()
        log.info("MQTT link up to %s (MQTT %s)", self.config.broker_url, self.protocol)

    def _on_disconnect(self, client: mqtt.Client, gen: int, rc: Any) -> None:
        log.info("MQTT disconnected from %s: %s", self.config.broker_url, rc)
        if gen == self._current[0]:
            self._connected.clear()
            self._wake.set()

    def _on_publish(self, gen: int, mid: int, rc: Any) -> None:
        self._acks.put((gen, mid, bool(getattr(rc, "is_failure", False))))
        self._wake.set()

    def _on_subscribe(self, codes: list[Any]) -> None:
        if self.config.require_gateway and codes and getattr(codes[0], "is_failure", False):
            # the presence filter is always first; an ACL without it cannot gate: the link
            # drains as without require_gateway rather than hold the outbox for ever
            if not self._presence_refused:
                log.warning("broker refused the gateway presence topic %s (%s): draining "
                            "without the gateway gate; grant devices read access to it",
                            self._topic_presence, codes[0])
            self._presence_refused = True
            self._count("presence_refused")
        failed = [c for c in codes if getattr(c, "is_failure", False)]
        self._count("subscribe_failures" if failed else "subscriptions")
        if failed:
            log.warning("broker refused the command subscriptions: %s", failed)

    def _on_message(self, client: mqtt.Client, _userdata: Any,
                    msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._topic_presence:
            self._on_presence(client, msg)
            return
        callback = self._command_cb
        if callback is None:
            return
        if not any(mqtt.topic_matches_sub(f, msg.topic) for f in self._command_filters()):
            # not a topic we subscribed to (a broker that routes wrongly, a session with
            # other subscriptions): never a command, whatever its payload says
            self._count("stray_messages")
            log.debug("ignoring a message on %s: not subscribed", msg.topic)
            return
        try:
            callback(msg.topic, bytes(msg.payload))
        except Exception:
            self._count("command_errors")
            log.exception("command callback failed for %s", msg.topic)

    def _on_presence(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        """A retained presence may be stale (left by anything); only a live one counts, and
        only on the current connection."""
        if msg.retain or client is not self._current[1] or not self.config.require_gateway:
            return
        try:
            presence = decode_gateway_presence(bytes(msg.payload))
        except MessageError as exc:
            self._count("presence_errors")
            log.info("ignored a bad gateway presence message: %s", exc)
            return
        was_present = self.gateway_present
        if presence["online"]:
            self._gateway_until = time.monotonic() + self.config.gateway_timeout_s
            self._count("gateway_presences")
        else:
            self._gateway_until = 0.0
        if self.gateway_present != was_present:
            log.info("gateway %s is %s", presence["gateway"],
                     "present: draining the outbox" if presence["online"]
                     else "gone: holding the outbox")
        self._wake.set()
