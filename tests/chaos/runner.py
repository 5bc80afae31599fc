"""Chaos runner: one agent, gateway or final drain as a real process that can be SIGKILLed.

    python tests/chaos/runner.py agent spec.json
    python tests/chaos/runner.py gateway spec.json
    python tests/chaos/runner.py drain spec.json

``agent``: a simulated node (``firmware_sim``) feeds a real :class:`agent.service.Agent`
(features, ONNX model, SQLite outbox, MQTT link). Besides the detector's own alerts, a
thread puts alert records into the agent's outbox at ``alert_rate_hz`` so every scenario has
alerts under load; the ``(boot_id, seq)`` of every alert whose ``put()`` returned is
appended to ``alerts.log`` (flushed) for the harness to look up in the gateway store.
``clock_jumps`` steps this process's wall clock (``time.time``) by the given seconds at the
given elapsed seconds; ``frame_jumps`` steps the node's frame timestamps likewise.
On SIGTERM (or when a finite source ends) the agent drains for ``drain_s`` and closes; its
counters go to ``summary.json``.

``gateway``: a real :class:`gateway.service.Gateway` into a SQLite store; a hook appends
``kind device boot seq`` of every delivered record to ``deliveries.log`` (before the ack),
so the harness counts duplicates per class even across gateway kills.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from foreshock import messages, topics

_REAL_TIME = time.time
_REAL_TIME_NS = time.time_ns
CLOCK_OFFSET_S = [0.0]


def _install_clock_hook() -> None:
    """This process's wall clock = the real one + ``CLOCK_OFFSET_S`` (an NTP step)."""
    time.time = lambda: _REAL_TIME() + CLOCK_OFFSET_S[0]
    time.time_ns = lambda: _REAL_TIME_NS() + int(CLOCK_OFFSET_S[0] * 1e9)


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def alert_body(n: int) -> dict[str, Any]:
    return {"incident": f"chaos-{n}", "status": "raised", "severity": "warning",
            "channel": 0, "anomaly_score": 1.0, "threshold": 0.5, "fault": "unknown",
            "zone": "B", "explanation": {"summary": "injected by the chaos runner"},
            "model": {"name": "chaos", "version": "0"}}


def agent_config(spec: dict[str, Any]) -> Any:
    from agent.config import AgentConfig
    from foreshock.demo import commission_s, default_bundle

    bundle, key = default_bundle()
    return AgentConfig.for_device(
        spec["device"], spec["site"], spec["broker_url"], spec["state_dir"],
        model={"bundle": str(bundle), "trusted_keys": [str(key)]},
        decision={"commission_s": commission_s(60.0)},
        link={"protocol": "5", "client_id": f"chaos-{spec['device']}", "require_gateway": True,
              "backoff_min_s": 0.2, "backoff_max_s": 2.0},
        service={"health_interval_s": float(spec.get("health_interval_s", 2.0))},
        outbox=dict(spec.get("outbox", {})))


def make_source(spec: dict[str, Any]) -> Any:
    from firmware_sim.node import NodeSource, SimNode
    from firmware_sim.scenario import Scenario
    from foreshock.demo import demo_scenario

    scenario = Scenario.load(spec.get("scenario", "healthy"))
    if scenario.faults:
        scenario = demo_scenario(scenario, 120.0)
    scenario = dataclasses.replace(scenario, duration_s=float(spec.get("stream_s", 0.0)))
    node = SimNode(scenario, spec["device"], seed=int(spec.get("seed", 1)))
    return NodeSource(node, realtime=True, speed=float(spec.get("speed", 1.0)))


class AlertLog:
    """Wraps the outbox's ``put`` so every alert seq it returns is written down."""

    def __init__(self, outbox: Any, path: Path) -> None:
        self.outbox = outbox
        self.put_orig = outbox.put
        self.fh = open(path, "a")  # noqa: SIM115 - lives as long as the process
        self.lock = threading.Lock()
        outbox.put = self.put

    def put(self, kind: str, body: dict[str, Any], ts: float) -> int:
        seq = int(self.put_orig(kind, body, ts))
        if kind == "alert":
            with self.lock:
                self.fh.write(f"{self.outbox.boot_id}\t{seq}\n")
                self.fh.flush()
        return seq


