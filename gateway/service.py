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

Group commit: the paho network thread only queues messages (``QUEUE_MAX``; when full it
blocks, which stops it reading the socket, so the broker holds the rest — nothing is
acknowledged or dropped). One writer thread takes everything waiting (up to ``GROUP_MAX``,
never waiting for more), stores it in one store transaction (:meth:`Ingestor.handle_group`),
then runs the hooks and alert re-publication and acknowledges the messages in arrival
order. Each message carries the connection generation it arrived on: packet ids belong to
a connection, so a message from a connection since lost or replaced is never acknowledged
(the broker delivers it again on the new one). ``stop()`` lets the writer finish what is
queued, acknowledging it, before it disconnects.

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
import queue
import threading
import time
from dataclasses import dataclass
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
GROUP_MAX = 256  # messages per store transaction at most
QUEUE_MAX = 1024  # messages received and not yet stored; the network thread waits beyond
STOP_DRAIN_S = 30.0  # how long stop() waits for the writer to store what is queued


@dataclass(frozen=True)
class _Received:
    msg: mqtt.MQTTMessage
    generation: int
    received_ts: float


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
        self._queue: queue.Queue[_Received | None] = queue.Queue(QUEUE_MAX)
        self._writer: threading.Thread | None = None
        self._stopping = threading.Event()
        # the connection generation: bumped on every connect and disconnect, with
        # _ack_lock held, so no acknowledgement crosses from one connection to the next
        self._generation = 0
        self._ack_lock = threading.Lock()

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
        self._stopping.clear()
        self._queue = queue.Queue(QUEUE_MAX)
        self._writer = threading.Thread(target=self._writer_loop, args=(self._queue,),
                                        daemon=True, name="gateway-writer")
        self._writer.start()
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
                # the broker keeps at most this many QoS 1 messages unacknowledged with us,
                # so they fit the queue and the network thread does not have to wait
                props.ReceiveMaximum = QUEUE_MAX
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
            self._next_generation()
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
        """Store and acknowledge what is queued, disconnect, and close the store (if the
        gateway opened it). Messages arriving meanwhile stay unacknowledged."""
        self._stop.set()
        for thread in (self._fleet_thread, self._presence_thread):
            if thread is not None:
                thread.join(10)
        self._fleet_thread = self._presence_thread = None
        self._stopping.set()  # from now on arriving messages stay unacknowledged
        if self._writer is not None:
            try:  # the writer stores and acknowledges everything queued before this
                self._queue.put(None, timeout=STOP_DRAIN_S)
            except queue.Full:
                pass
            self._writer.join(STOP_DRAIN_S)
            if self._writer.is_alive():
                log.warning("the store did not take the queued messages within %g s; they "
                            "stay unacknowledged", STOP_DRAIN_S)
            self._writer = None
        if self._started:
            self._started = False
            if self._subscribed.is_set() and self.config.presence_interval_s > 0:
                self._say_offline()
            self._next_generation()  # a writer still busy after the wait acknowledges nothing
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
    def _next_generation(self) -> None:
        with self._ack_lock:
            self._generation += 1

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        self._next_generation()
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
        self._next_generation()
        self._subscribed.clear()
        if self._started and reason.is_failure:
            log.warning("disconnected from broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any,
                    msg: mqtt.MQTTMessage) -> None:
        if self.config.site == "+":
            self._note_site(msg.topic)
        item = _Received(msg, self._generation, time.time())
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:  # the writer is behind: stop reading the socket meanwhile
                continue
        # stopping: left unacknowledged, the broker delivers it again

    # --- the writer thread ----------------------------------------------------------------
    def _writer_loop(self, received: queue.Queue[_Received | None]) -> None:
        done = False
        while not done:
            first = received.get()
            if first is None:
                break
            group = [first]
            while len(group) < GROUP_MAX:  # what is waiting, no more: no added latency
                try:
                    item = received.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    done = True
                    break
                group.append(item)
            try:
                self._write(group)
            except Exception:  # the writer must outlive any one group
                log.exception("ingest of %d messages failed; left unacknowledged", len(group))
                self._schedule_recovery()

    def _write(self, group: list[_Received]) -> None:
        live = [r for r in group if r.generation == self._generation]
        if len(live) < len(group):
            log.info("%d messages from an earlier connection dropped unacknowledged (the "
                     "broker delivers them again)", len(group) - len(live))
        results = self.ingestor.handle_group(
            [(r.msg.topic, bytes(r.msg.payload), r.received_ts) for r in live])
        failed = False
        for received, result in zip(live, results, strict=True):
            msg = received.msg
            if isinstance(result, StoreError):
                if not failed:
                    log.error("store failed, message left unacknowledged for redelivery: %s",
                              result)
                failed = True
                continue
            for hook in self.hooks:
                try:
                    hook(msg.topic, msg.payload)
                except Exception:
                    log.exception("message hook failed on %s", msg.topic)
            if result.new_alerts and self.config.republish_alerts:
                self._republish(result)
            if msg.qos > 0:
                self._ack(received)
        if failed:
            self._schedule_recovery()

    def _ack(self, received: _Received) -> None:
        with self._ack_lock:
            if received.generation == self._generation:
                self.client.ack(received.msg.mid, received.msg.qos)

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
