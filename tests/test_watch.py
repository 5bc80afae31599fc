"""The control-room view: WatchModel fed by real MQTT traffic, rendered with rich."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console

from foreshock import messages, topics
from foreshock.messages import Batch, Record
from gateway.watch import WatchModel, explain, render
from gateway.watch_link import WatchSubscriber

T0 = 1_764_250_000.0


def tele(seq: int, channel: int, score: float, zone: str = "A") -> Record:
    return Record(seq, T0 + seq, {
        "channel": channel, "window_ts": T0 + seq, "anomaly_score": score,
        "fault": "outer_race" if score > 1 else "normal", "fault_probability": 0.8,
        "rms_g": 0.3, "velocity_rms_mm_s": 4.5, "zone": zone})


def alert(seq: int, status: str) -> Record:
    return Record(seq, T0 + seq, {
        "incident": "inc-7", "status": status, "severity": "alarm", "channel": 1,
        "anomaly_score": 4.25, "threshold": 3.0, "fault": "outer_race", "zone": "C",
        "explanation": {"summary": "BPFO 3x baseline in envelope band 2-5 kHz"},
        "model": {"name": "m", "version": "1.0.0"}})


def payload(site: str, device: str, kind: str, records: list[Record]) -> bytes:
    return messages.encode_batch(Batch(site, device, "boot", kind, tuple(records), T0))


def text(model: WatchModel) -> str:
    console = Console(width=200, record=True)
    console.print(render(model, now=T0 + 100))
    return console.export_text()


def test_model_tracks_devices_scores_alerts_and_rollout() -> None:
    m = WatchModel("p1")
    assert m.feed(topics.state("p1", "pump-1"), messages.state_message(
        "p1", "pump-1", online=True, boot_id="boot", ts=T0, agent_version="0.1.0",
        model={"name": "m", "version": "1.0.0"}))
    m.feed(topics.record("p1", "pump-1", "telemetry"),
           payload("p1", "pump-1", "telemetry", [tele(1, 0, 0.2), tele(2, 1, 2.5, "C")]))
    m.feed(topics.record("p1", "pump-1", "alert"), payload("p1", "pump-1", "alert",
                                                           [alert(3, "raised")]))
    m.feed(topics.model_status("p1", "pump-1"), messages.dumps({
        "schema": "foreshock.model_status/1", "status": "shadow", "progress": 0.5,
        "bundle": {"name": "m", "version": "1.1.0"}}))
    assert not m.feed(topics.record("p1", "pump-1", "telemetry"), b"junk")
    assert not m.feed("not/a/topic", b"{}")
    assert m.feed(topics.control_alert("p1"), b"{}")  # ignored, not counted
    out = text(m)
    assert "1/1 devices online" in out and "1 open alerts" in out and "2 invalid" in out
    assert "BPFO 3x baseline" in out and "4.25/3.00" in out and "2.50" in out
    assert "m 1.1.0" in out and "shadow" in out and "50%" in out
    m.feed(topics.record("p1", "pump-1", "alert"), payload("p1", "pump-1", "alert",
                                                           [alert(4, "cleared")]))
    m.feed(topics.state("p1", "pump-1"), messages.state_message(
        "p1", "pump-1", online=False, boot_id="boot", ts=T0, agent_version="0.1.0"))
    out = text(m)
    assert "0/1 devices online" in out and "0 open alerts" in out and "OFFLINE" in out


def test_explain_is_one_line() -> None:
    assert explain({"summary": "x"}) == "x"
    long = explain({"bands": list(range(100))}, max_chars=20)
    assert len(long) == 20 and long.endswith("…")


def test_subscriber_feeds_model_from_a_real_broker(mosquitto: Any) -> None:
    site = f"w{uuid.uuid4().hex[:6]}"
    host, port = mosquitto.url.removeprefix("mqtt://").split(":")
    dev = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    dev.connect(host, int(port))
    dev.loop_start()
    # retained birth published before the view starts must still show up
    dev.publish(topics.state(site, "fan-1"), messages.state_message(
        site, "fan-1", online=True, boot_id="b", ts=T0, agent_version="0.1.0"),
        qos=1, retain=True).wait_for_publish(5)
    model = WatchModel(site)
    sub = WatchSubscriber(mosquitto.url, site, model)
    sub.start()
    dev.publish(topics.record(site, "fan-1", "telemetry"),
                payload(site, "fan-1", "telemetry", [tele(1, 0, 0.7)]), qos=1).wait_for_publish(5)
    deadline = time.monotonic() + 5
    while model.messages < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    sub.stop()
    dev.publish(topics.state(site, "fan-1"), b"", retain=True).wait_for_publish(5)
    dev.loop_stop()
    dev.disconnect()
    view = model.devices[(site, "fan-1")]
    assert view.online is True and view.scores[0]["anomaly_score"] == 0.7


def test_watch_command_runs_for_a_while_and_exits(mosquitto: Any) -> None:
    res = subprocess.run([sys.executable, "-m", "foreshock.cli", "watch", "--broker",
                          mosquitto.url, "--site", "nobody", "--duration-s", "0.5"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "Foreshock site nobody" in res.stdout
    res = subprocess.run([sys.executable, "-m", "foreshock.cli", "watch", "--broker",
                          mosquitto.url, "--protocol", "3.1.1", "--duration-s", "0.3"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([sys.executable, "-m", "foreshock.cli", "watch", "--broker",
                          "mqtt://127.0.0.1:1", "--duration-s", "0.5"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and res.stderr.startswith("error: cannot connect to broker")
