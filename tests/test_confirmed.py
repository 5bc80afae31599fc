"""Confirmed incidents survive a restart (agent.confirmed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.confirmed import SCHEMA, ConfirmedIncidents
from agent.service import Agent
from agent.sources import ReplaySource


def test_confirmed_ids_are_saved_in_order_and_the_oldest_goes_first(tmp_path: Path) -> None:
    path = tmp_path / "confirmed_incidents.json"
    ids = ConfirmedIncidents(path, limit=3)
    for n in range(5):
        assert ids.note(f"inc-{n}", "confirmed")
    assert not ids.note("inc-4", "confirmed")          # already there: no write
    assert ids.note("inc-3", "false_alarm")            # a later label replaces it
    assert not ids.note("never-seen", "false_alarm")
    again = ConfirmedIncidents(path, limit=3)
    assert list(again) == ["inc-2", "inc-4"]
    assert "inc-0" not in again and "inc-4" in again
    assert json.loads(path.read_bytes()) == {"schema": SCHEMA, "incidents": ["inc-2", "inc-4"]}


@pytest.mark.parametrize("body", [b"{not json", b'{"schema": "x", "incidents": []}',
                                  b'{"schema": "%s", "incidents": [1]}' % SCHEMA.encode(),
                                  b"[]"])
def test_an_unreadable_file_is_moved_aside_and_the_set_starts_empty(
        tmp_path: Path, body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "confirmed_incidents.json"
    path.write_bytes(body)
    ids = ConfirmedIncidents(path)
    assert len(ids) == 0
    assert (tmp_path / "confirmed_incidents.json.bad").read_bytes() == body
    assert "unreadable" in caplog.text
    assert ids.note("inc-1", "confirmed")
    assert list(ConfirmedIncidents(path)) == ["inc-1"]


def test_an_agent_restarted_keeps_the_incidents_an_operator_confirmed(tmp_path: Path) -> None:
    def agent() -> Agent:
        cfg = AgentConfig.for_device("pump-c", "plant1", "", tmp_path)
        return Agent(cfg, ReplaySource([]), store=False)

    first = agent()
    first.note_feedback({"incident": "pump-c:0:17", "label": "confirmed", "issued_by": "op"})
    first.note_feedback({"incident": "pump-c:0:18", "label": "confirmed"})
    first.note_feedback({"incident": "pump-c:0:18", "label": "maintenance_done"})
    first.close()
    second = agent()
    assert list(second.confirmed_incidents) == ["pump-c:0:17"]
    second.close()
