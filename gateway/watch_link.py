"""The MQTT subscriber behind ``foreshock watch``: feeds a WatchModel from a broker.

A plain (not shared) MQTT 5 subscription on the site's device topics, clean session, so
the view starts from the retained ``state`` messages and live traffic. Read-only.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from foreshock.errors import LinkError
from gateway.config import broker
from gateway.watch import WatchModel, subscriptions

log = logging.getLogger(__name__)


class WatchSubscriber:
    """Subscribes to ``site`` on ``broker_url`` and feeds every message to ``model``."""

    def __init__(self, broker_url: str, site: str, model: WatchModel,
                 connect_timeout_s: float = 10.0, protocol: str = "5") -> None:
        self.addr = broker(broker_url)
        self.broker_url = broker_url
        self.site = site
        self.model = model
        self.connect_timeout_s = connect_timeout_s
        self.ready = threading.Event()
        self.protocol = protocol
        version = mqtt.MQTTv311 if protocol == "3.1.1" else mqtt.MQTTv5
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=version,
                                  client_id=f"foreshock-watch-{uuid.uuid4().hex[:8]}")
        if self.addr.username:
            self.client.username_pw_set(self.addr.username, self.addr.password)
        if self.addr.tls:
            self.client.tls_set()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the watch client: %s", reason)
            return
        if self.protocol == "3.1.1":
            client.subscribe([(f, 1) for f in subscriptions(self.site)])
        else:
            client.subscribe([(f, SubscribeOptions(qos=1)) for f in subscriptions(self.site)])

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.model.feed(msg.topic, bytes(msg.payload))

    def start(self) -> None:
        try:
            self.client.connect(self.addr.host, self.addr.port, 30)
        except OSError as exc:
            raise LinkError(f"cannot connect to broker {self.broker_url}: {exc}",
                            hint="check --broker and that the broker is running") from None
        self.client.loop_start()
        if not self.ready.wait(self.connect_timeout_s):
            self.stop()
            raise LinkError(f"broker {self.broker_url} did not accept the subscriptions")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
