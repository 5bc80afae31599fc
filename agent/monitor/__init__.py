"""The agent watching itself: data integrity, drift, latency (spec: docs/monitoring.md).

One :class:`Monitor` per agent; the service loop calls it like this::

    mon = Monitor(cfg.monitor, DriftMonitor.from_manifest(manifest, input_features))
    for frame in source.read(timeout_s):
        mon.quality.observe_frame(frame)                # raw NaN, int16 saturation, gaps, rate
        windows += windower.push(frame)
    with mon.timer.measure("quality", count=len(windows)):  # or timer.record(stage, s, n)
        verdicts = mon.quality.check_batch(np.stack([w.samples for w in windows]),
                                           [WindowMeta.of(w) for w in windows])
    for q in verdicts:
        for body in q.events:                           # data_quality transitions only
            outbox.put("event", body, ts)
    good = [w for w, q in zip(windows, verdicts) if q.scoreable]  # never score a bad window
    with mon.timer.measure("features", count=len(good)):
        ...features, inference, decision...
    for body in mon.update_drift(features, scores, alerts, at_s=ts):  # after scoring a batch
        outbox.put("event", body, ts)
    mon.count("windows_dropped", n); mon.set_gauge("outbox_depth", depth)
    outbox.put("health", mon.health_body(uptime_s, extra={"window": windower.counters}), ts)

Parts: :mod:`agent.monitor.quality` (``DataQualityMonitor``, ``WindowMeta``, ``Quality``),
:mod:`agent.monitor.drift` (``DriftMonitor``, ``training_stats``),
:mod:`agent.monitor.latency` (``StageTimer``) and :mod:`agent.monitor.prometheus`
(``PrometheusExporter``, loopback only). All but ``StageTimer.measure`` and the exporter are
pure: no clock, no I/O; times travel in the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.monitor.drift import DriftConfig, DriftMonitor, training_stats
from agent.monitor.latency import STAGES, StageTimer
from agent.monitor.prometheus import (
    Metric,
    PrometheusExporter,
    loopback_host,
    metric_name,
    render,
)
from agent.monitor.quality import DataQualityMonitor, Issue, Quality, QualityConfig, WindowMeta
from foreshock.errors import ConfigError

__all__ = [
    "STAGES", "DataQualityMonitor", "DriftConfig", "DriftMonitor", "Issue", "Metric", "Monitor",
    "MonitorConfig", "PrometheusExporter", "Quality", "QualityConfig", "StageTimer",
    "WindowMeta", "render", "training_stats",
]


@dataclass(frozen=True)
class MonitorConfig:
    """The ``[monitor]`` config section. ``prometheus_port`` 0 = no endpoint."""

    quality: QualityConfig = field(default_factory=QualityConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    latency_capacity: int = 1024
    prometheus_host: str = "127.0.0.1"
    prometheus_port: int = 0

    def __post_init__(self) -> None:
        if not 16 <= self.latency_capacity <= 1_000_000:
            raise ConfigError(f"monitor.latency_capacity = {self.latency_capacity!r} must be "
                              "in 16..1000000")
        if not 0 <= self.prometheus_port <= 65535:
            raise ConfigError(f"monitor.prometheus_port = {self.prometheus_port!r} must be "
                              "in 0..65535 (0 = off)")
        if self.prometheus_port:
            loopback_host(self.prometheus_host)


class Monitor:
    """Data quality, drift, stage timing and counters of one agent.

    The service loop is the only writer. ``metrics()`` and ``health_body()`` only read and
    copy, so the exporter thread may call them while the loop runs (a figure may be one
    window stale).
    """

    def __init__(self, config: MonitorConfig | None = None,
                 drift: DriftMonitor | None = None) -> None:
        self.config = config or MonitorConfig()
        self.quality = DataQualityMonitor(self.config.quality)
        self.timer = StageTimer(self.config.latency_capacity)
        self.drift = drift
        self.counters: dict[str, int] = {}
        self.gauges: dict[str, float] = {}

    def set_drift(self, stats: dict[str, Any] | None, names: list[str] | tuple[str, ...]
                  ) -> None:
        """Watch a new bundle's training statistics (None: stop watching drift)."""
        self.drift = DriftMonitor(stats, names, self.config.drift) if stats else None

    def update_drift(self, features: Any, scores: Any, alerts: Any, *,
                     at_s: float | None = None) -> list[dict[str, Any]]:
        """Feed scored windows to the drift monitor; drift event bodies (often none)."""
        if self.drift is None:
            return []
        return self.drift.update(features, scores, alerts, at_s=at_s)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + int(n)

    def set_gauge(self, name: str, value: float) -> None:
        self.gauges[name] = float(value)

    def health_counters(self, extra: Mapping[str, Mapping[str, float]] | None = None
                        ) -> dict[str, float]:
        """Flat JSON-ready counters: own, data quality, drift, and ``extra`` groups.

        ``extra={"window": windower.counters}`` adds ``window.seq_gaps`` etc.
        """
        out: dict[str, float] = dict(self.counters)
        out.update(self.quality.counters)
        if self.drift is not None:
            out.update(self.drift.counters)
        out["latency_dropped"] = self.timer.dropped
        for group, values in list((extra or {}).items()):
            out.update({f"{group}.{k}": v for k, v in list(values.items())})
        return out

    def health_body(self, uptime_s: float,
                    extra: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
        """Body of a ``health`` record (``uptime_s`` and ``counters`` plus monitor detail)."""
        return {
            "uptime_s": round(float(uptime_s), 3),
            "counters": self.health_counters(extra),
            "gauges": dict(self.gauges),
            "latency_ms": self.timer.stats(),
            "channels": self.quality.states(),
            "drift": self.drift.snapshot() if self.drift is not None else None,
        }

    def metrics(self, uptime_s: float,
                extra: Mapping[str, Mapping[str, float]] | None = None) -> list[Metric]:
        """Prometheus metric families (names ``foreshock_*``) of the same figures."""
        out = [Metric(metric_name("uptime_seconds"), "gauge", "Agent uptime.",
                      (("", (), float(uptime_s)),))]
        for name, value in sorted(self.health_counters(extra).items()):
            out.append(Metric(metric_name(name.replace(".", "_"), "total"), "counter",
                              f"Count of {name}.", (("", (), float(value)),)))
        for name, value in sorted(list(self.gauges.items())):
            out.append(Metric(metric_name(name), "gauge", f"Current {name}.",
                              (("", (), value),)))
        out.append(self._latency_metric())
        channels = tuple(("", (("channel", k),), float(v == "bad"))
                         for k, v in sorted(self.quality.states().items()))
        out.append(Metric(metric_name("channel_bad"), "gauge",
                          "1 while a channel's data quality is bad.", channels))
        if self.drift is not None:
            snap = self.drift.snapshot()
            out.append(Metric(metric_name("drift_signals"), "gauge",
                              "Features or scores drifting now.",
                              (("", (), float(len(snap["drifting"]))),)))
            out.append(Metric(metric_name("drift_max_psi"), "gauge",
                              "Largest PSI at the last drift evaluation.",
                              (("", (), snap["max_psi"]),)))
        return out

    def _latency_metric(self) -> Metric:
        samples: list[tuple[str, tuple[tuple[str, str], ...], float]] = []
        for stage, st in sorted(self.timer.stats().items()):
            for q in ("p50", "p90", "p99"):
                if f"{q}_ms" in st:
                    labels = (("stage", stage), ("quantile", f"0.{q[1:]}"))
                    samples.append(("", labels, st[f"{q}_ms"] / 1e3))
            samples.append(("_sum", (("stage", stage),), st["mean_ms"] * st["count"] / 1e3))
            samples.append(("_count", (("stage", stage),), st["count"]))
        return Metric(metric_name("stage_latency_seconds"), "summary",
                      "Per-stage processing time per window.", tuple(samples))
