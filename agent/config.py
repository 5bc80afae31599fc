"""Agent configuration: frozen dataclasses loaded from TOML (reference: docs/config.md).

``AgentConfig.load(path)`` reads a TOML file such as ``agent/deploy/agent.toml.sample``;
every key is checked once, here, and a bad one raises one :class:`ConfigError` naming the
key, the bad value and what is allowed. ``AgentConfig.for_device(...)`` builds the same
object in code (the demo and tests use it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.baselines import LearningConfig
from agent.features.geometry import BEARINGS, ISO_ZONE_LIMITS_MM_S
from agent.link import LinkConfig, LinkOptions
from agent.monitor import MonitorConfig
from agent.outbox import OutboxConfig
from foreshock.config import check_range, from_table, read_toml
from foreshock.errors import ConfigError, OutboxError
from foreshock.topics import check_id

SOURCE_TYPES = ("serial", "udp", "mqtt", "file", "sim")


@dataclass(frozen=True)
class DeviceConfig:
    device_id: str = "device-1"
    site: str = "site1"

    def __post_init__(self) -> None:
        check_id(self.device_id, "device.device_id")
        check_id(self.site, "device.site")


@dataclass(frozen=True)
class SourceConfig:
    """``type`` picks the medium; ``params`` go to that source's constructor as keywords."""

    type: Literal["serial", "udp", "mqtt", "file", "sim"] = "sim"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FeaturesConfig:
    """Feature settings used when no bundle is loaded (a bundle brings its own spec).

    ``bearing`` names a catalogue bearing; ``bpfo``/``bpfi``/``bsf``/``ftf`` (all > 0)
    override it with custom defect orders. ``rpm`` > 0 is used when frames carry no speed.
    ``spec``: ``default`` (0.32 s windows at 12.8 kHz, continuous streams) or ``snapshot``
    (0.1 s at 25.6 kHz, for short snapshots such as FEMTO's).
    """

    spec: Literal["default", "snapshot"] = "default"
    bearing: str = "SKF-6205"
    machine_class: str = "group2-rigid"
    rpm: float = 0.0
    bpfo: float = 0.0
    bpfi: float = 0.0
    bsf: float = 0.0
    ftf: float = 0.0

    def __post_init__(self) -> None:
        check_range("features.rpm", self.rpm, 0.0, 100_000.0)
        if self.bearing not in BEARINGS:
            raise ConfigError(f"features.bearing = {self.bearing!r} is unknown; use one of "
                              f"{sorted(BEARINGS)} or set bpfo/bpfi/bsf/ftf")
        if self.machine_class not in ISO_ZONE_LIMITS_MM_S:
            raise ConfigError(f"features.machine_class = {self.machine_class!r} is not "
                              f"allowed; use one of {sorted(ISO_ZONE_LIMITS_MM_S)}")
        orders = (self.bpfo, self.bpfi, self.bsf, self.ftf)
        if any(orders) and not all(0.0 < o < 100.0 for o in orders):
            raise ConfigError("features.bpfo/bpfi/bsf/ftf must all be set, each in (0, 100) "
                              f"orders of shaft speed; got {orders}")


@dataclass(frozen=True)
class ModelConfig:
    """``bundle``: a bundle directory; empty means the shipped default bundle, if any.

    ``trusted_keys``: PEM public keys allowed to sign bundles. ``default_bundle``: with no
    ``bundle``, load the newest bundle shipped in the package (models/bundles/, verified with
    the key shipped next to it); false: the model-free z-score detector.
    ``backend``: onnx (the bundle's default file, usually int8), onnx-fp32, or tflite.
    ``command_keys``: PEM public keys allowed to sign state-changing commands (rebaseline,
    feedback, rollback); empty means ``trusted_keys`` (docs/config.md).
    """

    bundle: Path | None = None
    trusted_keys: tuple[Path, ...] = ()
    default_bundle: bool = True
    backend: Literal["onnx", "onnx-fp32", "tflite"] = "onnx"
    command_keys: tuple[Path, ...] = ()

    @property
    def command_key_files(self) -> tuple[Path, ...]:
        """The keys commands are verified with: ``command_keys``, else ``trusted_keys``."""
        return self.command_keys or self.trusted_keys


@dataclass(frozen=True)
class DecisionConfig:
    """Commissioning, thresholds and debouncing; see agent/decision.py."""

    commission_s: float = 600.0
    k: int = 3
    n: int = 5
    threshold: float = 0.0
    threshold_quantile: float = 0.99
    threshold_margin: float = 1.5
    clear_ratio: float = 0.8
    update_interval_s: float = 3600.0
    min_commission_windows: int = 8
    defect_snr_min: float = 3.0

    def __post_init__(self) -> None:
        check_range("decision.commission_s", self.commission_s, 0.0, 30 * 86400.0)
        check_range("decision.n", self.n, 1, 1000)
        check_range("decision.k", self.k, 1, self.n)
        check_range("decision.threshold", self.threshold, 0.0, 1e9)
        check_range("decision.threshold_quantile", self.threshold_quantile, 0.5, 1.0)
        check_range("decision.threshold_margin", self.threshold_margin, 1.0, 100.0)
        check_range("decision.clear_ratio", self.clear_ratio, 0.1, 1.0)
        check_range("decision.update_interval_s", self.update_interval_s, 1.0, 1e7)
        check_range("decision.min_commission_windows", self.min_commission_windows, 2, 100_000)
        check_range("decision.defect_snr_min", self.defect_snr_min, 1.0, 1e6)


