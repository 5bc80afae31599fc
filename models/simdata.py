"""Simulated machines from ``firmware_sim``, through its public node API and the wire codec.

Frames come from :class:`firmware_sim.node.SimNode` and are decoded by
:func:`foreshock.wire.decode`, so training sees exactly what an agent would receive. A
*machine* here is a healthy recording (commissioning) plus a recording of the same machine
with one fault at a fixed severity, or a run to failure with its severity path.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from foreshock.errors import FrameError
from foreshock.wire import decode
from models.datasets import Recording

log = logging.getLogger(__name__)

#: Geometry of the catalogue bearings of agent.features (mm), for simulated machines.
SIM_BEARINGS: dict[str, dict[str, Any]] = {
    "SKF-6205": {"n_balls": 9, "ball_diameter_mm": 7.94, "pitch_diameter_mm": 39.04},
    "SKF-6203": {"n_balls": 8, "ball_diameter_mm": 6.746, "pitch_diameter_mm": 28.499},
    "SKF-6204": {"n_balls": 8, "ball_diameter_mm": 7.938, "pitch_diameter_mm": 33.5},
    "FEMTO": {"n_balls": 13, "ball_diameter_mm": 3.5, "pitch_diameter_mm": 25.6},
}
#: Severity is drawn log-uniform in this range: most simulated faults are small.
SEVERITY_RANGE = (0.03, 0.6)
#: Impact-spacing jitter per fault: rolling elements slip and spin in and out of the load
#: zone, so a ball fault's envelope lines are smeared (and often invisible, as on CWRU).
JITTER_RANGE = {"ball": (0.02, 0.2), "inner_race": (0.005, 0.04), "outer_race": (0.005, 0.04)}
#: Ranges drawn per machine by ``random_machines(varied=True)`` (training fleets): real
#: defects differ in how deeply the load zone (inner race) or the cage (ball) modulates
#: them, how much one impact differs from the next (spall edges, load; a ball's defect
#: strikes only as its spin axis allows, so ball impacts vary most), and how much the
#: rolling elements slip.
VARIED: dict[str, dict[str, tuple[float, float]]] = {
    "inner_race": {"jitter": (0.005, 0.06), "modulation": (0.2, 1.0),
                   "amplitude_spread": (0.02, 0.5)},
    "outer_race": {"jitter": (0.005, 0.06), "modulation": (0.2, 1.0),
                   "amplitude_spread": (0.02, 0.5)},
    "ball": {"jitter": (0.02, 0.2), "modulation": (0.2, 1.0),
             "amplitude_spread": (0.2, 1.0)},
}
#: Resonance damping ratios drawn by ``varied=True``: how long each impact rings, and so
#: how much the rings of fast impact trains overlap, depends on the transmission path.
DAMPING_RANGE = (0.01, 0.08)
FAULT_AMPLITUDE_G = {"inner_race": 2.0, "outer_race": 2.0, "ball": 1.5, "imbalance": 0.25,
                     "misalignment": 0.15}


def render(scenario: Any, seconds: float, *, seed: int = 0, device_id: str = "sim-0",
           faulty: bool = True) -> Recording:
    """Decode ``seconds`` of a SimNode's vibration frames into one continuous recording."""
    from firmware_sim.node import SimNode

    node = SimNode(scenario, device_id, seed=seed, start_time_s=0.0, faulty=faulty)
    chunks, rpms, severity, t_frame = [], [], [], []
    while node.stream_time_s < seconds:
        try:
            frame = decode(node.next_frame_bytes())
        except FrameError:
            continue  # a corrupt frame, as the agent would drop it
        chunks.append(frame.samples)
        rpms.append(frame.rpm)
        severity.append(node.severity())
        t_frame.append(node.stream_time_s)
    x = np.concatenate(chunks).astype(np.float32)
    meta = {"format": "sim", "scenario": scenario.name, "frame_t_s": np.asarray(t_frame),
            "severity": np.asarray(severity), "failure_at_s": node.failure_at_s}
    label = scenario.label if faulty else "normal"
    return Recording(f"sim:{scenario.name}:{device_id}", x[None, :, None], np.zeros(1),
                     float(scenario.sample_rate_hz), ("vibration",),
                     rpm=float(np.mean(rpms)) if rpms else 0.0, label=label,
                     bearing=scenario.bearing.name, meta=meta)


