"""``MqttSource``: raw frames from the MQTT frame topic of one sensor node,
``foreshock/v1/<site>/<device>/frames/<channel>`` (all channels unless one is given).

One frame per message. paho's network thread only queues payloads (a bounded queue; on
overflow the oldest payloads are dropped and counted); decoding happens in ``read``.
paho reconnects on its own and the subscription is renewed on every connect.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from agent.sources import decode_counted
from foreshock import topics
from foreshock.errors import ConfigError
from foreshock.wire import Frame

log = logging.getLogger(__name__)


class MqttSource:
    """Subscribes to ``topics.frames(site, device, channel)`` on ``broker_url``."""

    def __init__(self, broker_url: str, site: str, device: str, channel: int | None = None,
                 max_queued: int = 10_000, batch: int = 256) -> None:
        parts = urlsplit(broker_url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"broker_url {broker_url!r} is invalid: use mqtt://host:port "
                              "or mqtts://host:port")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise ConfigError(f"broker_url {broker_url!r} has a bad port") from None
        self.topic = topics.frames(site, device, channel)
        self.broker_url = broker_url
        self._queue: collections.deque[bytes] = collections.deque()
        self._max_queued = max_queued
        self._batch = batch
        self._ready = threading.Condition()
        self._closed = False
        self.stats: dict[str, int] = {"frames": 0, "bad_frames": 0, "dropped_bytes": 0,
                                      "overflow_frames": 0, "connects": 0}
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"fs-frames-{uuid.uuid4().hex[:12]}")
        if parts.scheme == "mqtts":
            self.client.tls_set()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 10)
        self.client.connect_async(parts.hostname, port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason: object, properties: object = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT broker %s refused the frame subscriber: %s", self.broker_url,
                        reason)
            return
        self.stats["connects"] += 1
        client.subscribe(self.topic, qos=0)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int,
                      reasons: object, properties: object = None) -> None:
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object,
                    message: mqtt.MQTTMessage) -> None:
        with self._ready:
            if len(self._queue) >= self._max_queued:
                dropped = self._queue.popleft()
                self.stats["overflow_frames"] += 1
                self.stats["dropped_bytes"] += len(dropped)
            self._queue.append(bytes(message.payload))
            self._ready.notify()

    def read(self, timeout_s: float) -> list[Frame]:
        if self._closed:
            return []
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._ready:
            while not self._queue and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            count = min(len(self._queue), self._batch)
            payloads = [self._queue.popleft() for _ in range(count)]
        frames: list[Frame] = []
        for data in payloads:
            decode_counted(data, frames, self.stats)
        self.stats["frames"] += len(frames)
        return frames

    @property
    def exhausted(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.client.disconnect()
        self.client.loop_stop()
        with self._ready:
            self._ready.notify_all()
