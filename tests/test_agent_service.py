"""The agent end to end: frames -> windows -> features -> real ONNX -> decision -> real SQLite
outbox -> real mosquitto; backpressure; status file."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from test_inference import build_bundle

from agent.config import AgentConfig
from agent.inference import load_bundle
from agent.service import Agent
from agent.sources import ReplaySource
from foreshock.messages import decode_batch
from foreshock.wire import Frame

FS = 12_800.0
N = 1024


def frames(count: int, bad_from: int, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    out = []
    for seq in range(count):
        t = (seq * N + np.arange(N)) / FS
        amp = 1.0 if seq < bad_from else 5.0
        x = 0.2 * np.sin(2 * np.pi * 29.95 * t) + 0.05 * amp * rng.standard_normal(N)
        out.append(Frame.from_samples("node1", 0, seq, 1_700_000_000_000_000
                                      + round(seq * N / FS * 1e6), FS, x, rpm=1797.0))
    return out


def test_agent_publishes_through_mosquitto(tmp_path: Path, mosquitto: object) -> None:
    url = mosquitto.url  # type: ignore[attr-defined]
    got: list[tuple[str, bytes]] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: got.append((m.topic, bytes(m.payload)))
    sub.connect(mosquitto.host, mosquitto.port)  # type: ignore[attr-defined]
    sub.subscribe("foreshock/v1/plant1/pump-1/#", qos=1)
    sub.loop_start()
    path, pub = build_bundle(tmp_path)
    cfg = AgentConfig.for_device("pump-1", "plant1", url, tmp_path / "state",
                                 decision={"commission_s": 4.0},
                                 model={"bundle": str(path), "trusted_keys": [str(pub)]},
                                 service={"health_interval_s": 0.2},
                                 link={"require_gateway": False})  # a bare subscriber here
    agent = Agent(cfg, ReplaySource(frames(300, 200)))
    assert agent.model_info == {"name": "tiny", "version": "1.2.3"}
    agent.start()
    assert agent.link.wait_connected(10)
    stop = threading.Event()
    agent.run(stop)
    deadline = time.monotonic() + 10
    kinds: dict[str, list] = {}
    while time.monotonic() < deadline:
        kinds = {}
        for topic, payload in got:
            if not topic.endswith("/state"):
                b = decode_batch(payload)
                kinds.setdefault(b.kind, []).extend(b.records)
        if len(kinds.get("telemetry", [])) == agent.counters["windows_processed"]:
            break
        time.sleep(0.1)
    sub.loop_stop()
    sub.disconnect()
    n = agent.counters["windows_processed"]
    assert n == (300 * N - 4096) // 2048 + 1
    assert len(kinds["telemetry"]) == n
    alerts = [r.body for r in kinds["alert"]]
    assert [a["status"] for a in alerts][:1] == ["raised"]
    assert len({a["incident"] for a in alerts}) == 1
    assert alerts[0]["model"] == {"name": "tiny", "version": "1.2.3"}
    assert alerts[0]["explanation"]["summary"]
    assert any(r.body["type"] == "baseline" for r in kinds["event"])
    health = kinds["health"][-1].body
    assert health["counters"]["windows_processed"] == n
    assert health["counters"]["windows_checked"] == n and health["channels"] == {"node1/0": "ok"}
    for stage in ("source", "window", "quality", "features", "inference", "decision"):
        lat = health["latency_ms"][stage]
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"], stage
    assert health["drift"] is None       # the test bundle ships no training_stats
    assert set(health["outbox_depth"]) >= {"telemetry", "alert"}
    status = json.loads(cfg.service.status_file.read_text())
    assert status["model"]["version"] == "1.2.3"
    assert status["outbox_depth"]["telemetry"]["rows"] == 0


def test_backpressure_drops_oldest_windows(tmp_path: Path) -> None:
    cfg = AgentConfig.for_device("pump-2", "plant1", "", tmp_path,
                                 service={"max_queued_windows": 4, "batch_windows": 2})
    agent = Agent(cfg, ReplaySource(frames(100, 1000), batch=100))
    assert agent.step() == 2
    windows = (100 * N - 4096) // 2048 + 1
    assert agent.counters["dropped_windows"] == windows - 4
    newest = agent.queue[-1].start_us
    agent.close()
    assert agent.counters["windows_processed"] == 4
    assert newest == 1_700_000_000_000_000 + round((windows - 1) * 2048 / FS * 1e6)
    depth = json.loads(cfg.service.status_file.read_text())["outbox_depth"]
    assert depth["telemetry"]["rows"] == 4


def test_explicit_detector_from_bundle(tmp_path: Path) -> None:
    path, pub = build_bundle(tmp_path)
    from agent.features import DEFAULT_SPEC

    b = load_bundle(path, [pub], DEFAULT_SPEC.hash)
    cfg = AgentConfig.for_device("pump-3", "plant1", "", tmp_path / "s",
                                 decision={"commission_s": 2.0})
    results: list[Any] = []
    agent = Agent(cfg, ReplaySource(frames(60, 1000)), bundle=b, store=False,
                  on_result=results.append)
    agent.run(threading.Event())
    assert results and results[-1].commissioning is False
    assert np.isfinite(results[-1].anomaly)


def test_run_under_notify_socket_and_sigterm(tmp_path: Path) -> None:
    """`foreshock agent run` as a process: READY=1 on a real notify socket, WATCHDOG=1 pings,
    SIGTERM -> STOPPING=1, exit 0, outbox closed (WAL checkpointed), status written."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    conf = tmp_path / "agent.toml"
    conf.write_text(f"""
[device]
device_id = "pump-5"
site = "plant1"
[source]
type = "udp"
params = {{ host = "127.0.0.1", port = 0 }}
[service]
state_dir = "{tmp_path / 'state'}"
health_interval_s = 0.2
""")
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(30)
        env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}
        proc = subprocess.Popen([sys.executable, "-m", "foreshock.cli", "agent", "run",
                                 "--config", str(conf)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            seen: list[str] = []
            while "READY=1" not in seen or "WATCHDOG=1" not in seen:
                seen += sock.recv(4096).decode().split("\n")
            proc.send_signal(signal.SIGTERM)
            while "STOPPING=1" not in seen:
                seen += sock.recv(4096).decode().split("\n")
            assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    state = tmp_path / "state"
    status = json.loads((state / "status.json").read_text())
    assert status["device"] == "pump-5"
    assert status["counters"]["health"] >= 1
    wal = state / "outbox.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def test_corrupt_outbox_is_reported_as_event(tmp_path: Path) -> None:
    (tmp_path / "outbox.sqlite").write_bytes(b"this is not a database" * 100)
    cfg = AgentConfig.for_device("pump-6", "plant1", "", tmp_path)
    agent = Agent(cfg, ReplaySource([]))
    events = [r.body for _, r in agent.outbox.pending("event", 10)]
    agent.close()
    assert events[0]["type"] == "outbox" and "corrupt" in events[0]["detail"]["status"]
    assert list(tmp_path.glob("outbox.sqlite.corrupt-*"))


def test_replace_model_keeps_running_model_on_refusal(tmp_path: Path) -> None:
    path, pub = build_bundle(tmp_path / "b")
    cfg = AgentConfig.for_device("pump-7", "plant1", "", tmp_path / "s",
                                 model={"default_bundle": False})
    agent = Agent(cfg, ReplaySource(frames(40, 1000)))
    assert agent.model_info["name"] == "ZScoreDetector"
    other = tmp_path / "other.pub"
    from foreshock import bundle as fb

    other.write_bytes(fb.public_key_pem(fb.generate_signing_key().public_key()))
    assert agent.replace_model(path, [other]) is False
    assert agent.model_info["name"] == "ZScoreDetector"
    assert agent.replace_model(path, [pub]) is True
    assert agent.model_info == {"name": "tiny", "version": "1.2.3"}
    agent.run(threading.Event())
    again = Agent(cfg, ReplaySource([]))
    events = [r.body["detail"] for _, r in again.outbox.pending("event", 10)]
    again.close()
    assert [e["status"] for e in events if "bundle" in e] == ["refused", "loaded"]
    assert "trusted" in events[0]["reason"]


def test_data_quality_event_counts_gaps(tmp_path: Path) -> None:
    fr = frames(30, 1000)
    stream = fr[:10] + fr[12:20] + [fr[19]] + fr[20:]    # 2 missing, 1 duplicate
    cfg = AgentConfig.for_device("pump-8", "plant1", "", tmp_path,
                                 model={"default_bundle": False})
    agent = Agent(cfg, ReplaySource(stream))
    agent.run(threading.Event())
    again = Agent(cfg, ReplaySource([]))
    events = [r.body for _, r in again.outbox.pending("event", 10)]
    again.close()
    dq = [e["detail"]["since_last_health"] for e in events
          if e["type"] == "data_quality" and "since_last_health" in e["detail"]]
    assert dq == [{"seq_gaps": 1, "missing_frames": 2, "duplicates": 1}]


def sensor_fault_frames(seconds: float = 45.0) -> list[Frame]:
    """A healthy simulated machine whose sensor flatlines (20-25 s) and clips (30-35 s)."""
    import dataclasses

    from firmware_sim.node import NodeSource, SimNode
    from firmware_sim.scenario import Scenario, SensorFaultSpec

    scenario = dataclasses.replace(
        Scenario.load("healthy"), sample_rate_hz=FS, sample_format="int16", duration_s=seconds,
        sensor_faults=(SensorFaultSpec("flatline", start_s=20.0, duration_s=5.0),
                       SensorFaultSpec("clipping", start_s=30.0, duration_s=5.0, value=0.05)))
    source = NodeSource(SimNode(scenario, "node-sf", seed=3, start_time_s=1.7e9),
                        realtime=False)
    out: list[Frame] = []
    while not source.exhausted:
        out += source.read(0.0)
    return out


def test_sensor_fault_is_a_data_quality_event_not_an_alert(tmp_path: Path) -> None:
    """The shipped model on a flatlined, then clipped sensor: each fault is one bad/ok pair
    of data_quality events naming the check, its windows are not scored, and no alert."""
    fr = sensor_fault_frames()
    cfg = AgentConfig.for_device("node-sf", "plant1", "", tmp_path,
                                 decision={"commission_s": 10.0})
    results: list = []
    agent = Agent(cfg, ReplaySource(fr), on_result=results.append)
    agent.run(threading.Event())
    status = json.loads(cfg.service.status_file.read_text())
    again = Agent(cfg, ReplaySource([]))
    events = [r.body["detail"] for _, r in again.outbox.pending("event", 100)
              if r.body["type"] == "data_quality" and "state" in r.body["detail"]]
    alerts = list(again.outbox.pending("alert", 100))
    again.close()
    assert [(e["state"], e["issues"][0]["check"]) for e in events] == [
        ("bad", "flatline"), ("ok", "flatline"), ("bad", "clipping"), ("ok", "clipping")]
    assert events[0]["channel"] == 0 and events[0]["device_id"] == "node-sf"
    assert alerts == [] and agent.counters["alerts"] == 0
    # ~5 s of each fault at 0.16 s per window: not one of those windows reached the model
    assert agent.counters["windows_unscored"] >= 50
    scored_ts = {round(r.window.end_s - 1.7e9, 2) for r in results}
    assert not any(21.0 < t < 25.0 or 31.0 < t < 35.0 for t in scored_ts)
    assert status["channels"] == {"node-sf/0": "ok"}
    assert status["counters"]["dq_flatline"] > 0 and status["counters"]["dq_clipping"] > 0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_prometheus_endpoint_scraped_over_http(tmp_path: Path) -> None:
    import urllib.request

    cfg = AgentConfig.for_device("pump-10", "plant1", "", tmp_path,
                                 model={"default_bundle": False},
                                 monitor={"prometheus_port": free_port()})
    agent = Agent(cfg, ReplaySource(frames(80, 1000), batch=20))
    agent.start()
    try:
        assert agent.exporter is not None
        while not agent.source.exhausted or agent.queue:
            agent.step()
        with urllib.request.urlopen(agent.exporter.url, timeout=5) as resp:
            text = resp.read().decode()
            assert resp.status == 200
        status = agent.status()
    finally:
        agent.close()
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert samples["foreshock_windows_processed_total"] == agent.counters["windows_processed"]
    assert samples['foreshock_channel_bad{channel="node1/0"}'] == 0.0
    assert 'foreshock_stage_latency_seconds{stage="features",quantile="0.50"}' in samples
    assert samples["foreshock_window_seq_gaps_total"] == 0.0
    assert status["metrics_url"] == agent.exporter.url
    with pytest.raises(OSError):        # closed with the agent
        urllib.request.urlopen(agent.exporter.url, timeout=2)


def test_metrics_endpoint_refuses_non_loopback(tmp_path: Path) -> None:
    from foreshock.errors import ConfigError

    with pytest.raises(ConfigError, match="prometheus_host"):
        AgentConfig.for_device("pump-11", "plant1", "", tmp_path,
                               monitor={"prometheus_port": 9464, "prometheus_host": "0.0.0.0"})


def test_drift_from_bundle_training_stats(tmp_path: Path) -> None:
    """A bundle whose training_stats put every input far from what this machine shows: the
    drift monitor is on, a drift event names the features, health and status carry it."""
    from test_inference import INPUTS

    from agent.monitor import training_stats
    from foreshock import bundle as fb

    path, pub = build_bundle(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    shifted = np.random.default_rng(0).normal(8.0, 0.5, size=(500, len(INPUTS)))
    manifest["training_stats"] = training_stats(shifted, list(INPUTS))
    for name in ("manifest.json", "manifest.sig"):
        (path / name).unlink(missing_ok=True)
    fb.write_manifest(path, {k: v for k, v in manifest.items() if k not in ("files",)})
    key = fb.generate_signing_key()
    fb.sign(path, key)
    pub.write_bytes(fb.public_key_pem(key.public_key()))
    cfg = AgentConfig.for_device("pump-12", "plant1", "", tmp_path / "s",
                                 decision={"commission_s": 2.0},
                                 model={"bundle": str(path), "trusted_keys": [str(pub)]},
                                 monitor={"drift": {"window": 100, "min_windows": 50,
                                                    "every": 25}})
    agent = Agent(cfg, ReplaySource(frames(300, 1000)))
    assert agent.monitor.drift is not None
    agent.run(threading.Event())
    status = json.loads(cfg.service.status_file.read_text())
    again = Agent(cfg, ReplaySource([]))
    events = [r.body["detail"] for _, r in again.outbox.pending("event", 100)
              if r.body["type"] == "drift"]
    health = [r.body for _, r in again.outbox.pending("health", 10)]
    again.close()
    assert events and events[0]["state"] == "started"
    assert {f["name"] for f in events[0]["features"]} <= set(INPUTS)
    assert "rms_g" in events[0]["new"]
    assert "rms_g" in health[-1]["drift"]["drifting"]
    assert status["drift_watched"] is True and "rms_g" in status["drift"]["drifting"]


def test_step_telemetry_matches_each_result(tmp_path: Path) -> None:
    """StepOutput.telemetry (built column-wise) gives each result's telemetry body, for
    commissioning and scored windows, every window or every n-th."""
    from agent.pipeline import Pipeline
    from agent.window import Windower

    cfg = AgentConfig.for_device("pump-9", "plant1", "", tmp_path,
                                 decision={"commission_s": 2.0})
    pipe = Pipeline(cfg)
    windows = Windower(pipe.spec).push_many(frames(120, 80))
    outs = [pipe.process(windows[i:i + 20]) for i in range(0, len(windows), 20)]
    assert {r.commissioning for o in outs for r in o.results} == {True, False}
    for out in outs:
        assert out.telemetry() == [(r.telemetry, r.window.end_s) for r in out.results]
        assert out.telemetry(3, 1) == [(r.telemetry, r.window.end_s) for r in out.results
                                       if (1 + r.index) % 3 == 0]


def test_blas_runs_one_thread_while_the_loop_runs(tmp_path: Path) -> None:
    """Idle BLAS worker threads spin on the CPU the next window needs: the loop limits BLAS
    to one thread, and the limit is lifted when the (last) loop ends."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> list[int]:
        return [int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]

    seen: list[list[int]] = []
    cfg = AgentConfig.for_device("pump-8", "plant1", "", tmp_path, decision={"commission_s": 2.0})
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        agent = Agent(cfg, ReplaySource(frames(40, 1000)), store=False,
                      on_result=lambda r: seen.append(blas_threads()))
        agent.run(threading.Event())
        assert seen and all(n == [1] * len(before) for n in seen)
        assert blas_threads() == before and before and max(before) == 2


def test_a_record_that_cannot_be_stored_does_not_cost_the_alert(tmp_path: Path) -> None:
    """A step's records go in one transaction; if one cannot be encoded, the classes are
    stored one by one, alerts first, as each on its own would be."""
    cfg = AgentConfig.for_device("pump-7", "plant1", "", tmp_path)
    agent = Agent(cfg, ReplaySource([]))
    body = {"incident": "inc-1", "status": "raised", "severity": "alarm", "channel": 0,
            "anomaly_score": 3.2, "threshold": 2.0, "fault": "outer_race", "zone": "C",
            "window_ts": 1_764_250_000.0, "explanation": {"top": [["bpfo_env", 6.1]]},
            "model": {"name": "m", "version": "1"}}
    agent._store([body], [], [({"bad": "telemetry"}, 1_764_250_000.0)], 1_764_250_000.0)
    assert [r.body for _, r in agent.outbox.pending("alert", 10)] == [body]
    assert agent.outbox.depth()["telemetry"].rows == 0
    assert agent.counters["outbox_errors"] == 1
    agent.close()
