"""Chaos: a long partition of the devices' link, with and without room in the outbox."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import problems
from scenarios import disk_budget, partition

pytestmark = pytest.mark.slow


def test_partition_backlog_is_delivered_whole(tmp_path: Path) -> None:
    result = partition(tmp_path)
    assert result.classes["telemetry"].sent >= 300, "the backlog must be long"
    assert result.classes["telemetry"].policy == 0
    assert not problems(result), result.as_dict()


def test_disk_budget_drops_telemetry_by_policy_and_keeps_every_alert(tmp_path: Path) -> None:
    result = disk_budget(tmp_path)
    assert result.classes["telemetry"].policy > 0, "the budget must have been exhausted"
    assert result.classes["alert"].stored == result.classes["alert"].sent
    assert not problems(result), result.as_dict()
