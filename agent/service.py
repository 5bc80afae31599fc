"""The running agent: one plain loop from source to outbox and link.

    source.read -> Windower.push -> window queue -> extract (batched) -> Baseline.z
      -> Detector.score (one call per step) -> Decider -> Outbox -> Link.drain

Backpressure: windows wait in a bounded queue (``service.max_queued_windows``); when it is
full the **oldest** window is dropped and counted (``dropped_windows``): fresh data matters
more than stale data, and memory never grows. Each step processes at most
``service.batch_windows`` windows.

Records: a ``telemetry`` record per window (every ``service.telemetry_every``-th), an
``alert`` record per incident change, ``event`` records (baseline commissioned, data
quality, model), and a ``health`` record every ``service.health_interval_s`` with uptime,
counters, outbox depth per class and latency percentiles per stage, preceded by a
``data_quality`` event when sequence gaps, duplicates, reordering, rate changes, bad frames
or dropped windows grew since the last one. The same snapshot is written atomically to the
status file that ``foreshock agent status`` reads.

systemd: READY=1 once the loop runs, WATCHDOG=1 at half of WATCHDOG_USEC, STATUS= with a
one-line summary, STOPPING=1 on shutdown (see agent/sdnotify.py).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent import pipeline
from agent.config import AgentConfig
from agent.sdnotify import Notifier
from agent.sources import Source
from agent.window import Window, Windower
from foreshock import __version__, messages, topics
from foreshock.errors import ForeshockError

log = logging.getLogger(__name__)

STAGES = ("read", "window", "features", "inference", "decision", "outbox", "link")
LATENCY_SAMPLES = 1024
CLOSE_DRAIN_S = 2.0
QUALITY_COUNTERS = ("seq_gaps", "missing_frames", "duplicates", "out_of_order", "rate_changes",
                    "dropped_streams", "non_finite")


@dataclass(frozen=True)
class Health:
    uptime_s: float
    counters: dict[str, Any]


class Agent:
    """Composes the pipeline for one device; see the module doc.

    ``detector``/``bundle``: see :class:`agent.pipeline.Pipeline`. ``store=False`` skips the
    outbox and the link (replay). ``on_result`` sees every processed window's result.
    """

    def __init__(self, config: AgentConfig, source: Source, *, detector: Any = None,
                 bundle: Any = None, store: bool = True,
                 on_result: Callable[[pipeline.WindowResult], None] | None = None,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.source = source
        self.pipeline = pipeline.Pipeline(config, detector=detector, bundle=bundle)
        self.windower = Windower(self.pipeline.spec)
        self.on_result = on_result
        self.notifier = notifier or Notifier()
        self.queue: deque[Window] = deque()
        self.counters: dict[str, int] = dict.fromkeys(
            ("steps", "frames", "windows_processed", "dropped_windows", "alerts", "events",
             "telemetry", "health", "outbox_errors", "link_errors", "commands",
             "bad_commands"), 0)
        self.latency: dict[str, deque[float]] = {
            s: deque(maxlen=LATENCY_SAMPLES) for s in STAGES}
        self.started = time.monotonic()
        self.started_ts = time.time()
        self.last_alert: dict[str, Any] | None = None
        self._commands: deque[tuple[str, dict[str, Any]]] = deque(maxlen=64)
        self._quality: dict[str, int] = {}
        self._next_health = self.started + config.service.health_interval_s
        self._next_watchdog = self.started
        self._next_drain = self.started
        self.outbox: Any = None
        self.link: Any = None
        if store:
            self._open_outbox()
        self._closed = False

    # -- composition -----------------------------------------------------------------------
    def _open_outbox(self) -> None:
        from agent.outbox import Outbox

        path = self.config.outbox.path or self.config.service.outbox_file
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(path, self.config.outbox)
        for moved in self.outbox.recovered:
            self._event({"type": "outbox", "detail": {
                "status": "corrupt_file_replaced", "moved_to": str(moved)}})
        if self.config.link.broker_url:
            from agent.link import Link

            device = self.config.device
            self.link = Link(self.config.link.link_config(device.site, device.device_id),
                             boot_id=self.outbox.boot_id, model=self.model_info)
            self.link.subscribe_commands(self._on_command)

    def _on_command(self, topic: str, payload: bytes) -> None:
        """Called from the link's thread: parse and queue it for the loop."""
        try:
            _, _, kind = topics.parse(topic)
            command = messages.decode_command(payload)
        except (ValueError, ForeshockError) as exc:
            self.counters["bad_commands"] += 1
            log.warning("ignoring message on %s: %s", topic, exc)
            return
        if kind.startswith("cmd/"):
            self._commands.append((kind[4:], dict(command["args"])))

    @property
    def model_info(self) -> dict[str, str]:
        return self.pipeline.model_info

    # -- the loop ----------------------------------------------------------------------------
    def start(self) -> None:
        """Connect the link (it retries in the background) and tell systemd we are ready."""
        if self.link is not None:
            self.link.start()
        self.notifier.ready(f"running model {self.model_info.get('name', '?')}")
        log.info("agent %s/%s running; model %s", self.config.device.site,
                 self.config.device.device_id, self.model_info)

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set or a finite source is exhausted; then close."""
        self.start()
        try:
            while not stop.is_set():
                self.step()
                if self.source.exhausted and not self.queue:
                    break
        finally:
            self.close()

    def step(self, timeout_s: float | None = None) -> int:
        """Read, window, process one batch, and do periodic work; returns windows processed."""
        self.counters["steps"] += 1
        t = time.perf_counter()
        frames = self.source.read(self.config.service.read_timeout_s
                                  if timeout_s is None else timeout_s)
        t = self._lap("read", t)
        self.counters["frames"] += len(frames)
        for frame in frames:
            for window in self.windower.push(frame):
                self._enqueue(window)
        self._lap("window", t)
        batch = [self.queue.popleft()
                 for _ in range(min(len(self.queue), self.config.service.batch_windows))]
        if batch:
            self._process(batch)
        self._periodic()
        return len(batch)

    def _enqueue(self, window: Window) -> None:
        if len(self.queue) >= self.config.service.max_queued_windows:
            self.queue.popleft()
            self.counters["dropped_windows"] += 1
        self.queue.append(window)

    def _lap(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.latency[stage].append(now - since)
        return now

    def _process(self, batch: list[Window]) -> None:
        out = self.pipeline.process(batch, self._lap)
        self.counters["windows_processed"] += len(batch)
        t = time.perf_counter()
        for result in out.results:
            if self.on_result is not None:
                self.on_result(result)
        for body in out.alerts:
            self.last_alert = body
        self.counters["alerts"] += len(out.alerts)
        self.counters["events"] += len(out.events)
        every = self.config.service.telemetry_every
        telemetry = [(r.telemetry, r.window.end_s) for r in out.results
                     if (self.counters["windows_processed"] + r.index) % every == 0]
        self.counters["telemetry"] += len(telemetry)
        if self.outbox is not None:
            self._store(out.alerts, out.events, telemetry, batch[-1].end_s)
        self._lap("outbox", t)

    def _store(self, alerts: list[dict[str, Any]], events: list[dict[str, Any]],
               telemetry: list[tuple[dict[str, Any], float]], at_s: float) -> None:
        try:
            for body in alerts:
                self.outbox.put("alert", body, float(body.get("window_ts", at_s)))
            if events:
                self.outbox.put_many("event", [(e, at_s) for e in events])
            if telemetry:
                self.outbox.put_many("telemetry", telemetry)
        except ForeshockError as exc:
            self.counters["outbox_errors"] += 1
            log.error("outbox: %s", exc)

    def _periodic(self) -> None:
        now = time.monotonic()
        while self._commands:
            self._command(*self._commands.popleft())
        if self.notifier.watchdog_interval_s and now >= self._next_watchdog:
            self.notifier.watchdog()
            self._next_watchdog = now + self.notifier.watchdog_interval_s
        if now >= self._next_health:
            self._next_health = now + self.config.service.health_interval_s
            self.emit_health()
        if self.link is not None and now >= self._next_drain:
            self._next_drain = now + self.config.link.drain_interval_s
            self.drain()

    def _command(self, name: str, args: dict[str, Any]) -> None:
        self.counters["commands"] += 1
        if name == "rebaseline":
            self.pipeline.rebaseline(args.get("channel"))
            self._event({"type": "baseline", "detail": {"status": "rebaseline", **args}})
        else:
            log.info("command %s ignored by the agent loop", name)

    def _event(self, body: dict[str, Any]) -> None:
        self.counters["events"] += 1
        if self.outbox is not None:
            try:
                self.outbox.put("event", body, time.time())
            except ForeshockError as exc:
                self.counters["outbox_errors"] += 1
                log.error("outbox: %s", exc)

    def drain(self, timeout_s: float | None = None) -> None:
        """Publish what waits in the outbox, if the link is up."""
        if self.link is None or self.outbox is None:
            return
        t = time.perf_counter()
        wait_s = self.config.link.drain_timeout_s if timeout_s is None else timeout_s
        try:
            self.link.drain(self.outbox, timeout_s=wait_s)
        except ForeshockError as exc:
            self.counters["link_errors"] += 1
            log.debug("link drain: %s", exc)
        self._lap("link", t)

    # -- model updates -------------------------------------------------------------------------
    def replace_model(self, path: Path | str, trusted_keys: list[Path] | None = None) -> bool:
        """Verify and switch to another bundle; on any failure keep the running model.

        A new model scores on its own scale, so every stream commissions again (baseline
        and threshold). Emits a ``model`` event either way; returns whether it switched.
        """
        from agent.features import DEFAULT_SPEC
        from agent.inference import load_bundle

        keys = list(trusted_keys if trusted_keys is not None else self.config.model.trusted_keys)
        old = self.model_info
        try:
            loaded = load_bundle(path, keys, pipeline.Pipeline._spec_hashes(),
                                 backend=self.config.model.backend,
                                 feature_names=DEFAULT_SPEC.feature_names)
            new = pipeline.Pipeline(self.config, bundle=loaded)
        except ForeshockError as exc:
            log.warning("model update refused, keeping %s: %s", old, exc)
            self._event({"type": "model", "detail": {
                "status": "refused", "bundle": str(path), "reason": str(exc), "running": old}})
            return False
        if new.spec != self.pipeline.spec:
            self.queue.clear()
            self.windower = Windower(new.spec)
        self.pipeline = new
        if self.link is not None:
            self.link.set_model(self.model_info)
        self._event({"type": "model", "detail": {
            "status": "loaded", "bundle": str(path), "previous": old, "running": self.model_info}})
        log.info("model switched from %s to %s", old, self.model_info)
        return True

    # -- health and status -------------------------------------------------------------------
    def health(self) -> Health:
        counters: dict[str, Any] = dict(self.counters)
        counters["windower"] = dict(self.windower.counters)
        counters["source"] = dict(getattr(self.source, "stats", {}) or {})
        counters["queued_windows"] = len(self.queue)
        counters["latency_ms"] = self.latency_ms()
        if self.outbox is not None:
            counters["outbox_depth"] = {k: {"rows": d.rows, "bytes": d.size_bytes}
                                        for k, d in self.outbox.depth().items()}
        if self.link is not None:
            counters["link"] = dict(self.link.stats())
        return Health(round(time.monotonic() - self.started, 3), counters)

    def latency_ms(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage, values in self.latency.items():
            if values:
                arr = np.fromiter(values, dtype=np.float64) * 1e3
                p50, p99 = np.percentile(arr, [50, 99])
                out[stage] = {"p50": round(float(p50), 4), "p99": round(float(p99), 4)}
        return out

    def _quality_deltas(self) -> dict[str, int]:
        """Data-quality counters that grew since the last health record."""
        now = {k: self.windower.counters[k] for k in QUALITY_COUNTERS}
        now.update({f"source_{k}": int(v) for k, v in
                    (getattr(self.source, "stats", {}) or {}).items() if isinstance(v, int)})
        now["dropped_windows"] = self.counters["dropped_windows"]
        deltas = {k: v - self._quality.get(k, 0) for k, v in now.items()
                  if v > self._quality.get(k, 0)}
        self._quality = now
        return deltas

    def emit_health(self) -> Health:
        """Store a health record (and a data_quality event if checks fired), rewrite the
        status file."""
        deltas = self._quality_deltas()
        if deltas:
            self._event({"type": "data_quality", "detail": {"since_last_health": deltas}})
        health = self.health()
        self.counters["health"] += 1
        if self.outbox is not None:
            try:
                self.outbox.put("health", {"uptime_s": health.uptime_s,
                                           "counters": health.counters,
                                           "model": self.model_info}, time.time())
            except ForeshockError as exc:
                self.counters["outbox_errors"] += 1
                log.error("outbox: %s", exc)
        self.write_status(health)
        self.notifier.status(self.status_line())
        return health

    def status_line(self) -> str:
        return (f"{self.counters['windows_processed']} windows, "
                f"{self.counters['alerts']} alert records, "
                f"{self.counters['dropped_windows']} dropped")

    def status(self, health: Health | None = None) -> dict[str, Any]:
        health = health or self.health()
        link = self.link
        return {
            "schema": "foreshock.agent_status/1", "device": self.config.device.device_id,
            "site": self.config.device.site, "pid": os.getpid(), "agent_version": __version__,
            "started_ts": self.started_ts, "updated_ts": time.time(),
            "uptime_s": health.uptime_s, "model": self.model_info,
            "link": {"connected": bool(link.connected) if link is not None else False,
                     "broker": _redact(self.config.link.broker_url)},
            "counters": health.counters, "last_alert": self.last_alert,
            "streams": self.pipeline.streams(),
        }

    def write_status(self, health: Health | None = None) -> Path:
        """Write the status JSON atomically (temp file, fsync, rename)."""
        path = self.config.service.status_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        data = messages.dumps(json.loads(json.dumps(self.status(health), default=str)))
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    # -- shutdown ----------------------------------------------------------------------------
    def close(self) -> None:
        """Process what is queued, write health, drain once more, close outbox and link."""
        if self._closed:
            return
        self._closed = True
        self.notifier.stopping("flushing the outbox")
        while self.queue:
            batch = [self.queue.popleft()
                     for _ in range(min(len(self.queue), self.config.service.batch_windows))]
            self._process(batch)
        if self.outbox is not None:
            self.drain(timeout_s=CLOSE_DRAIN_S)
            self.emit_health()
            self.drain(timeout_s=CLOSE_DRAIN_S)
        self.write_status()
        if self.link is not None:
            self.link.stop()
        if self.outbox is not None:
            self.outbox.close()
        self.source.close()
        self.notifier.close()
        log.info("agent stopped: %s", self.status_line())


def _redact(url: str) -> str:
    """Drop any user:password@ part of a broker URL."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return url
