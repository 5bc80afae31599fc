"""The gateway service: an MQTT 5 client that ingests device topics into the store.

Record topics (telemetry, alert, event, health, model/status) are subscribed as shared
subscriptions ``$share/<share_group>/...``, so several instances split the load and each
message reaches one of them. ``state`` is subscribed without sharing: shared subscriptions
get no retained messages, and every instance wants the fleet's current state at start
(store_state is idempotent).

Delivery is at least once end to end: the client runs with paho's ``manual_ack`` and
acknowledges a QoS 1 message only after the store transaction for it committed. If the
store fails the message stays unacknowledged and the broker delivers it again when the
session resumes (``clean_start`` false, ``session_expiry_s``); the database drops the
copies it already has.

Presence: once the broker granted the subscriptions (SUBACK, on every (re)connect) the
gateway publishes ``foreshock.gateway_presence/1`` on ``topics.gateway_presence(site)``
(QoS 1, not retained), then every ``presence_interval_s``, and ``online: false`` on stop.
Devices hold their outbox until they hear it after their own connect, so a broker that
PUBACKs records while no gateway is subscribed (after a broker restart) loses nothing.
The presence goes out on the same connection after the SUBSCRIBE, so the broker has the
subscriptions in place before any device can hear it.

Each newly stored alert is re-published, QoS 1, as a one-record ``foreshock.batch/1``
alert batch on ``topics.control_alert(site)``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from foreshock import messages, topics
from foreshock.errors import LinkError, StoreError
from gateway.config import GatewayConfig, broker
from gateway.ingest import Ingestor, IngestStats, Outcome
from gateway.store import Store, open_store

log = logging.getLogger(__name__)
SHARED_KINDS = ("telemetry", "alert", "event", "health", "model/status", "cmd/feedback")


class Gateway:
    """One gateway instance: ``start()``, ``stats()``, ``stop()``.

    ``on_message`` hooks (callables taking topic and payload) let the rollout manager
    observe model status messages without a second MQTT connection.
    """

    def __init__(self, config: GatewayConfig, store: Store | None = None) -> None:
        self.config = config
        self._own_store = store is None
        self.store = store if store is not None else open_store(config.db_url)
        self.ingestor = Ingestor(self.store, config.invalid_log_interval_s)
        self.client = self._make_client()
        self._subscribed = threading.Event()
        self._started = False
        self._recovering = False
        self._recovery_lock = threading.Lock()
        self._stop = threading.Event()
        self._fleet_thread: threading.Thread | None = None
        self._presence_thread: threading.Thread | None = None
        self._sites: frozenset[str] = frozenset() if config.site == "+" else \
            frozenset({config.site})
        self.hooks: list[Any] = []

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client = cfg.mqtt_client(cfg.effective_client_id(), manual_ack=True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        # back within ~0.2 s of a broker restart (devices hold their data until then);
        # paho annotates int but computes with floats
        client.reconnect_delay_set(0.2, 10)  # type: ignore[arg-type]
        return client

    def subscriptions(self) -> list[str]:
        """The topic filters this instance subscribes to."""
        site, group = self.config.site, self.config.share_group
        return [topics.device_filter("state", site),
                *(topics.device_filter(kind, site, group) for kind in SHARED_KINDS)]

    def start(self) -> None:
        """Connect, subscribe, and return once the broker granted the subscriptions."""
        self._connect()
        self.client.loop_start()
        self._started = True
        if not self._subscribed.wait(self.config.connect_timeout_s):
            self.stop()
            raise LinkError(f"broker {self.config.broker_url} did not accept the "
                            f"subscriptions within {self.config.connect_timeout_s:g} s")
        log.info("gateway %s ingesting %s into %s", self.config.effective_client_id(),
                 self.config.site, self.config.db_url.split("@")[-1])
        self._stop.clear()
        if self.config.fleet_interval_s > 0:
            self._fleet_thread = threading.Thread(target=self._fleet_loop, daemon=True,
                                                  name="gateway-fleet")
            self._fleet_thread.start()
        if self.config.presence_interval_s > 0:
            self._presence_thread = threading.Thread(target=self._presence_loop, daemon=True,
                                                     name="gateway-presence")
            self._presence_thread.start()

    def _presence_loop(self) -> None:
        while not self._stop.wait(self.config.presence_interval_s):
            if self._subscribed.is_set():
                self.publish_presence(online=True)

    def publish_presence(self, *, online: bool) -> list[Any]:
        """Announce this instance on the presence topic of every site it ingests (the
        configured site, or each site seen so far when it ingests ``+``)."""
        gateway_id = self.config.effective_client_id()
        infos = []
        for site in sorted(self._sites):
            payload = messages.gateway_presence_message(
                site, gateway_id, online=online, ts=time.time(),
                interval_s=self.config.presence_interval_s)
            infos.append(self.client.publish(topics.gateway_presence(site), payload, qos=1))
        return infos

    def _fleet_loop(self) -> None:
        while not self._stop.wait(self.config.fleet_interval_s):
            try:
                self.publish_fleet()
            except Exception:  # the summary is a view; ingest goes on without it
                log.exception("fleet summary not published")

    def publish_fleet(self) -> None:
        """Publish the retained fleet summary of every site this instance ingests."""
        from gateway.fleet import fleet_summary

        sites = [self.config.site] if self.config.site != "+" else \
            sorted({d.site for d in self.store.devices()})
        for site in sites:
            self.client.publish(topics.control_fleet(site),
                                messages.dumps(fleet_summary(self.store, site)), qos=1,
                                retain=True)

    def _connect(self) -> None:
        addr = broker(self.config.broker_url)
        try:
            if self.config.protocol == "3.1.1":
                self.client.connect(addr.host, addr.port, self.config.keepalive_s)
            else:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.config.session_expiry_s
                self.client.connect(addr.host, addr.port, self.config.keepalive_s,
                                    clean_start=False, properties=props)
        except OSError as exc:
            raise LinkError(f"cannot connect to broker {self.config.broker_url}: {exc}",
                            hint="check broker_url and that the broker is running") from None

    def _schedule_recovery(self) -> None:
        """After a store failure: reconnect in ``store_retry_s`` so the broker redelivers
        the messages left unacknowledged (the session persists, MQTT 5)."""
        with self._recovery_lock:
            if self._recovering or not self._started:
                return
            self._recovering = True
        timer = threading.Timer(self.config.store_retry_s, self._recover)
        timer.daemon = True
        timer.start()

    def _recover(self) -> None:
        try:
            if not self._started:
                return
            log.warning("reconnecting to the broker to get unacknowledged messages again")
            self.client.disconnect()
            self.client.loop_stop()
            self._subscribed.clear()
            self._connect()
            self.client.loop_start()
        except LinkError as exc:
            log.error("%s; retrying", exc)
            with self._recovery_lock:
                self._recovering = False
            self._schedule_recovery()
            return
        with self._recovery_lock:
            self._recovering = False

    def stop(self) -> None:
        """Disconnect and close the store (if the gateway opened it)."""
        self._stop.set()
        for thread in (self._fleet_thread, self._presence_thread):
            if thread is not None:
                thread.join(10)
        self._fleet_thread = self._presence_thread = None
        if self._started:
            self._started = False
            if self._subscribed.is_set() and self.config.presence_interval_s > 0:
                self._say_offline()
            self.client.disconnect()
            self.client.loop_stop()
        if self._own_store:
            self.store.close()
            self._own_store = False

    def _say_offline(self) -> None:
        for info in self.publish_presence(online=False):
            try:
                info.wait_for_publish(1.0)
            except (RuntimeError, ValueError):
                break

    def stats(self) -> IngestStats:
        return self.ingestor.stats()

    def __enter__(self) -> Gateway:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- paho callbacks (network thread) --------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the gateway: %s", reason)
            return
        self._subscribed.clear()
        if self.config.protocol == "3.1.1":
            client.subscribe([(f, 1) for f in self.subscriptions()])
        else:
            client.subscribe([(f, SubscribeOptions(qos=1)) for f in self.subscriptions()])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error("broker refused subscriptions: %s", ", ".join(failed))
            return
        self._subscribed.set()
        if self.config.presence_interval_s > 0:
            self.publish_presence(online=True)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self._subscribed.clear()
        if self._started and reason.is_failure:
            log.warning("disconnected from broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any,
                    msg: mqtt.MQTTMessage) -> None:
        if self.config.site == "+":
            self._note_site(msg.topic)
        try:
            outcome = self.ingestor.handle(msg.topic, bytes(msg.payload), time.time())
        except StoreError as exc:
            log.error("store failed, message left unacknowledged for redelivery: %s", exc)
            self._schedule_recovery()
            return
        except Exception:  # a payload we did not foresee must not kill the network thread
            log.exception("unexpected error on %s; message counted invalid and dropped",
                          msg.topic)
            self.ingestor.count_invalid(msg.topic)
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)
            return
        for hook in self.hooks:
            try:
                hook(msg.topic, msg.payload)
            except Exception:
                log.exception("message hook failed on %s", msg.topic)
        if outcome.new_alerts and self.config.republish_alerts:
            self._republish(outcome)
        if msg.qos > 0:
            client.ack(msg.mid, msg.qos)

    def _note_site(self, topic: str) -> None:
        try:
            site = topics.parse(topic)[0]
        except ValueError:
            return
        if site not in self._sites:
            self._sites = self._sites | {site}  # replaced, never mutated: the timer reads it
            if self._subscribed.is_set() and self.config.presence_interval_s > 0:
                self.publish_presence(online=True)

    def _republish(self, outcome: Outcome) -> None:
        for record in outcome.new_alerts:
            batch = messages.Batch(outcome.site, outcome.device, outcome.boot_id, "alert",
                                   (record,), time.time())
            self.client.publish(topics.control_alert(outcome.site),
                                messages.encode_batch(batch), qos=1)
        self.ingestor.count_published(len(outcome.new_alerts))
