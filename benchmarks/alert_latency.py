"""Alert latency: from the last sample of a window to a control-room subscriber.

Real parts on loopback: a mosquitto process, simulated machines paced to the wall clock,
one agent per machine with the default config (features, int8 ONNX model, decisions,
SQLite outbox with fsync, MQTT link with the gateway presence gate), a paho subscriber on
the device topics (what a SCADA or Node-RED sees) that also announces a live gateway
presence every second (as a gateway does), so the devices publish. The simulator stamps
each frame with wall-clock time, so for every record

    latency = time the subscriber received it - window_ts (the window's last sample)

Deployments run one agent process per device: ``--mode process`` (default) starts each
agent in its own Python process. ``--mode thread`` runs every agent as a thread of this
one process (they then share one interpreter lock: a stress case, not a deployment).

Alerts are rare (one per incident change), so the run uses several faulty machines and
reports telemetry records too: they take the same path (outbox, drain, broker) except the
per-record fsync that alerts get and the immediate drain an alert triggers (telemetry
waits for the next drain tick, ``link.drain_interval_s``).

A run gives a few alerts per machine (raised, escalated, cleared); ``--rounds`` repeats the
run (fresh broker, agents and state each time) and pools the latencies, so p99 rests on
more than a handful of alerts.

    python benchmarks/alert_latency.py [--devices 4] [--duration-s 40] [--mode process]
                                       [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _mosquitto import start_mosquitto  # noqa: E402  (benchmarks/ is first on sys.path)

from foreshock import demo, messages, topics  # noqa: E402

SITE = "bench"




def subscribe(port: int, latencies: dict[str, list[float]], stop: threading.Event
              ) -> mqtt.Client:
    """The control-room subscriber; it also announces a live gateway presence every
    second (non-retained, as the gateway does) so the agents' presence gate opens."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        batch = messages.decode_batch(msg.payload)
        for rec in batch.records:
            if "window_ts" in rec.body:
                latencies[batch.kind].append(now - float(rec.body["window_ts"]))

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    for kind in ("alert", "telemetry"):
        client.subscribe(topics.device_filter(kind, SITE), qos=1)
    client.loop_start()

    def announce() -> None:
        while not stop.wait(0.0):
            client.publish(topics.gateway_presence(SITE), messages.gateway_presence_message(
                SITE, "bench-gateway", online=True, ts=time.time(), interval_s=1.0), qos=1)
            stop.wait(1.0)

    threading.Thread(target=announce, daemon=True).start()
    return client


class StartOnFirstRead:
    """A simulated node created at the agent's first read, so its wall-clock frame stamps
    start when the agent starts listening (model loading happens before that)."""

    def __init__(self, make: Any) -> None:
        self._make = make
        self._source: Any = None
        self.stats: dict[str, int] = {}

    def read(self, timeout_s: float) -> list[Any]:
        if self._source is None:
            self._source = self._make()
            self.stats = self._source.stats
        frames: list[Any] = self._source.read(timeout_s)
        return frames

    @property
    def exhausted(self) -> bool:
        return self._source is not None and bool(self._source.exhausted)

    def close(self) -> None:
        if self._source is not None:
            self._source.close()


def make_agent(i: int, port: int, workdir: Path, duration_s: float) -> Any:
    from agent.config import AgentConfig
    from agent.service import Agent
    from firmware_sim.node import NodeSource, SimNode
    from firmware_sim.scenario import Scenario

    bundle, key = demo.default_bundle()
    scenario = demo.demo_scenario(Scenario.load(demo.FAULTY), duration_s)
    config = AgentConfig.for_device(
        f"m{i}", SITE, f"mqtt://127.0.0.1:{port}", workdir / f"m{i}",
        model={"bundle": str(bundle), "trusted_keys": [str(key)]},
        decision={"commission_s": demo.commission_s(duration_s)})
    source = StartOnFirstRead(lambda: NodeSource(SimNode(scenario, f"m{i}", seed=i + 1),
                                                 realtime=True))
    return Agent(config, source)


def child(i: int, port: int, workdir: Path, duration_s: float) -> None:
    """One device's agent process: runs ``duration_s`` after start-up, then stops."""
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    agent = make_agent(i, port, workdir, duration_s)
    print("ready", flush=True)
    threading.Timer(duration_s, stop.set).start()
    agent.run(stop)


def run(devices: int, duration_s: float, workdir: Path, mode: str) -> dict[str, list[float]]:
    broker, port = start_mosquitto(workdir)
    latencies: dict[str, list[float]] = {"alert": [], "telemetry": []}
    stop, quiet = threading.Event(), threading.Event()
    sub = subscribe(port, latencies, quiet)
    threads, procs = [], []
    try:
        if mode == "process":
            for i in range(devices):
                procs.append(subprocess.Popen(
                    [sys.executable, __file__, "--child", str(i), "--port", str(port),
                     "--workdir", str(workdir), "--duration-s", str(duration_s)],
                    stdout=subprocess.PIPE, text=True))
            for proc in procs:   # each one's clock starts at its first read, after loading
                assert proc.stdout is not None
                proc.stdout.readline()
            for proc in procs:
                proc.wait(duration_s + 60)
        else:
            for i in range(devices):
                agent = make_agent(i, port, workdir, duration_s)
                t = threading.Thread(target=agent.run, args=(stop,), daemon=True)
                t.start()
                threads.append(t)
            time.sleep(duration_s)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        time.sleep(1.0)
        quiet.set()
        sub.loop_stop()
        broker.terminate()
        broker.wait(5)
    return latencies


def describe(values: list[float]) -> str:
    if not values:
        return "no records"
    ms = np.asarray(values) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return (f"n={ms.size:5d}  p50={p50:7.1f} ms  p90={p90:7.1f} ms  p99={p99:7.1f} ms  "
            f"max={ms.max():7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--duration-s", type=float, default=40.0)
    parser.add_argument("--mode", choices=("process", "thread"), default="process",
                        help="one agent process per device (deployment), or all agents as "
                        "threads of one process")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the run and pool the latencies")
    parser.add_argument("--json", type=Path, help="also write the raw latencies here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.port, args.workdir, args.duration_s)
        return
    load_before = os.getloadavg()[0]
    latencies: dict[str, list[float]] = {"alert": [], "telemetry": []}
    for _ in range(args.rounds):
        workdir = Path(tempfile.mkdtemp(prefix="foreshock-latency-"))
        try:
            for kind, values in run(args.devices, args.duration_s, workdir, args.mode).items():
                latencies[kind] += values
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    how = ("one agent process per device" if args.mode == "process"
           else "all agents as threads of one process")
    print(f"alert latency, last sample of the window -> subscriber, through mosquitto "
          f"({args.devices} faulty machines, {how}, {args.rounds} x {args.duration_s:g} s, load "
          f"{load_before:.1f} -> {os.getloadavg()[0]:.1f})")
    print(f"  alert      {describe(latencies['alert'])}")
    print(f"  telemetry  {describe(latencies['telemetry'])}")
    if args.json:
        args.json.write_text(json.dumps(latencies))


if __name__ == "__main__":
    main()
