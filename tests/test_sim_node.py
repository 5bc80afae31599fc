"""Scenarios, nodes and NodeSource: loading, reproducibility, fleets, ground truth, sensor
faults as the agent sees them, and wall-clock pacing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from agent.sources import Source
from firmware_sim.node import NodeSource, Scenario, SimNode, fleet
from firmware_sim.scenario import builtin_names
from foreshock.errors import ConfigError
from foreshock.wire import Frame, decode

REQUIRED = {"healthy", "outer-race-growing", "inner-race", "ball", "imbalance",
            "misalignment", "sensor-faults"}


def test_builtin_scenarios_load() -> None:
    assert set(builtin_names()) >= REQUIRED
    for name in builtin_names():
        scenario = Scenario.load(name)
        assert scenario.name == name and scenario.description
        decode(SimNode(scenario, "n1", seed=0).next_frame_bytes())


@pytest.mark.parametrize("text, key", [
    ("sample_rate_hz = 99e9", "sample_rate_hz"),
    ("[machine]\nrpm = -1", "machine.rpm"),
    ("[[faults]]\nkind = \"cracked\"", "kind"),
    ("bogus = 1", "bogus"),
    ("sample_format = \"int8\"", "sample_format"),
    ("[[sensor_faults]]\nkind = \"disconnect\"\nstart_s = 1.0", "duration_s"),
])
def test_bad_scenarios_raise_config_error_naming_the_key(tmp_path: Path, text: str,
                                                         key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=key):
        SimNode(Scenario.load(path), "n1")


def test_unknown_scenario_name() -> None:
    with pytest.raises(ConfigError, match="unknown scenario"):
        Scenario.load("no-such-scenario")


def frames_of(node: SimNode, count: int) -> list[Frame]:
    return [decode(node.next_frame_bytes()) for _ in range(count)]


def test_seeded_nodes_are_reproducible_and_distinct() -> None:
    scenario = Scenario.load("outer-race-growing")
    a = frames_of(SimNode(scenario, "pump-1", seed=5, start_time_s=1.0), 20)
    b = frames_of(SimNode(scenario, "pump-1", seed=5, start_time_s=1.0), 20)
    c = frames_of(SimNode(scenario, "pump-1", seed=6, start_time_s=1.0), 20)
    assert a == b
    assert not np.array_equal(a[5].samples, c[5].samples)
    assert [f.seq for f in a] == list(range(20))
    step_us = 1024 / 25_600 * 1e6
    assert np.allclose(np.diff([f.timestamp_us for f in a]), step_us, atol=1)
    assert all(1700 < f.rpm < 1900 for f in a)


def test_fleet_ids_spread_and_faulty_share() -> None:
    table = {"name": "f", "sample_rate_hz": 2000.0, "frame_samples": 200,
             "faults": [{"kind": "outer_race", "growth": "exponential"}],
             "fleet": {"devices": 10, "device_prefix": "fan", "faulty_fraction": 0.3,
                       "rpm_spread": 0.1, "life_spread": 0.2}}
    nodes = fleet(Scenario.from_dict(table), start_time_s=0.0)
    assert [n.device_id for n in nodes] == [f"fan-{i:03d}" for i in range(10)]
    assert sum(n.failure_at_s is not None for n in nodes) == 3
    rpms = {round(decode(n.next_frame_bytes()).rpm) for n in nodes}
    assert len(rpms) == 10


def test_growing_fault_ground_truth_and_signal() -> None:
    table = {"name": "g", "sample_rate_hz": 12_000.0, "frame_samples": 1200,
             "life": {"life_s": 100.0, "time_acceleration": 10.0},
             "faults": [{"kind": "inner_race", "growth": "exponential", "onset_frac": 0.3}]}
    node = SimNode(Scenario.from_dict(table), "m1", seed=1, start_time_s=0.0)
    assert node.failure_at_s == pytest.approx(10.0)
    assert node.failure_at_us == 10_000_000
    rms = []
    while node.stream_time_s < 11.0:
        rms.append(float(np.sqrt(np.mean(decode(node.next_frame_bytes()).samples ** 2))))
        health = node.health
        assert health.failed == (health.stream_time_s >= 10.0)
        assert health.label == ("normal" if health.severity == 0 else "inner_race")
    assert np.mean(rms[-10:]) > 3 * np.mean(rms[:20])
    assert node.health.severity >= 1.0


def test_sensor_faults_reach_the_decoder_as_described() -> None:
    node = SimNode(Scenario.load("sensor-faults"), "flaky-000", seed=7, start_time_s=0.0)
    source = NodeSource(node, realtime=False)
    frames: list[Frame] = []
    while not source.exhausted:
        frames += source.read(0.0)
    seqs = np.array([f.seq for f in frames])
    steps = np.diff(seqs)
    assert (steps > 1).sum() > 5  # dropout gaps
    assert (steps == 0).sum() > 5  # duplicates
    assert (steps < 0).sum() > 5  # reordering and the reconnect's restart
    assert source.stats["bad_frames"] > 0  # corrupted frames fail the CRC
    assert {f.sample_rate_hz for f in frames} == {25_600.0, 25_600.0 * 1.02}
    t = np.array([f.timestamp_us for f in frames]) / 1e6
    flat = [f for f, ts in zip(frames, t, strict=True) if 20.1 < ts < 22.9]
    assert flat and all(np.ptp(f.raw) == 0 for f in flat)
    clipped = [f for f, ts in zip(frames, t, strict=True) if 15.1 < ts < 19.9]
    assert max(np.abs(f.samples).max() for f in clipped) <= 0.0501
    spiky = [f for f, ts in zip(frames, t, strict=True) if 10.1 < ts < 14.9]
    assert max(np.abs(f.samples).max() for f in spiky) > 5.0
    gap = t[(t > 30) & (t < 34)]
    assert not np.any((gap > 31.05) & (gap < 32.95))  # disconnected


def test_node_source_is_a_source_and_paces_to_the_wall_clock() -> None:
    scenario = Scenario.from_dict({"name": "p", "sample_rate_hz": 1000.0,
                                   "frame_samples": 100, "duration_s": 1.0})
    source = NodeSource(SimNode(scenario, "p1"), realtime=True, speed=2.0)
    assert isinstance(source, Source)
    t0 = time.monotonic()
    got: list[Frame] = []
    while not source.exhausted and time.monotonic() - t0 < 5:
        got += source.read(0.05)
    elapsed = time.monotonic() - t0
    assert len(got) == 10
    assert 0.4 <= elapsed <= 1.5  # 1 s of stream at 2x
    assert source.read(0.1) == [] and source.exhausted
    source.close()
    source.close()


def test_node_source_read_honours_timeout() -> None:
    scenario = Scenario.from_dict({"name": "p", "sample_rate_hz": 100.0, "frame_samples": 100})
    source = NodeSource(SimNode(scenario, "p1"), realtime=True)
    t0 = time.monotonic()
    assert source.read(0.2) == []  # the first frame is due after 1 s
    assert time.monotonic() - t0 < 0.5