@dataclass(frozen=True)
class OutboxSection(OutboxConfig):
    """``path`` of the SQLite outbox (empty: ``<service.state_dir>/outbox.sqlite``) plus the
    byte budgets, TTLs and policies of :class:`agent.outbox.OutboxConfig`."""

    path: Path | None = None


@dataclass(frozen=True)
class LinkSection(LinkOptions):
    """MQTT link; the keys of :class:`agent.link.LinkConfig` without site and device_id
    (they come from ``[device]``): ``broker_url`` and the options declared, with their
    defaults, in :class:`agent.link.LinkOptions`; plus the loop's drain timing.
    ``broker_url`` empty: no link, data waits in the outbox.

    ``drain_interval_s``: how often the loop publishes; ``drain_timeout_s``: how long one
    drain may wait for acknowledgements before the loop goes on. ``require_gateway`` (on
    by default, unlike a bare :class:`~agent.link.LinkConfig`): hold the outbox until a
    Foreshock gateway announced itself since the latest connect (docs/topics.md, "Gateway
    presence"); set it false only when no Foreshock gateway consumes the data.
    """

    broker_url: str = ""
    require_gateway: bool = True
    drain_interval_s: float = 0.2
    drain_timeout_s: float = 0.05

    def __post_init__(self) -> None:
        if self.broker_url and not self.broker_url.startswith(("mqtt://", "mqtts://")):
            raise ConfigError(f"link.broker_url = {self.broker_url!r} must start with "
                              "mqtt:// or mqtts://")
        check_range("link.drain_interval_s", self.drain_interval_s, 0.001, 60.0)
        check_range("link.drain_timeout_s", self.drain_timeout_s, 0.0, 60.0)

    def link_config(self, site: str, device_id: str) -> LinkConfig:
        """The :class:`agent.link.LinkConfig` for this device (validated there)."""
        names = {f.name for f in dataclasses.fields(LinkConfig)}
        mine = {k: v for k, v in dataclasses.asdict(self).items() if k in names}
        return LinkConfig(site=site, device_id=device_id, **mine)


@dataclass(frozen=True)
class ServiceConfig:
    """Loop, queue and reporting settings of the running agent."""

    state_dir: Path = Path("/var/lib/foreshock")
    status_path: Path | None = None
    health_interval_s: float = 60.0
    telemetry_every: int = 1
    max_queued_windows: int = 256
    batch_windows: int = 64
    read_timeout_s: float = 0.05

    def __post_init__(self) -> None:
        check_range("service.health_interval_s", self.health_interval_s, 0.05, 86400.0)
        check_range("service.telemetry_every", self.telemetry_every, 1, 100_000)
        check_range("service.max_queued_windows", self.max_queued_windows, 1, 100_000)
        check_range("service.batch_windows", self.batch_windows, 1, 10_000)
        check_range("service.read_timeout_s", self.read_timeout_s, 0.001, 10.0)

    @property
    def status_file(self) -> Path:
        return self.status_path or self.state_dir / "status.json"

    @property
    def outbox_file(self) -> Path:
        return self.state_dir / "outbox.sqlite"


SECTIONS: dict[str, type] = {
    "device": DeviceConfig, "source": SourceConfig, "features": FeaturesConfig,
    "model": ModelConfig, "decision": DecisionConfig, "outbox": OutboxSection,
    "link": LinkSection, "service": ServiceConfig, "monitor": MonitorConfig,
    "learning": LearningConfig,
}


@dataclass(frozen=True)
class AgentConfig:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    outbox: OutboxSection = field(default_factory=OutboxSection)
    link: LinkSection = field(default_factory=LinkSection)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)

    @classmethod
    def load(cls, path: Path | str) -> AgentConfig:
        """Read and validate a TOML config file; raises ConfigError."""
        return cls.from_dict(read_toml(path))

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> AgentConfig:
        try:
            return from_table(cls, table)
        except (ValueError, TypeError, OutboxError) as exc:
            raise ConfigError(str(exc)) from None

    @classmethod
    def for_device(cls, device_id: str, site: str, broker_url: str, state_dir: Path | str,
                   **overrides: Any) -> AgentConfig:
        """A config for one device with its state (outbox, status) under ``state_dir``.

        ``overrides`` replace whole sections (a dataclass) or some of their keys (a dict),
        e.g. ``decision={"commission_s": 5}``, ``source=SourceConfig("udp", {...})``.
        """
        state = Path(state_dir)
        base = cls(
            device=DeviceConfig(device_id, site),
            outbox=OutboxSection(path=state / "outbox.sqlite"),
            link=LinkSection(broker_url=broker_url),
            service=ServiceConfig(state_dir=state),
        )
        return base.replace(**overrides)

    def replace(self, **sections: Any) -> AgentConfig:
        """A copy with sections replaced (dataclass) or updated (dict of keys)."""
        changes: dict[str, Any] = {}
        for name, value in sections.items():
            if name not in SECTIONS:
                raise ConfigError(f"unknown config section {name!r}; use {sorted(SECTIONS)}")
            if isinstance(value, dict):
                current = dataclasses.asdict(getattr(self, name))
                current.update(value)
                value = from_table(SECTIONS[name], _plain(current), name)
            elif not isinstance(value, SECTIONS[name]):
                raise ConfigError(f"section {name!r} must be a dict or {SECTIONS[name].__name__}")
            changes[name] = value
        return dataclasses.replace(self, **changes)


def _plain(table: dict[str, Any]) -> dict[str, Any]:
    """asdict output back to TOML-like values (paths as strings, tuples as lists)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        if value is not None:
            out[key] = value
    return out
