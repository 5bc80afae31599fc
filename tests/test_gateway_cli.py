"""``foreshock gateway fleet`` and ``export`` on a real SQLite store, through the root CLI."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from foreshock.messages import Batch, Record
from gateway.fleet import age, parse_time
from gateway.store import RolloutRow, open_store

T0 = 1_764_250_000.0


def fill(db: str) -> None:
    store = open_store(db)
    tele = [Record(i, T0 + i, {"channel": 0, "window_ts": T0 + i, "anomaly_score": i / 10,
                               "fault": "normal", "fault_probability": 0.9, "rms_g": 0.2,
                               "velocity_rms_mm_s": 1.0, "zone": "A", "extra": {"k": 1}})
            for i in range(10)]
    store.store_batch(Batch("plant1", "pump-1", "b1", "telemetry", tuple(tele)), T0 + 20)
    alert = Record(11, T0 + 11, {"incident": "i1", "status": "raised", "severity": "alarm",
                                 "channel": 0, "anomaly_score": 5.0, "threshold": 3.0,
                                 "fault": "ball", "zone": "C", "explanation": {"bsf": 4.0},
                                 "model": {"name": "m", "version": "1.0.0"}})
    store.store_batch(Batch("plant1", "pump-1", "b1", "alert", (alert,)), T0 + 21)
    store.store_state({"site": "plant1", "device": "pump-1", "online": True, "boot_id": "b1",
                       "ts": T0, "agent_version": "0.1.0",
                       "model": {"name": "m", "version": "1.0.0"}}, T0 + 22)
    store.save_rollout(RolloutRow("r1", "m", "1.1.0", "plant1", 1, 20.0, "canary", T0, T0))
    store.set_rollout_device("r1", "plant1", "pump-1", "shadow", {}, T0 + 23)
    store.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foreshock.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_fleet_table_shows_registry_and_rollout(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'gw.db'}"
    fill(db)
    res = cli("gateway", "fleet", "--db", db)
    assert res.returncode == 0, res.stderr
    assert "pump-1" in res.stdout and "online" in res.stdout
    assert "1.1.0 shadow" in res.stdout and "alarm raised i1" in res.stdout


def test_export_csv_telemetry_and_alerts(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'gw.db'}"
    fill(db)
    out = tmp_path / "t.csv"
    res = cli("gateway", "export", "--db", db, "--device", "pump-1", "--kind", "telemetry",
              "--since", str(T0 + 2), "--until", str(T0 + 5), "--out", str(out))
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(out.open()))
    assert [int(r["seq"]) for r in rows] == [2, 3, 4]
    assert float(rows[0]["anomaly_score"]) == pytest.approx(0.2)
    assert rows[0]["extra"] == '{"k": 1}'
    res = cli("gateway", "export", "--db", db, "--device", "pump-1", "--kind", "alerts",
              "--out", str(tmp_path / "a.csv"))
    assert res.returncode == 0, res.stderr
    alerts = list(csv.DictReader((tmp_path / "a.csv").open()))
    assert alerts[0]["explanation"] == '{"bsf": 4.0}'


def test_export_errors_are_one_line(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'gw.db'}"
    fill(db)
    res = cli("gateway", "export", "--db", db, "--device", "pump-1", "--kind", "raw",
              "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and res.stderr.startswith("error: --kind 'raw'")
    assert "Traceback" not in res.stderr
    res = cli("gateway", "export", "--db", db, "--device", "pump-1", "--since", "yesterday",
              "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "--since 'yesterday'" in res.stderr
    res = cli("gateway", "export", "--db", db, "--device", "pump-1", "--format", "parquet",
              "--out", str(tmp_path / "x.parquet"))
    if importlib.util.find_spec("pyarrow") is None:
        assert res.returncode == 2 and "pyarrow" in res.stderr and "parquet" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 2  # error line and hint
    else:
        assert res.returncode == 0, res.stderr


def test_time_parsing_and_age() -> None:
    assert parse_time("2026-11-27T00:00:00", "since") == parse_time("1795737600", "since")
    assert parse_time(None, "since") is None
    assert age(100.0, 10.0) == "2m" and age(100.0, 95.0) == "5s" and age(1.0, None) == "?"


def test_deploy_errors_are_one_line(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'gw.db'}"
    from foreshock import bundle as fsbundle

    pub = tmp_path / "k.pub"
    pub.write_bytes(fsbundle.public_key_pem(fsbundle.generate_signing_key().public_key()))
    res = cli("gateway", "deploy", str(tmp_path), "--to", "plant1", "--key", str(pub),
              "--db", db)
    assert res.returncode == 2 and "names no devices" in res.stderr
    res = cli("gateway", "deploy", str(tmp_path / "nothing"), "--to", "plant1/pump-1",
              "--key", str(pub), "--db", db, "--broker", "mqtt://127.0.0.1:1")
    assert res.returncode == 1 and res.stderr.startswith("error: ") and "bundle" in res.stderr
    assert "Traceback" not in res.stderr


def test_run_ingests_until_sigterm(tmp_path: Path, mosquitto: object) -> None:
    import signal
    import time

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from foreshock import messages, topics

    url = mosquitto.url  # type: ignore[attr-defined]
    db = tmp_path / "run.db"
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[gateway]\nbroker_url = "{url}"\nsite = "runsite"\n'
                    f'db_url = "sqlite:///{db}"\nclient_id = "cli-run-test"\n'
                    'session_expiry_s = 0\n')
    proc = subprocess.Popen([sys.executable, "-m", "foreshock.cli", "gateway", "run",
                             "--config", str(conf)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        host, port = url.removeprefix("mqtt://").split(":")
        dev = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        dev.connect(host, int(port))
        dev.loop_start()
        rec = Record(1, T0, {"uptime_s": 1.0, "counters": {}})
        payload = messages.encode_batch(Batch("runsite", "dev-1", "b", "health", (rec,)))
        count = 0
        while count == 0 and time.monotonic() < deadline:
            dev.publish(topics.record("runsite", "dev-1", "health"), payload,
                        qos=1).wait_for_publish(5)
            time.sleep(0.5)
            if db.exists():
                store = open_store(f"sqlite:///{db}")
                count = store.count()
                store.close()
        dev.loop_stop()
        dev.disconnect()
        assert count == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_deploy_targets_site_device_list_and_glob_group(tmp_path: Path) -> None:
    from gateway.deploy import targets

    store = open_store(f"sqlite:///{tmp_path / 'gw.db'}")
    for device in ("pump-1", "pump-2", "fan-1"):
        store.store_state({"site": "plant1", "device": device, "online": True,
                           "boot_id": "b", "ts": T0}, T0)
    assert targets(store, "plant1") == ("plant1", ("fan-1", "pump-1", "pump-2"))
    assert targets(store, "plant1/pump-*") == ("plant1", ("pump-1", "pump-2"))
    assert targets(store, "plant1/fan-1,pump-*,fan-1") == ("plant1",
                                                          ("fan-1", "pump-1", "pump-2"))
    store.close()
