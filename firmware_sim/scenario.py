"""Scenario files: one small TOML file describes a machine, its bearing, the faults it grows,
the sensor faults its node suffers, and how many nodes of it make a fleet.

A scenario is named by a path or by the name of a built-in file in
``firmware_sim/scenarios/`` (``healthy``, ``outer-race-growing``, ...). Every value is
checked at load; a bad one raises :class:`foreshock.errors.ConfigError` naming the key.

Times: *stream time* is seconds of signal since a node started. *Life time* is stream time
multiplied by ``life.time_acceleration``; faults grow over life time, so a week of wear can
play out in a minute of signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from foreshock.config import check_range, from_table, read_toml
from foreshock.errors import ConfigError

SCENARIO_DIR = Path(__file__).with_name("scenarios")
MAX_SAMPLE_RATE_HZ = 51_200.0

BEARING_FAULTS = ("outer_race", "inner_race", "ball")
SHAFT_FAULTS = ("imbalance", "misalignment", "looseness", "gear")
FAULT_KINDS = BEARING_FAULTS + SHAFT_FAULTS
# Sample-level faults change the values; frame-level faults change which frames go out.
SAMPLE_FAULTS = ("clipping", "flatline", "spikes", "dc_drift", "clock_drift")
FRAME_FAULTS = ("dropout", "disconnect", "reorder", "duplicate", "corrupt", "rate_error")
SENSOR_FAULT_KINDS = SAMPLE_FAULTS + FRAME_FAULTS

# Fault amplitude at severity 1 when a scenario gives none: bearing faults are calibrated to
# a 0.18 mm (0.007 in) CWRU spall on a 6205 at 1797 rpm (scripts/validate_sim.py).
DEFAULT_AMPLITUDE_G = {"outer_race": 2.6, "inner_race": 1.3, "ball": 0.7, "imbalance": 0.2,
                       "misalignment": 0.15, "looseness": 0.1, "gear": 0.2}

# Which fault kind maps to which model label (docs/architecture.md labels).
FAULT_LABELS = {"outer_race": "outer_race", "inner_race": "inner_race", "ball": "ball",
                "imbalance": "imbalance", "misalignment": "misalignment"}


@dataclass(frozen=True)
class MachineSpec:
    """The healthy machine: shaft speed, baseline shaft tones, structure and noise."""

    rpm: float = 1797.0
    speed_variation: float = 0.0005  # relative amplitude of the slow speed wander
    speed_period_s: float = 30.0
    imbalance_g: float = 0.02  # 1x, always present on a real machine
    misalignment_g: float = 0.008  # 2x
    looseness_g: float = 0.0  # harmonics 1x..8x and 0.5x
    gear_teeth: int = 0  # 0 = no gear stage
    gear_mesh_g: float = 0.0
    noise_g: float = 0.06  # broadband sensor + machine noise, RMS
    resonance_hz: float = 3000.0  # structural resonance excited by bearing impacts
    resonance_damping: float = 0.025  # damping ratio of that resonance
    temperature_c: float = 35.0  # bearing housing temperature when healthy
    temperature_rise_c: float = 30.0  # extra degrees at failure severity
    tach_noise: float = 0.001  # relative noise of the rpm reported in the frame header

    def __post_init__(self) -> None:
        check_range("machine.rpm", self.rpm, 1.0, 60_000.0)
        check_range("machine.speed_variation", self.speed_variation, 0.0, 0.2)
        check_range("machine.speed_period_s", self.speed_period_s, 0.1, 1e6)
        check_range("machine.resonance_hz", self.resonance_hz, 10.0, 25_000.0)
        check_range("machine.resonance_damping", self.resonance_damping, 0.001, 0.5)
        check_range("machine.gear_teeth", self.gear_teeth, 0, 500)
        check_range("machine.tach_noise", self.tach_noise, 0.0, 0.1)
        for key in ("imbalance_g", "misalignment_g", "looseness_g", "gear_mesh_g", "noise_g"):
            check_range(f"machine.{key}", getattr(self, key), 0.0, 100.0)


@dataclass(frozen=True)
class BearingSpec:
    """Rolling-element bearing geometry (defaults: SKF 6205, the CWRU drive-end bearing)."""

    name: str = "SKF-6205"
    n_balls: int = 9
    ball_diameter_mm: float = 7.94
    pitch_diameter_mm: float = 39.04
    contact_angle_deg: float = 0.0

    def __post_init__(self) -> None:
        check_range("bearing.n_balls", self.n_balls, 3, 100)
        check_range("bearing.ball_diameter_mm", self.ball_diameter_mm, 0.1, 1000.0)
        check_range("bearing.pitch_diameter_mm", self.pitch_diameter_mm,
                    self.ball_diameter_mm * 1.01, 10_000.0)
        check_range("bearing.contact_angle_deg", self.contact_angle_deg, 0.0, 60.0)

    def orders(self) -> dict[str, float]:
        """Defect frequencies as multiples of shaft speed: bpfo, bpfi, bsf, ftf."""
        ratio = self.ball_diameter_mm / self.pitch_diameter_mm
        cos_a = math.cos(math.radians(self.contact_angle_deg))
        return {
            "bpfo": self.n_balls / 2 * (1 - ratio * cos_a),
            "bpfi": self.n_balls / 2 * (1 + ratio * cos_a),
            "bsf": 1 / (2 * ratio) * (1 - (ratio * cos_a) ** 2),
            "ftf": 0.5 * (1 - ratio * cos_a),
        }


@dataclass(frozen=True)
class FaultSpec:
    """One machine fault. Its amplitude is ``amplitude_g x severity``.

    ``growth = "constant"`` holds ``severity`` for the whole run; ``"exponential"`` grows it
    from 0 at ``onset_frac`` of life to 1 (failure) at the end of life along a noisy
    exponential path (``growth_rate`` its steepness, ``path_noise`` its roughness).
    """

    kind: Literal["outer_race", "inner_race", "ball", "imbalance", "misalignment",
                  "looseness", "gear"]
    amplitude_g: float | None = None  # None: DEFAULT_AMPLITUDE_G of the kind
    severity: float = 1.0
    growth: Literal["constant", "exponential"] = "constant"
    onset_frac: float = 0.0
    growth_rate: float = 4.0
    path_noise: float = 0.3
    jitter: float = 0.01  # relative standard deviation of the impact spacing (slip)
    modulation: float = 0.8  # depth of the shaft (inner race) or FTF (ball) modulation
    #: relative standard deviation of impact amplitudes (spall edge, load and contact differ
    #: from impact to impact; a ball's defect meets the races only as its spin axis allows)
    amplitude_spread: float = 0.02

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ConfigError(f"faults.kind = {self.kind!r} is unknown; use one of {FAULT_KINDS}")
        if self.amplitude_g is None:
            object.__setattr__(self, "amplitude_g", DEFAULT_AMPLITUDE_G[self.kind])
        check_range(f"faults[{self.kind}].amplitude_g", self.peak_g, 0.0, 1000.0)
        check_range(f"faults[{self.kind}].severity", self.severity, 0.0, 10.0)
        check_range(f"faults[{self.kind}].onset_frac", self.onset_frac, 0.0, 0.99)
        check_range(f"faults[{self.kind}].growth_rate", self.growth_rate, 0.1, 30.0)
        check_range(f"faults[{self.kind}].path_noise", self.path_noise, 0.0, 2.0)
        check_range(f"faults[{self.kind}].jitter", self.jitter, 0.0, 0.2)
        check_range(f"faults[{self.kind}].modulation", self.modulation, 0.0, 1.0)
        check_range(f"faults[{self.kind}].amplitude_spread", self.amplitude_spread, 0.0, 1.0)

    @property
    def peak_g(self) -> float:
        """Amplitude at severity 1 (``amplitude_g`` or the kind's default)."""
        return float(self.amplitude_g if self.amplitude_g is not None else 0.0)


@dataclass(frozen=True)
class LifeSpec:
    """Machine life: failure comes at ``life_s`` of life time."""

    life_s: float = 7 * 86400.0
    time_acceleration: float = 1.0
    start_s: float = 0.0  # life time already used when the node starts

    def __post_init__(self) -> None:
        check_range("life.life_s", self.life_s, 1e-3, 1e12)
        check_range("life.time_acceleration", self.time_acceleration, 1e-3, 1e9)
        check_range("life.start_s", self.start_s, 0.0, self.life_s)

    @property
    def failure_stream_s(self) -> float:
        """Stream seconds from node start until end of life."""
        return (self.life_s - self.start_s) / self.time_acceleration


@dataclass(frozen=True)
class SensorFaultSpec:
    """A sensor or link fault active from ``start_s`` for ``duration_s`` of stream time.

    ``value``: clip level in g (clipping), spike height in g (spikes), drift in g/s
    (dc_drift), relative rate error (rate_error, clock_drift: at the end of the fault).
    ``rate``: probability per frame (dropout, reorder, duplicate, corrupt) or spikes per
    second (spikes). ``reset_seq``: a disconnect restarts the sequence at 0.
    """

    kind: Literal["clipping", "flatline", "spikes", "dc_drift", "clock_drift", "dropout",
                  "disconnect", "reorder", "duplicate", "corrupt", "rate_error"]
    start_s: float = 0.0
    duration_s: float = math.inf
    value: float = 0.0
    rate: float = 0.0
    reset_seq: bool = False

    def __post_init__(self) -> None:
        check_range(f"sensor_faults[{self.kind}].start_s", self.start_s, 0.0, 1e12)
        check_range(f"sensor_faults[{self.kind}].duration_s", self.duration_s, 0.0, math.inf)
        check_range(f"sensor_faults[{self.kind}].rate", self.rate, 0.0, 1e6)
        if self.kind in ("dropout", "reorder", "duplicate", "corrupt"):
            check_range(f"sensor_faults[{self.kind}].rate", self.rate, 0.0, 1.0)
        if self.kind in ("rate_error", "clock_drift"):
            check_range(f"sensor_faults[{self.kind}].value", self.value, -0.5, 0.5)

    def active(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.start_s + self.duration_s


@dataclass(frozen=True)
class FleetSpec:
    """How one scenario becomes many nodes: ids, spread of speed and life, faulty share."""

    devices: int = 1
    device_prefix: str = "sim"
    faulty_fraction: float = 1.0
    rpm_spread: float = 0.0  # relative, uniform +-
    life_spread: float = 0.0  # relative, uniform +-

    def __post_init__(self) -> None:
        check_range("fleet.devices", self.devices, 1, 100_000)
        check_range("fleet.faulty_fraction", self.faulty_fraction, 0.0, 1.0)
        check_range("fleet.rpm_spread", self.rpm_spread, 0.0, 0.5)
        check_range("fleet.life_spread", self.life_spread, 0.0, 0.9)


@dataclass(frozen=True)
class Scenario:
    """A whole scenario file. See the module docstring and ``firmware_sim/scenarios/``."""

    name: str
    description: str = ""
    sample_rate_hz: float = 25_600.0
    frame_samples: int = 1024
    sample_format: Literal["float32", "int16"] = "float32"
    full_scale_g: float = 16.0  # int16 full scale; values beyond clip like a real ADC
    duration_s: float = 0.0  # stream seconds a run lasts; 0 = until stopped
    seed: int = 0
    temperature_rate_hz: float = 1.0  # channel 1 carries the temperature in degrees C
    machine: MachineSpec = field(default_factory=MachineSpec)
    bearing: BearingSpec = field(default_factory=BearingSpec)
    life: LifeSpec = field(default_factory=LifeSpec)
    fleet: FleetSpec = field(default_factory=FleetSpec)
    faults: tuple[FaultSpec, ...] = ()
    sensor_faults: tuple[SensorFaultSpec, ...] = ()

    def __post_init__(self) -> None:
        check_range("sample_rate_hz", self.sample_rate_hz, 100.0, MAX_SAMPLE_RATE_HZ)
        check_range("frame_samples", self.frame_samples, 1, 8192)
        check_range("full_scale_g", self.full_scale_g, 0.01, 10_000.0)
        check_range("duration_s", self.duration_s, 0.0, 1e9)
        check_range("temperature_rate_hz", self.temperature_rate_hz, 0.01, 100.0)

    @property
    def growing(self) -> bool:
        """True when some fault grows to failure, so ``failure_at_s`` is defined."""
        return any(f.growth == "exponential" for f in self.faults)

    @property
    def label(self) -> str:
        """Ground-truth label of the dominant fault ('normal' without one)."""
        for fault in self.faults:
            if fault.kind in FAULT_LABELS:
                return FAULT_LABELS[fault.kind]
        return "normal"

    @classmethod
    def load(cls, path_or_name: str | Path) -> Scenario:
        """Load a scenario file, or a built-in scenario by name."""
        path = resolve(path_or_name)
        table = read_toml(path)
        table.setdefault("name", path.stem)
        return from_table(cls, table, "")

    @classmethod
    def from_dict(cls, table: dict[str, object]) -> Scenario:
        return from_table(cls, dict(table), "")


def builtin_names() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def resolve(path_or_name: str | Path) -> Path:
    """A scenario path, or the built-in file of that name."""
    path = Path(path_or_name)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"scenario file {path} not found",
                              hint="`foreshock sim list` shows the built-in scenarios")
        return path
    builtin = SCENARIO_DIR / f"{path_or_name}.toml"
    if builtin.is_file():
        return builtin
    raise ConfigError(f"unknown scenario {str(path_or_name)!r}; built-in scenarios: "
                      f"{', '.join(builtin_names())}", hint="or pass the path of a .toml file")
