"""The running agent: one plain loop from source to outbox and link.

    source.read -> Monitor.quality.observe_frame (every frame) -> Windower.push_many
      -> window queue -> Monitor.quality.check_batch -> extract (batched, scoreable
      windows only) -> Baseline.z -> Detector.score (one call per step)
      -> Decider.decide_batch -> Monitor.update_drift -> Outbox -> Link.drain

Data quality (``[monitor]``, docs/monitoring.md): a window that fails a blocking integrity
check (flatline, clipping, spikes, non-finite, rate drift) is not scored, so a broken
sensor raises a ``data_quality`` event (when its channel turns bad, and again when it
recovers) instead of a failure alert; it is counted in ``windows_unscored``. Drift is
watched against the bundle's ``training_stats`` when it ships them.

Backpressure: windows wait in a bounded queue (``service.max_queued_windows``); when it is
full the **oldest** window is dropped and counted (``dropped_windows``): fresh data matters
more than stale data, and memory never grows. Each step processes at most
``service.batch_windows`` windows.

Records: a ``telemetry`` record per window (every ``service.telemetry_every``-th), an
``alert`` record per incident change, ``event`` records (baseline commissioned, data
quality, drift, model), and a ``health`` record every ``service.health_interval_s``: the
body of :meth:`agent.monitor.Monitor.health_body` (flat counters, gauges, latency
percentiles per stage, channel states, drift) plus ``model``, ``outbox_depth`` per class and
``link``; it is preceded by a ``data_quality`` event (``since_last_health``) when sequence
gaps, duplicates, reordering, rate changes, bad frames or dropped windows grew since the
last one. The same snapshot, secrets redacted, is written atomically to the status file
that ``foreshock agent status`` reads. ``[monitor] prometheus_port`` serves the same figures
on loopback.

Model updates (agent/model_updates.py): ``model/offer``, ``model/chunk`` and
``cmd/rollback`` from the link are queued for the loop and handled by the OTA receiver
(agent/ota.py); its answers go out on ``model/status``, every scored batch feeds a candidate
in shadow, and the loop switches models when the receiver promotes or rolls back.

Commands (agent/commands.py): ``cmd/rebaseline``, ``cmd/feedback`` and ``cmd/rollback``
change state, so they run only when signed by a ``model.command_keys`` key, fresh and not
a replay; anything else is logged and counted in ``bad_commands``, never executed.

systemd: READY=1 once the loop runs, WATCHDOG=1 at half of WATCHDOG_USEC, STATUS= with a
one-line summary, STOPPING=1 on shutdown (see agent/sdnotify.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent import pipeline
from agent.baselines import StateBank
from agent.blas import ONE_BLAS_THREAD
from agent.commands import CommandHandling
from agent.config import AgentConfig
from agent.health import HealthReporting
from agent.model_updates import ModelUpdates
from agent.monitor import Monitor, PrometheusExporter
from agent.sdnotify import Notifier
from agent.sources import Source
from agent.window import Window, Windower, stacked
from foreshock import messages
from foreshock.errors import ForeshockError, MessageError

log = logging.getLogger(__name__)

CLOSE_DRAIN_S = 2.0


class Agent(ModelUpdates, HealthReporting, CommandHandling):
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
        self.queue: deque[Window] = deque(maxlen=config.service.max_queued_windows)
        self.counters: dict[str, int] = dict.fromkeys(
            ("steps", "frames", "windows_processed", "windows_unscored", "dropped_windows",
             "alerts", "events", "telemetry", "health", "outbox_errors", "link_errors",
             "commands", "bad_commands"), 0)
        self.monitor = Monitor(config.monitor)
        self._watch_drift()
        self.exporter: PrometheusExporter | None = None
        self.started = time.monotonic()
        self.started_ts = time.time()
        self.last_alert: dict[str, Any] | None = None
        self._commands: deque[tuple[str, dict[str, Any]]] = deque(maxlen=64)
        self._command_keys: list[Ed25519PublicKey] | None = None   # loaded on first use
        self._command_ids = messages.CommandReplayGuard()
        self._quality: dict[str, int] = {}
        self._next_health = self.started + config.service.health_interval_s
        self._next_watchdog = self.started
        self._next_drain = self.started
        self.outbox: Any = None
        self.link: Any = None
        self.learning: StateBank | None = None
        if store:
            self._open_outbox()
            self._open_learning()
            self._open_ota()
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

    def _open_learning(self) -> None:
        """Operating-state baselines saved in the state dir (docs/learning.md)."""
        self.learning = StateBank(self.config.learning, self.pipeline.spec.feature_names,
                                  state_dir=self.config.service.state_dir)
        try:
            self.learning.load()
        except ForeshockError as exc:
            log.warning("baselines not restored, learning again: %s", exc)
        self.pipeline.learning = self.learning

    def _attach_learning(self) -> None:
        """A switched model gets the bank; its threshold is commissioned again."""
        if self.learning is not None and self.pipeline.learning is not self.learning:
            self.learning.thresholds.clear()
            self.pipeline.learning = self.learning

    # -- the loop ----------------------------------------------------------------------------
    def start(self) -> None:
        """Connect the link (it retries in the background), start the metrics endpoint if
        configured, and tell systemd we are ready."""
        if self.link is not None:
            self.link.start()
        mc = self.config.monitor
        if mc.prometheus_port and self.exporter is None:
            self.exporter = PrometheusExporter(
                lambda: self.monitor.metrics(self.uptime_s(), self._extra()),
                host=mc.prometheus_host, port=mc.prometheus_port)
            log.info("metrics on %s", self.exporter.url)
        self.notifier.ready(f"running model {self.model_info.get('name', '?')}")
        log.info("agent %s/%s running; model %s", self.config.device.site,
                 self.config.device.device_id, self.model_info)

    def _watch_drift(self) -> None:
        """Drift against the running bundle's training statistics (off without them)."""
        try:
            self.monitor.set_drift(self.pipeline.training_stats, self.pipeline.input_features)
        except ForeshockError as exc:
            self.monitor.set_drift(None, ())
            log.warning("drift monitoring off: %s", exc)
        if self.monitor.drift is None:
            log.info("drift monitoring off: model %s has no training_stats", self.model_info)

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set or a finite source is exhausted; then close. BLAS runs
        one thread meanwhile (see :mod:`agent.blas`)."""
        with ONE_BLAS_THREAD:
            self.start()
            try:
                while not stop.is_set():
                    self.step()
                    if self.source.exhausted and not self.queue:
                        break
            finally:
                self.close()

    def step(self, timeout_s: float | None = None) -> int:
        """Read, check, window, process one batch, and do periodic work; returns windows
        processed."""
        self.counters["steps"] += 1
        t = time.perf_counter()
        frames = self.source.read(self.config.service.read_timeout_s
                                  if timeout_s is None else timeout_s)
        if frames:
            t = self._lap("source", t)
            self.counters["frames"] += len(frames)
            self.monitor.quality.observe_frames(frames)
            windows = self.windower.push_many(frames)
            if windows:
                self._enqueue(windows)
            self._lap("window", t, max(1, len(windows)))
        batch = self._next_batch()
        if batch:
            self._process(batch)
        self._periodic()
        return len(batch)

    def _next_batch(self) -> list[Window]:
        q = self.queue
        return [q.popleft() for _ in range(min(len(q), self.config.service.batch_windows))]

    def _enqueue(self, windows: list[Window]) -> None:
        """Queue windows; a full queue drops its oldest (``deque(maxlen)``), counted."""
        over = len(self.queue) + len(windows) - self.config.service.max_queued_windows
        if over > 0:
            self.counters["dropped_windows"] += over
            self.monitor.count("windows_dropped", over)
        self.queue.extend(windows)

    def _lap(self, stage: str, since: float, count: int = 1) -> float:
        """Record a stage's time per window: the timer spreads the batch's time over its
        ``count`` windows in one slice, so percentiles are per window."""
        now = time.perf_counter()
        self.monitor.timer.record(stage, now - since, count)
        return now

    def _check(self, batch: list[Window]) -> tuple[list[Window], Any, list[dict[str, Any]]]:
        """Integrity checks: (scoreable windows, their samples stacked, data_quality events)."""
        t = time.perf_counter()
        samples = stacked(batch)       # the windower's array when the batch is a run of it
        if samples is None:
            samples = np.stack([w.samples for w in batch])
        verdicts = self.monitor.quality.check_windows(batch, samples)
        flagged = [q for q in verdicts if q.issues or q.events]   # few: clean is the rule
        events = [body for q in flagged for body in q.events]
        if all(q.scoreable for q in flagged):
            self._lap("quality", t, len(batch))
            return batch, samples, events
        keep = [q.scoreable for q in verdicts]
        self._lap("quality", t, len(batch))
        self.counters["windows_unscored"] += len(batch) - sum(keep)
        return [w for w, k in zip(batch, keep, strict=True) if k], samples[keep], events

    def _process(self, batch: list[Window]) -> None:
        good, samples, events = self._check(batch)
        at_s = batch[-1].end_s
        out = pipeline.StepOutput()
        if good:
            n = len(good)
            out = self.pipeline.process(good, lambda stage, t: self._lap(stage, t, n), samples)
            if out.anomaly.size:
                events += self.monitor.update_drift(out.z, out.anomaly, out.alerted, at_s=at_s)
                self._shadow(out.z_all, out)
        events += out.events
        self.counters["windows_processed"] += len(good)
        t = time.perf_counter()
        if self.on_result is not None:
            for result in out.results:
                self.on_result(result)
        if out.alerts:
            self.last_alert = out.alerts[-1]
        self.counters["alerts"] += len(out.alerts)
        self.counters["events"] += len(events)
        every = self.config.service.telemetry_every
        base = self.counters["windows_processed"] - len(good)
        telemetry = out.telemetry(every, base)
        self.counters["telemetry"] += len(telemetry)
        if self.outbox is not None:
            self._store(out.alerts, events, telemetry, at_s)
        self.monitor.counters.update(self.counters)     # the loop is the monitor's writer
        self.monitor.set_gauge("queued_windows", len(self.queue))
        self._lap("outbox", t, len(batch))

    def _store(self, alerts: list[dict[str, Any]], events: list[dict[str, Any]],
               telemetry: list[tuple[dict[str, Any], float]], at_s: float) -> None:
        """The step's records in one fsynced transaction (one fsync per step), then, if it
        held alerts, a drain that publishes them at once (not at the drain tick) without
        waiting for PUBACKs (the next drain settles them). A record that cannot be encoded
        must not cost the others: then each class is stored on its own, alerts first."""
        records = [("alert", body, float(body.get("window_ts", at_s))) for body in alerts]
        records += [("event", body, at_s) for body in events]
        records += [("telemetry", body, ts) for body, ts in telemetry]
        try:
            try:
                self.outbox.put_records(records)
            except MessageError as exc:
                log.error("outbox: %s; storing each class on its own", exc)
                self._store_each(alerts, events, telemetry, at_s)
        except ForeshockError as exc:
            self.counters["outbox_errors"] += 1
            log.error("outbox: %s", exc)
        if alerts:
            self.drain(timeout_s=0.0)
            self._next_drain = 0.0

    def _store_each(self, alerts: list[dict[str, Any]], events: list[dict[str, Any]],
                    telemetry: list[tuple[dict[str, Any], float]], at_s: float) -> None:
        for body in alerts:
            self.outbox.put("alert", body, float(body.get("window_ts", at_s)))
        if events:
            self.outbox.put_many("event", [(e, at_s) for e in events])
        if telemetry:
            self.outbox.put_many("telemetry", telemetry)

    def _periodic(self) -> None:
        now = time.monotonic()
        while self._commands:
            self._command(*self._commands.popleft())
        self._handle_ota()
        self._attach_learning()
        if self.notifier.watchdog_interval_s and now >= self._next_watchdog:
            self.notifier.watchdog()
            self._next_watchdog = now + self.notifier.watchdog_interval_s
        if now >= self._next_health:
            self._next_health = now + self.config.service.health_interval_s
            self.emit_health()
            self._save_learning()
        if self.link is not None and now >= self._next_drain:
            self._next_drain = now + self.config.link.drain_interval_s
            self.drain()

    def _save_learning(self) -> None:
        if self.learning is not None:
            try:
                self.learning.save()
            except OSError as exc:
                log.error("baselines not saved: %s", exc)

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

    # -- shutdown ----------------------------------------------------------------------------
    def _final_drain(self) -> None:
        """Deliver what the outbox holds before stopping: wait for the link to connect and
        (with ``link.require_gateway``) for a gateway to announce itself, for at most
        ``link.connect_timeout_s`` + ``link.gateway_timeout_s``. What is left stays in the
        outbox for the next start."""
        if self.link is None or self.outbox is None:
            return
        cfg = self.config.link
        deadline = time.monotonic() + cfg.connect_timeout_s + cfg.gateway_timeout_s
        while time.monotonic() < deadline:
            if sum(d.rows for d in self.outbox.depth().values()) == 0:
                return
            if self.link.connected and self.link.gateway_present:
                self.drain(timeout_s=CLOSE_DRAIN_S)
            else:
                time.sleep(0.05)

    def close(self) -> None:
        """Process what is queued, write health, drain once more, close outbox and link."""
        if self._closed:
            return
        self._closed = True
        self.notifier.stopping("flushing the outbox")
        while self.queue:
            self._process(self._next_batch())
        self._save_learning()
        if self.outbox is not None:
            self.emit_health()
            self._final_drain()
            self.write_status()  # a replay (no outbox) leaves no status file behind
        if self.link is not None:
            self.link.stop()
        if self.exporter is not None:
            self.exporter.close()
        if self.outbox is not None:
            self.outbox.close()
        self.source.close()
        self.notifier.close()
        log.info("agent stopped: %s", self.status_line())
