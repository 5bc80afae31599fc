"""Operator feedback: stored with the alert's features, by CLI and by the cmd/feedback topic,
on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.features import DEFAULT_SPEC
from foreshock import messages
from foreshock.errors import ConfigError
from foreshock.messages import Batch, Record
from gateway import feedback as fb
from gateway.ingest import Ingestor
from gateway.schema import LATEST_VERSION
from gateway.store import Store, open_store

T0 = 1_764_250_000.0
NAMES = DEFAULT_SPEC.feature_names


def alert(seq: int, incident: str, status: str = "raised", score: float = 4.2) -> Record:
    z = {n: 0.1 * i for i, n in enumerate(NAMES)}
    return Record(seq, T0 + seq, {
        "incident": incident, "status": status, "severity": "alarm", "channel": 1,
        "anomaly_score": score, "threshold": 3.0, "fault": "outer_race", "zone": "C",
        "explanation": {"summary": "x", "features_z": z,
                        "top_features": [{"name": "kurtosis", "z": 9.0}]},
        "model": {"name": "default", "version": "1.0.0"}})


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = (f"sqlite:///{tmp_path / 'gw.db'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres_dsn"))
    s = open_store(url)
    s.store_batch(Batch("plant1", "pump-1", "b", "alert",
                        (alert(1, "inc-a"), alert(2, "inc-a", "updated", 6.0),
                         alert(3, "inc-a", "cleared", 1.0), alert(4, "inc-b")), T0), T0)
    yield s
    s.close()


def test_label_by_alert_id_and_incident_keeps_features(store: Store) -> None:
    assert store.schema_version() == LATEST_VERSION >= 2
    first = fb.record(store, label="false_alarm", operator="ana", ts=T0 + 10, alert_id=1)
    assert (first.incident, first.label, first.operator, first.source) == (
        "inc-a", "false_alarm", "ana", "cli")
    assert first.features == pytest.approx({n: 0.1 * i for i, n in enumerate(NAMES)})
    # the incident's most anomalous record (not the cleared one)
    second = fb.record(store, label="confirmed", operator="bo", ts=T0 + 20, incident="inc-a")
    assert second.anomaly_score == pytest.approx(6.0) and second.alert_ts == T0 + 2
    assert [f.label for f in fb.rows(store, incident="inc-a")] == ["false_alarm", "confirmed"]
    assert [f.label for f in fb.latest_labels(store)] == ["confirmed"]
    with pytest.raises(ConfigError, match="not one of"):
        fb.record(store, label="meh", operator="x", ts=T0, alert_id=1)
    with pytest.raises(ConfigError, match="no stored alert 99"):
        fb.record(store, label="confirmed", operator="x", ts=T0, alert_id=99)


def test_feedback_command_recorded_by_the_ingestor(store: Store) -> None:
    topic, payload = fb.feedback_command("plant1", "pump-1", incident="inc-b",
                                         label="maintenance_done", operator="carl", ts=T0)
    assert topic == "foreshock/v1/plant1/pump-1/cmd/feedback"
    assert messages.decode_command(payload)["args"]["label"] == "maintenance_done"
    ing = Ingestor(store)
    assert ing.handle(topic, payload, T0 + 5).valid
    got = fb.rows(store, incident="inc-b")
    assert [(f.label, f.operator, f.source) for f in got] == [("maintenance_done", "carl",
                                                               "mqtt")]
    # the wrong device, an unknown incident, a bad label: counted invalid, nothing stored
    wrong = fb.feedback_command("plant1", "fan-9", incident="inc-b", label="confirmed",
                                operator="x", ts=T0)
    bad = messages.command_message("feedback", {"incident": "inc-b", "label": "?"},
                                   issued_by="x", ts=T0, command_id="1")
    unknown = messages.command_message("feedback", {"incident": "nope", "label": "confirmed"},
                                       issued_by="x", ts=T0, command_id="2")
    assert not ing.handle(*wrong).valid
    assert not ing.handle(topic, bad).valid and not ing.handle(topic, unknown).valid
    assert not ing.handle(topic, b"{not json").valid
    assert ing.stats().invalid == 4 and len(fb.rows(store)) == 1


def test_cli_feedback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from foreshock.cli import main

    url = f"sqlite:///{tmp_path / 'gw.db'}"
    s = open_store(url)
    s.store_batch(Batch("plant1", "pump-1", "b", "alert", (alert(1, "inc-a"),), T0), T0)
    s.close()

    def run(args: list[str]) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exc:
            main(["gateway", "feedback", *args, "--db", url])
            raise SystemExit(0)
        out = capsys.readouterr()
        return int(exc.value.code or 0), out.out, out.err

    code, out, _ = run(["1", "--label", "false_alarm", "--by", "ana"])
    assert code == 0 and "false_alarm on plant1/pump-1 incident inc-a" in out
    assert f"({len(NAMES)} features stored)" in out
    code, out, _ = run(["--incident", "inc-a", "--label", "confirmed"])
    assert code == 0
    code, _, err = run(["--label", "confirmed"])
    assert code == 2 and "exactly one" in err
    code, _, err = run(["7", "--label", "confirmed"])
    assert code == 2 and "no stored alert 7" in err
    code, _, err = run(["1", "--label", "bogus"])
    assert code == 2 and "not one of" in err


def test_watch_mark_publishes_feedback_the_gateway_records(
        tmp_path: Path, mosquitto: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`foreshock watch --mark` through a real broker to a running gateway, which records it."""
    import time
    import uuid

    from foreshock.cli import main
    from gateway.config import GatewayConfig
    from gateway.service import Gateway

    site = f"fb{uuid.uuid4().hex[:6]}"
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    s = open_store(db_url)
    s.store_batch(Batch(site, "pump-1", "b", "alert", (alert(1, "inc-w"),), T0), T0)
    gateway = Gateway(GatewayConfig.for_site(mosquitto.url, site, db_url,
                                             client_id=f"gw-{site}"), store=s)
    gateway.start()
    try:
        with pytest.raises(SystemExit) as exc:
            main(["watch", "--broker", mosquitto.url, "--site", site, "--device", "pump-1",
                  "--mark", "inc-w", "--label", "false_alarm"])
            raise SystemExit(0)
        assert int(exc.value.code or 0) == 0
        assert "sent false_alarm for incident inc-w" in capsys.readouterr().out
        deadline = time.monotonic() + 10
        while not fb.rows(s) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(f.label, f.source) for f in fb.rows(s)] == [("false_alarm", "mqtt")]
    finally:
        gateway.stop()
    s.close()
    with pytest.raises(SystemExit) as exc:
        main(["watch", "--broker", mosquitto.url, "--mark", "inc-w"])
    assert exc.value.code == 2
