"""Health records and the status file of the running agent (a part of :class:`Agent`).

:class:`HealthReporting` is mixed into :class:`agent.service.Agent`: it builds the health
record body from the agent's :class:`agent.monitor.Monitor` and counters, the
``data_quality`` deltas since the last record, and the status document (secrets redacted
with :func:`agent.security.redact`) that ``foreshock agent status`` reads.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.monitor import Monitor, PrometheusExporter
from agent.sdnotify import Notifier
from agent.security import redact
from agent.window import Window, Windower
from foreshock import __version__, messages
from foreshock.errors import ForeshockError
from foreshock.files import atomic_write

log = logging.getLogger(__name__)

QUALITY_COUNTERS = ("seq_gaps", "missing_frames", "duplicates", "out_of_order", "rate_changes",
                    "dropped_streams", "non_finite")
SOURCE_LOSSES = ("bad_frames", "dropped_bytes", "overflow_frames")


@dataclass(frozen=True)
class Health:
    """``body``: the health record body (:meth:`agent.monitor.Monitor.health_body` plus
    ``model``, ``outbox_depth`` per class and ``link``); ``counters``: its flat counters
    plus the windower's and the source's counters as nested tables."""

    uptime_s: float
    counters: dict[str, Any]
    body: dict[str, Any]


class HealthReporting:
    """Health and status of an :class:`agent.service.Agent` (the attributes below are the
    agent's)."""

    config: AgentConfig
    source: Any
    monitor: Monitor
    windower: Windower
    queue: deque[Window]
    counters: dict[str, int]
    outbox: Any
    link: Any
    exporter: PrometheusExporter | None
    notifier: Notifier
    pipeline: Any
    started: float
    started_ts: float
    last_alert: dict[str, Any] | None
    _quality: dict[str, int]

    @property
    def model_info(self) -> dict[str, str]:
        return dict(self.pipeline.model_info)

    def uptime_s(self) -> float:
        return time.monotonic() - self.started

    def _event(self, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def _extra(self) -> dict[str, dict[str, float]]:
        """Counter groups for the health record and the metrics: windower and source."""
        source = getattr(self.source, "stats", {}) or {}
        return {"window": dict(self.windower.counters),
                "source": {k: v for k, v in list(source.items()) if isinstance(v, (int, float))}}

    def _sync_monitor(self) -> dict[str, dict[str, int]] | None:
        """Copy the agent's counters and gauges into the monitor; outbox depth per class."""
        mon = self.monitor
        mon.counters.update(self.counters)
        mon.set_gauge("queued_windows", len(self.queue))
        if self.outbox is None:
            return None
        depth = {k: {"rows": d.rows, "bytes": d.size_bytes}
                 for k, d in self.outbox.depth().items()}
        for kind, d in depth.items():
            mon.set_gauge(f"outbox_rows_{kind}", d["rows"])
            mon.set_gauge(f"outbox_bytes_{kind}", d["bytes"])
        mon.set_gauge("outbox_depth", sum(d["rows"] for d in depth.values()))
        return depth

    def health(self) -> Health:
        """The health record body and counters now (see :class:`Health`)."""
        depth = self._sync_monitor()
        uptime = round(self.uptime_s(), 3)
        body = self.monitor.health_body(uptime, extra=self._extra())
        body["model"] = self.model_info
        if depth is not None:
            body["outbox_depth"] = depth
        if self.link is not None:
            body["link"] = dict(self.link.stats())
        counters: dict[str, Any] = dict(body["counters"])
        counters["windower"] = dict(self.windower.counters)
        counters["source"] = dict(getattr(self.source, "stats", {}) or {})
        return Health(uptime, counters, body)

    def latency_ms(self) -> dict[str, dict[str, float]]:
        """Per stage: count, mean, max, p50/p90/p99 in ms (see agent.monitor.StageTimer)."""
        return self.monitor.timer.stats()

    def _quality_deltas(self) -> dict[str, int]:
        """Data-quality counters that grew since the last health record."""
        now = {k: self.windower.counters[k] for k in QUALITY_COUNTERS}
        now.update({f"source_{k}": int(v) for k, v in
                    (getattr(self.source, "stats", {}) or {}).items() if k in SOURCE_LOSSES})
        now["dropped_windows"] = self.counters["dropped_windows"]
        deltas = {k: v - self._quality.get(k, 0) for k, v in now.items()
                  if v > self._quality.get(k, 0)}
        self._quality = now
        return deltas

    def emit_health(self) -> Health:
        """Store a health record (and a data_quality event if counters of lost or dropped
        data grew), rewrite the status file."""
        deltas = self._quality_deltas()
        if deltas:
            self._event({"type": "data_quality", "detail": {"since_last_health": deltas}})
        self.counters["health"] += 1
        health = self.health()
        if self.outbox is not None:
            try:
                self.outbox.put("health", health.body, time.time())
            except ForeshockError as exc:
                self.counters["outbox_errors"] += 1
                log.error("outbox: %s", exc)
        self.write_status(health)
        self.notifier.status(self.status_line())
        return health

    def status_line(self) -> str:
        bad = [k for k, v in self.monitor.quality.states().items() if v == "bad"]
        return (f"{self.counters['windows_processed']} windows, "
                f"{self.counters['alerts']} alert records, "
                f"{self.counters['dropped_windows']} dropped"
                + (f", bad data on {', '.join(bad)}" if bad else ""))

    def status(self, health: Health | None = None) -> dict[str, Any]:
        """The status document (``foreshock agent status``), secrets redacted."""
        health = health or self.health()
        link = self.link
        body = health.body
        return dict(redact({
            "schema": "foreshock.agent_status/2", "device": self.config.device.device_id,
            "site": self.config.device.site, "pid": os.getpid(), "agent_version": __version__,
            "started_ts": self.started_ts, "updated_ts": time.time(),
            "uptime_s": health.uptime_s, "model": self.model_info,
            "link": {"connected": bool(link.connected) if link is not None else False,
                     "broker": self.config.link.broker_url,
                     **(body.get("link") or {})},
            "counters": health.counters, "gauges": body["gauges"],
            "outbox_depth": body.get("outbox_depth", {}), "latency_ms": body["latency_ms"],
            "channels": body["channels"], "drift": body["drift"],
            "drift_watched": self.monitor.drift is not None,
            "metrics_url": self.exporter.url if self.exporter is not None else None,
            "last_alert": self.last_alert, "streams": self.pipeline.streams(),
        }))

    def write_status(self, health: Health | None = None) -> Path:
        """Write the status JSON atomically (temp file, fsync, rename)."""
        path = self.config.service.status_file
        atomic_write(path, messages.dumps(json.loads(json.dumps(self.status(health),
                                                                 default=str))))
        return path