def render_scenario(name: str, *, seconds: float | None = None, seed: int = 0,
                    rpm: float | None = None, device_id: str = "sim-0") -> Recording:
    """A built-in or file scenario; ``seconds`` defaults to its duration (else 60 s)."""
    from firmware_sim.scenario import Scenario

    scenario = Scenario.load(name)
    if seconds is None:
        seconds = scenario.duration_s if scenario.duration_s > 0 else 60.0
    if rpm is not None:
        table = {"name": scenario.name, "machine": {"rpm": rpm}}
        scenario = _replace(scenario, table)
    return render(scenario, seconds, seed=seed, device_id=device_id)


def _replace(scenario: Any, table: dict[str, Any]) -> Any:
    machine = dataclasses.replace(scenario.machine, **table.get("machine", {}))
    return dataclasses.replace(scenario, machine=machine)


@dataclass(frozen=True)
class SimMachine:
    """Knobs of one simulated machine (a fleet member of the training or test set)."""

    name: str
    fault: str  # a label; "normal" = no fault
    severity: float
    rpm: float
    bearing: str
    sample_rate_hz: float
    resonance_hz: float
    noise_g: float
    imbalance_g: float
    jitter: float = 0.015  # relative spread of impact spacing (slip)
    modulation: float = 0.8  # load-zone (inner race) / cage (ball) modulation depth
    amplitude_spread: float = 0.02  # relative spread of impact amplitudes
    damping: float = 0.025  # damping ratio of the structural resonance (transmission path)


def scenario_of(m: SimMachine, seed: int) -> Any:
    from firmware_sim.scenario import Scenario

    table: dict[str, Any] = {
        "name": m.name, "sample_rate_hz": m.sample_rate_hz, "frame_samples": 1024,
        "seed": seed,
        "machine": {"rpm": m.rpm, "resonance_hz": m.resonance_hz,
                    "resonance_damping": m.damping, "noise_g": m.noise_g,
                    "imbalance_g": m.imbalance_g, "misalignment_g": m.imbalance_g * 0.4},
        "bearing": {"name": m.bearing, **SIM_BEARINGS[m.bearing]},
    }
    if m.fault != "normal":
        table["faults"] = [{"kind": m.fault, "severity": m.severity, "jitter": m.jitter,
                            "amplitude_g": FAULT_AMPLITUDE_G[m.fault],
                            "modulation": m.modulation,
                            "amplitude_spread": m.amplitude_spread}]
    return Scenario.from_dict(table)


def random_machines(n: int, seed: int, *, bearings: tuple[str, ...] = tuple(SIM_BEARINGS),
                    rates_hz: tuple[float, ...] = (12_000.0, 25_600.0, 48_000.0, 20_000.0),
                    faults: tuple[str, ...] = tuple(FAULT_AMPLITUDE_G),
                    rpm_range: tuple[float, float] = (600.0, 3600.0),
                    varied: bool = False) -> list[SimMachine]:
    """``n`` machines with random bearing, speed, rate, resonance, noise and fault.

    ``varied``: also draw the defect physics the fixed defaults hold still (load-zone / cage
    modulation depth, impact-amplitude spread, wider race slip; :data:`VARIED`), so a model
    trained on the fleet cannot key on one simulator setting. The other draws are the same
    as without it (extra draws come from a separate stream)."""
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng([seed, 1])
    out = []
    for i in range(n):
        rate = float(rng.choice(rates_hz))
        fault = str(faults[i % len(faults)])
        out.append(SimMachine(
            name=f"m{seed}-{i}-{fault}", fault=fault,
            severity=float(np.exp(rng.uniform(*np.log(SEVERITY_RANGE)))),
            rpm=float(rng.uniform(*rpm_range)), bearing=str(rng.choice(bearings)),
            sample_rate_hz=rate,
            resonance_hz=float(rng.uniform(1500.0, min(5500.0, 0.4 * rate))),
            noise_g=float(rng.uniform(0.03, 0.12)), imbalance_g=float(rng.uniform(0.01, 0.05)),
            jitter=float(rng.uniform(*JITTER_RANGE.get(fault, (0.005, 0.03))))))
        if varied:
            v = VARIED.get(fault, VARIED["outer_race"])
            out[-1] = dataclasses.replace(
                out[-1], jitter=float(extra.uniform(*v["jitter"])),
                modulation=float(extra.uniform(*v["modulation"])),
                amplitude_spread=float(extra.uniform(*v["amplitude_spread"])),
                damping=float(extra.uniform(*DAMPING_RANGE)))
    return out
