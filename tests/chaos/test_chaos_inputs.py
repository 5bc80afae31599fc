"""Chaos: bad sensor input (corrupt, truncated, duplicated, reordered frames; a node that
restarts its sequence) and the wall clock stepping back and forth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from harness import problems
from scenarios import clock_jumps, sensor_faults

from agent.window import Windower
from firmware_sim.node import encode_frame
from foreshock.wire import Frame, decode

pytestmark = pytest.mark.slow


def test_sensor_faults_are_counted_and_dropped_never_crash(tmp_path: Path) -> None:
    result = sensor_faults(tmp_path)
    assert not problems(result), result.as_dict()
    assert result.agent["bad_frames"] > 0, "corrupted frames must be counted"
    assert result.agent["seq_gaps"] > 0, "dropouts must be counted as sequence gaps"
    assert result.agent["out_of_order"] > 0, "reordered frames must be counted"
    assert result.agent["windows_processed"] > 0


def test_clock_steps_lose_nothing_and_expire_nothing(tmp_path: Path) -> None:
    result = clock_jumps(tmp_path)
    assert not problems(result), result.as_dict()
    assert all(c.policy == 0 for c in result.classes.values()), result.as_dict()


@dataclass(frozen=True)
class _Spec:
    sample_rate_hz: float = 12_800.0
    window_samples: int = 4096
    overlap: float = 0.5


def _frames(device: str, seqs: range, t0_us: int) -> list[Frame]:
    rng = np.random.default_rng(0)
    return [decode(encode_frame(device, 0, seq, t0_us + i * 80_000, 12_800.0,
                                rng.normal(0, 0.1, 1024).astype(np.float32)))
            for i, seq in enumerate(seqs)]


def test_windower_follows_a_node_that_restarts_its_sequence() -> None:
    windower = Windower(_Spec())
    before = _frames("node-1", range(1000, 1040), 1_000_000)
    after = _frames("node-1", range(0, 40), 1_000_000 + 41 * 80_000)
    for frame in before:
        windower.push(frame)
    windows_after = sum(len(windower.push(f)) for f in after)
    assert windows_after >= 10, windower.counters
