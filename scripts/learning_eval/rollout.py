"""Section 5: the closed loop through the staged rollout, on running agents (real mosquitto,
gateway, agents, OTA); the agent, gateway and simulator modules are imported only when this
section runs."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

from agent.features import DEFAULT_SPEC

from .closed_loop import disturbed_sets, mark_feedback
from .common import SHIPPED, bundle
from .loop_agents import (
    LOOP_FAULTY,
    LOOP_KINDS,
    LOOP_SPEED,
    LOOP_TIMEOUT_S,
    LOOP_WINDOWS,
    Counter,
    disturbed_node_class,
    fault_through_switch,
    loop_scenarios,
    stream_state,
    wait_for,
)


def rollout_loop(broker_url: str, work: Path, sets: list[Any], *, shadow_windows: int = 12,
                 chunk_bytes: int = 2048) -> dict[str, Any]:
    """Three real agents (features, onnxruntime, outbox, MQTT, OTA) fed by simulated nodes in
    accelerated real time behind ``broker_url``, and the real gateway: two machines get a
    louder neighbour after commissioning, one a bearing fault. The gateway stores their
    alerts; the operator labels them (stored and sent to the devices as signed
    ``cmd/feedback``, plus the fleet's earlier labelled alerts); the retrained bundle is
    rolled out canary first; the alert rates are measured on the same running agents before
    and after. The fault stays on throughout: the faulty machine's incident must continue
    across the switch on its healthy baseline (``fault``: :func:`fault_through_switch`)."""
    from foreshock import bundle as fsb
    from gateway.config import GatewayConfig
    from gateway.service import Gateway
    from models.build import ensure_key
    from models.retrain import retrain

    current = SHIPPED           # what the agents run
    key = ensure_key(work / "site.pem")
    signing = fsb.load_private_key(key)
    pub = work / "site.pub"
    pub.write_bytes(fsb.public_key_pem(signing.public_key()))
    db = f"sqlite:///{work / 'loop-gateway.db'}"
    mark_feedback(db, *bundle(current), disturbed_sets(8, 11, 3.0))  # earlier labels
    site = f"l{uuid.uuid4().hex[:6]}"
    gw_config = GatewayConfig.for_site(broker_url, site, db)
    gw = Gateway(gw_config)
    gw.start()
    stop, counter = threading.Event(), Counter()
    threads: list[threading.Thread] = []
    result: dict[str, Any] = {"site": site}
    try:
        agents = _start_agents(broker_url, work, site, pub, counter, stop, threads)
        result["old"], result["before"] = _rates_before(gw.store, site, counter, agents)
        result["labelled"] = _label_alerts(gw.store, gw_config, site, signing)
        faulty, fkey = agents[LOOP_FAULTY], counter.keys[LOOP_FAULTY]
        fault_before = stream_state(faulty, fkey)   # the fault stays on from here to the end
        result["confirmed_on_device"] = wait_for(
            lambda: fault_before["incident"] in getattr(faulty, "confirmed_incidents", ()),
            10.0)
        out = work / "loop-candidate"
        res = retrain(db, current, out, key, sets=sets, spec=DEFAULT_SPEC)
        result["retrain"] = res
        if not res.accepted:
            return result
        new = fsb.verify(out, [signing.public_key()]).data["version"]
        result["new"] = new
        result.update(_roll_out(out, broker_url, gw.store, site, pub, agents,
                                shadow_windows, chunk_bytes))
        if result["rollout"] != "complete":
            return result
        result.update(_after_switch(gw.store, site, counter, faulty, fkey, result["old"], new,
                                    fault_before))
        return result
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        gw.stop()


def _start_agents(broker_url: str, work: Path, site: str, pub: Path, counter: Counter,
                  stop: threading.Event, threads: list[threading.Thread]) -> dict[str, Any]:
    """One running agent per ``LOOP_KINDS`` device on its disturbed node, each scored window
    counted by ``counter``; their threads are appended to ``threads`` as they start."""
    from agent.config import AgentConfig
    from agent.service import Agent
    from firmware_sim.node import NodeSource

    DisturbedNode = disturbed_node_class()
    agents: dict[str, Any] = {}
    for i, (device, kind) in enumerate(LOOP_KINDS.items()):
        box: list[Any] = []
        config = AgentConfig.for_device(device, site, broker_url, work / device,
                                        model={"trusted_keys": [str(pub)]},
                                        decision={"commission_s": 4.0,
                                                  "update_interval_s": 5.0},
                                        service={"health_interval_s": 5.0})
        node = DisturbedNode(*loop_scenarios(kind), device, seed=i + 1)
        agent = Agent(config, NodeSource(node, realtime=True, speed=LOOP_SPEED),
                      on_result=counter.hook(box, device))
        box.append(agent)
        agents[device] = agent
        threads.append(threading.Thread(target=agent.run, args=(stop,), daemon=True))
        threads[-1].start()
    return agents


def _rates_before(store: Any, site: str, counter: Counter, agents: dict[str, Any]
                  ) -> tuple[str, dict[str, float]]:
    """(the model version the agents run, their alert rates on it), once they are online and
    have scored ``LOOP_WINDOWS`` post-onset windows each; then waits (up to 10 s) for every
    machine's raised alert in the gateway store."""
    if not wait_for(lambda: len(store.devices(site)) == len(LOOP_KINDS)):
        raise RuntimeError("agents did not come online")
    old = agents["bench-0"].model_info["version"]
    if not wait_for(lambda: all(counter.count(d, old) >= LOOP_WINDOWS
                                for d in LOOP_KINDS), 60.0):
        raise RuntimeError("agents scored too few windows")
    before = {d: counter.rate(d, old) for d in LOOP_KINDS}
    wait_for(lambda: {a["device"] for a in store.alerts()
                      if a["site"] == site and a["status"] == "raised"} == set(LOOP_KINDS),
             10.0)
    return old, before


def _label_alerts(store: Any, gw_config: Any, site: str, signing: Any) -> dict[str, str]:
    """The operator's verdict on every stored incident of the site (benign machines:
    false_alarm, the faulty one: confirmed), stored and sent as signed ``cmd/feedback``:
    incident -> device."""
    from gateway import feedback as gfb

    labelled: dict[str, str] = {}
    for alert in store.alerts():
        if alert["site"] != site or alert["incident"] in labelled:
            continue
        device = alert["device"]
        label = "false_alarm" if LOOP_KINDS[device] == "benign" else "confirmed"
        ts = time.time()              # as `foreshock gateway feedback`: store, then send
        gfb.record(store, label=label, operator="eval", ts=ts, incident=alert["incident"])
        gfb.publish_command(gw_config, *gfb.feedback_command(
            site, device, incident=alert["incident"], label=label, operator="eval",
            ts=ts, key=signing))
        labelled[alert["incident"]] = device
    return labelled


def _roll_out(out: Path, broker_url: str, store: Any, site: str, pub: Path,
              agents: dict[str, Any], shadow_windows: int, chunk_bytes: int
              ) -> dict[str, Any]:
    """The staged rollout of the candidate in ``out`` (canary first, shadow check): its
    final state and summary, progress, each device's rollout status and running version."""
    from gateway.deploy import deploy
    from gateway.rollout import RolloutPlan

    progress: list[tuple[str, dict[str, int]]] = []
    plan = RolloutPlan(out, site, tuple(sorted(LOOP_KINDS)), canary=1, abort_on_pct=50,
                       chunk_bytes=chunk_bytes, shadow_windows=shadow_windows)
    manager = deploy(plan, broker_url, store, [pub], timeout_s=LOOP_TIMEOUT_S,
                     reoffer_s=5.0, progress=lambda m: progress.append(
                         (m.state, m.summary())))
    return {"rollout": manager.state, "rollout_summary": manager.summary(),
            "progress": progress,
            "device_status": {d.device: (d.status, d.detail.get("detail"))
                              for d in store.rollout_devices() if d.site == site},
            "running": {d: a.model_info["version"] for d, a in agents.items()}}


def _after_switch(store: Any, site: str, counter: Counter, faulty: Any,
                  fkey: tuple[str, int], old: str, new: str, fault_before: dict[str, Any]
                  ) -> dict[str, Any]:
    """On the new model: the same machines' alert rates (still disturbed, the bearing still
    faulty), the faulty machine across the switch, the benign incidents cleared."""
    wait_for(lambda: all(counter.count(d, new) >= LOOP_WINDOWS for d in LOOP_KINDS), 60.0)
    after = {d: counter.rate(d, new) for d in LOOP_KINDS}
    # an open incident sends an update every update_interval_s (5 s) of stream time
    wait_for(lambda: any(v == new for v, _, _ in counter.incidents(LOOP_FAULTY)), 20.0)
    fault_after = stream_state(faulty, fkey)
    wait_for(lambda: any((a["model"] or {}).get("version") == new
                         for a in store.alerts(device=LOOP_FAULTY)
                         if a["site"] == site), 10.0)
    return {"after": after,
            "fault": fault_through_switch(counter, store, site, old, new, fault_before,
                                          fault_after),
            "benign_cleared_on_new": {
                d: any(v == new and st == "cleared" for v, st, _ in counter.incidents(d))
                for d, kind in LOOP_KINDS.items() if kind == "benign"}}


class Broker:
    """A private mosquitto on a free loopback port for the rollout section."""

    CONF = ("per_listener_settings false\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
            "persistence false\nmax_queued_messages 0\nmax_inflight_messages 100\n"
            "max_packet_size 8388608\n")

    def __init__(self, work: Path) -> None:
        import shutil
        import socket
        import subprocess

        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise FileNotFoundError("mosquitto is not installed")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        conf = work / "mosquitto.conf"
        conf.write_text(self.CONF.format(port=self.port))
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise TimeoutError("mosquitto did not start") from None
                time.sleep(0.05)
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def rollout_section(work: Path, quick: bool) -> dict[str, Any]:
    from models.build_default import DefaultBuild, training_sets

    cfg = DefaultBuild(reduced=quick, sim_seconds=3.0 if quick else 6.0)
    sets = training_sets(cfg, DEFAULT_SPEC, work / "no-shared-data" if quick else None)[0]
    broker = Broker(work)
    try:
        r = rollout_loop(broker.url, work, sets)
    finally:
        broker.close()
    res = r.pop("retrain")
    return {**{k: v for k, v in r.items() if k != "progress"},
            "accepted": res.accepted, "reason": res.reason, "evidence": res.evidence,
            "held_back": {"current": res.current, "candidate": res.candidate},
            "canary_first": bool(r.get("progress")) and all(
                sum(s.values()) == 1 for state, s in r["progress"] if state == "canary")}

