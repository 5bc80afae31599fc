"""Chaos: agent and gateway processes SIGKILLed under load and restarted on their files."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import problems
from scenarios import agent_kills, gateway_kills, power_cut

pytestmark = pytest.mark.slow


def test_agent_sigkill_mid_batch_loses_nothing(tmp_path: Path) -> None:
    result = agent_kills(tmp_path)
    assert result.faults["agent_sigkill"] == 3
    assert not problems(result), result.as_dict()


def test_gateway_sigkill_loses_nothing(tmp_path: Path) -> None:
    result = gateway_kills(tmp_path)
    assert result.faults["gateway_sigkill"] == 3
    assert not problems(result), result.as_dict()


def test_power_cut_every_returned_alert_is_delivered(tmp_path: Path) -> None:
    result = power_cut(tmp_path)
    kills = result.faults.get("agent_sigkill", 0) + result.faults.get("agent_self_kill", 0)
    assert kills == 9  # eight cuts and the one that disarms the self-kill
    assert result.faults.get("agent_self_kill", 0) >= 1, result.faults
    assert result.alerts_put >= 100, "the cuts must land under alert load"
    assert not problems(result), result.as_dict()
