"""Publishing the outbox over the link: :class:`Link`, a
:class:`~agent.link.connection.Connection` that also drains.

A drain (from the agent's loop, one caller at a time) reads pending records class by class
(alerts first), packs them into :class:`~foreshock.messages.Batch` messages bounded by
``batch_max_records`` and ``batch_max_bytes``, publishes them with QoS 1 inside a window of
``max_inflight`` messages, and acks exactly the row ids of a message once its PUBACK
arrives. A new connection (or none) forgets what was in flight; the next drain sends those
rows again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from agent.outbox import DRAIN_ORDER, Outbox
from foreshock import __version__, topics
from foreshock.messages import Batch, dumps

from .connection import Connection
from .options import BATCH_ENVELOPE_BYTES, LinkConfig

log = logging.getLogger(__name__)


@dataclass
class _Inflight:
    kind: str
    row_ids: list[int]


class Link(Connection):
    """MQTT connection of one device. ``start()`` it, ``drain(outbox)`` often, ``stop()``."""

    def __init__(self, config: LinkConfig, *, boot_id: str, agent_version: str = __version__,
                 model: dict[str, str] | None = None) -> None:
        super().__init__(config, boot_id=boot_id, agent_version=agent_version, model=model)
        self._inflight: dict[tuple[int, int], _Inflight] = {}
        self._cursor: dict[str, int] = {}
        self._cursor_gen = -1
        self._drain_lock = threading.Lock()

    # -- draining the outbox ---------------------------------------------------------------
    def drain(self, outbox: Outbox, *, timeout_s: float | None = None) -> int:
        """Publish pending records until none is left and every message is acked, the link
        drops, or ``timeout_s`` passes. Returns how many records the broker acknowledged
        (and the outbox deleted) during this call. Not connected: returns 0 at once.
        Messages still in flight at a timeout are acked by a later call on the same
        connection. With ``require_gateway`` and no gateway present nothing new is published
        (the records wait in the outbox). An :class:`OutboxError` from the outbox
        propagates."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        acked = 0
        with self._drain_lock:
            while True:
                self._wake.clear()
                acked += self._settle(outbox)
                gen, client = self._current
                if not self.connected or client is None:
                    self._forget(-1)
                    return acked
                if self._cursor_gen != gen:
                    self._forget(gen)
                if self.gateway_present:
                    sent = self._fill(outbox, gen, client)
                else:
                    sent = 0
                    if not self._inflight:
                        self._count("drains_held")
                if not sent and not self._inflight:
                    return acked
                left_s = 0.2 if deadline is None else deadline - time.monotonic()
                if left_s <= 0:
                    return acked
                self._wake.wait(min(left_s, 0.2))

    def _forget(self, gen: int) -> None:
        """A new connection (or none): what was in flight is neither acked nor resent now;
        the cursors restart so the next drain sends every unacked row again."""
        if self._inflight:
            log.info("%d messages were in flight when the link changed; they will be resent",
                     len(self._inflight))
        self._inflight.clear()
        self._cursor.clear()
        self._cursor_gen = gen

    def _settle(self, outbox: Outbox) -> int:
        rows: list[int] = []
        while True:
            try:
                gen, mid, failed = self._acks.get_nowait()
            except queue.Empty:
                break
            item = self._inflight.pop((gen, mid), None)
            if item is None:
                continue
            if failed:
                self._count("rejected_msgs")
                log.warning("broker rejected a batch of %d %s records; they are resent "
                            "after a reconnect", len(item.row_ids), item.kind)
            else:
                rows.extend(item.row_ids)
        if rows:
            outbox.ack(rows)
            self._count("acked_records", len(rows))
        return len(rows)

    def _envelope(self, boot_id: str, kind: str, records_json: str) -> bytes:
        """A Batch payload (same bytes as ``dumps(Batch(...).to_json())``) around records
        that are already JSON, so the drain never decodes and re-encodes bodies."""
        head = Batch(self.config.site, self.config.device_id, boot_id, kind, (),
                     sent_ts=time.time()).to_json()
        del head["records"]
        return (dumps(head)[:-1].decode() + ',"records":' + records_json + "}").encode()

    def _fill(self, outbox: Outbox, gen: int, client: mqtt.Client) -> int:
        cfg, sent = self.config, 0
        while len(self._inflight) < self._window:
            for kind in DRAIN_ORDER:
                boot, row_ids, records = outbox.pending_json(
                    kind, cfg.batch_max_records, after=self._cursor.get(kind, 0),
                    max_bytes=cfg.batch_max_bytes - BATCH_ENVELOPE_BYTES)
                if row_ids:
                    break
            else:
                return sent
            info = client.publish(topics.record(cfg.site, cfg.device_id, kind),
                                  self._envelope(boot, kind, records), qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return sent
            self._inflight[(gen, info.mid)] = _Inflight(kind, row_ids)
            self._cursor[kind] = row_ids[-1]
            with self._stats_lock:
                self._stats["inflight_peak"] = max(self._stats["inflight_peak"],
                                                   len(self._inflight))
            self._count("published_msgs")
            self._count("published_records", len(row_ids))
            sent += 1
        return sent