class KillingConnection:
    """The outbox's SQLite connection, passed through, except that at the ``target``-th
    write statement (INSERT, DELETE, UPDATE or COMMIT) it SIGKILLs its own process just
    before or just after the statement: inside a transaction, between the write and the
    commit's fsync, or after the commit but before ``put()`` returns. The point is
    written to ``kills.log`` first."""

    def __init__(self, conn: Any, target: int, after: bool, log_path: Path) -> None:
        self._conn, self._left, self._after, self._log = conn, target, after, log_path

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def _maybe_kill(self, sql: str, after: bool) -> None:
        if self._left <= 0 and after == self._after:
            with open(self._log, "a") as fh:
                fh.write(f"{'after' if after else 'before'} {sql.split()[0].upper()}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    def _run(self, method: str, sql: str, *args: Any) -> Any:
        write = sql.lstrip().upper().startswith(("INSERT", "DELETE", "UPDATE", "COMMIT"))
        if write:
            self._left -= 1
            self._maybe_kill(sql, after=False)
        out = getattr(self._conn, method)(sql, *args)
        if write:
            self._maybe_kill(sql, after=True)
        return out

    def execute(self, sql: str, *args: Any) -> Any:
        return self._run("execute", sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self._run("executemany", sql, *args)


def _arm_self_kill(outbox: Any, spec: dict[str, Any], state: Path) -> None:
    lo, hi = spec.get("self_kill_writes") or (0, 0)
    if hi <= 0:
        return
    rng = random.Random()
    outbox._conn = KillingConnection(outbox._conn, rng.randint(int(lo), int(hi)),
                                     rng.random() < 0.5, state / "kills.log")


def _inject_alerts(outbox: Any, rate_hz: float, stop: threading.Event) -> None:
    n = 0
    while rate_hz > 0 and not stop.wait(1.0 / rate_hz):
        n += 1
        try:
            outbox.put("alert", alert_body(n), time.time())
        except Exception as exc:  # counted by the harness as missing puts, not a crash
            print(f"alert put failed: {exc}", file=sys.stderr)


def _jumps(spec: dict[str, Any], node: Any, stop: threading.Event) -> None:
    """Apply the wall-clock and frame-clock steps at their elapsed times."""
    t0 = time.monotonic()
    steps = [(float(at), float(dt), "clock") for at, dt in spec.get("clock_jumps", [])]
    steps += [(float(at), float(dt), "frame") for at, dt in spec.get("frame_jumps", [])]
    for at, dt, what in sorted(steps):
        if stop.wait(max(0.0, t0 + at - time.monotonic())):
            return
        if what == "clock":
            CLOCK_OFFSET_S[0] += dt
        else:
            node.start_us += int(dt * 1e6)


def run_agent(spec: dict[str, Any]) -> int:
    from agent.service import Agent

    _install_clock_hook()
    stop = _stop_event()
    state = Path(spec["state_dir"])
    (state / "ready").unlink(missing_ok=True)
    source = make_source(spec)
    agent = Agent(agent_config(spec), source)
    AlertLog(agent.outbox, state / "alerts.log")
    _arm_self_kill(agent.outbox, spec, state)
    side = threading.Event()
    threads = [threading.Thread(target=_inject_alerts, daemon=True,
                                args=(agent.outbox, float(spec.get("alert_rate_hz", 0)), side)),
               threading.Thread(target=_jumps, args=(spec, source.node, side), daemon=True)]
    for t in threads:
        t.start()
    agent.start()
    (state / "ready").touch()
    while not stop.is_set() and not (source.exhausted and not agent.queue):
        agent.step()
    side.set()
    for t in threads:
        t.join(5)
    deadline = time.monotonic() + float(spec.get("drain_s", 10.0))
    while time.monotonic() < deadline and sum(d.rows for d in agent.outbox.depth().values()):
        agent.drain(timeout_s=0.5)
        time.sleep(0.05)
    health = agent.health()
    agent.close()
    summary = {"counters": health.counters, "source": dict(source.stats),
               "clock_offset_s": CLOCK_OFFSET_S[0]}
    (state / "summary.json").write_text(json.dumps(summary, default=str))
    return 0


def run_gateway(spec: dict[str, Any]) -> int:
    from foreshock.errors import LinkError
    from gateway.config import GatewayConfig
    from gateway.service import Gateway

    stop = _stop_event()
    cfg = GatewayConfig.for_site(spec["broker_url"], spec["site"], f"sqlite:///{spec['db']}",
                                 share_group=spec.get("share_group", "chaos"),
                                 client_id="chaos-gateway", connect_timeout_s=5.0)
    gateway = Gateway(cfg)
    fh = open(spec["deliveries"], "a")  # noqa: SIM115 - lives as long as the process

    def hook(topic: str, payload: bytes) -> None:
        if topics.is_control(topic):  # the gateway's own alert re-publications
            return
        try:
            b = messages.decode_batch(bytes(payload))
        except Exception:
            return
        fh.write("".join(f"{b.kind}\t{b.device}\t{b.boot_id}\t{r.seq}\n" for r in b.records))
        fh.flush()

    gateway.hooks.append(hook)
    while not stop.is_set():
        try:
            gateway.start()
            break
        except LinkError:
            gateway = _fresh(gateway, cfg, hook)
            stop.wait(0.5)
    Path(spec["ready"]).touch()
    stop.wait()
    stats = dataclasses.asdict(gateway.stats())
    gateway.stop()
    Path(spec["db"]).with_suffix(".stats.json").write_text(json.dumps(stats))
    return 0


def _fresh(old: Any, cfg: Any, hook: Any) -> Any:
    from gateway.service import Gateway

    old.stop()
    new = Gateway(cfg)
    new.hooks.append(hook)
    return new


def run_drain(spec: dict[str, Any]) -> int:
    """Deliver whatever is left in a stopped agent's outbox (no source, no model)."""
    from agent.link import Link
    from agent.outbox import Outbox

    cfg = agent_config(spec)
    outbox = Outbox(cfg.outbox.path, cfg.outbox)
    link = Link(cfg.link.link_config(cfg.device.site, cfg.device.device_id),
                boot_id=outbox.boot_id)
    link.start()
    link.wait_connected(10.0)
    deadline = time.monotonic() + float(spec.get("drain_s", 10.0))
    while time.monotonic() < deadline and sum(d.rows for d in outbox.depth().values()):
        link.drain(outbox, timeout_s=0.5)
    link.stop()
    outbox.close()
    return 0


def main(argv: list[str]) -> int:
    mode, spec_path = argv[1], Path(argv[2])
    spec = json.loads(spec_path.read_text())
    return {"agent": run_agent, "gateway": run_gateway, "drain": run_drain}[mode](spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
