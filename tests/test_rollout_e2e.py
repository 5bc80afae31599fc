"""Model rollout end to end: the real gateway, real mosquitto, and real running agents.

Each agent is the real :class:`agent.service.Agent` (features, onnxruntime, SQLite outbox,
MQTT link, OTA receiver) fed by a simulated sensor node (firmware_sim) in accelerated real
time. Bundles are the shipped default re-versioned and signed with a key the agents trust;
the failing one carries an ONNX model built with onnx.helper that scores NaN.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import onnx
import pytest
from onnx import TensorProto, helper

from agent.config import AgentConfig
from agent.service import Agent
from agent.sources import ReplaySource
from foreshock import bundle as fsbundle
from foreshock import messages, topics
from foreshock.errors import BundleError
from gateway.config import GatewayConfig
from gateway.deploy import deploy, targets
from gateway.fleet import fleet_summary
from gateway.rollout import RolloutManager, RolloutPlan
from gateway.service import Gateway

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = max((ROOT / "models" / "bundles" / "foreshock-default").glob("*/manifest.json"),
              key=lambda p: fsbundle.parse_semver(p.parent.name)).parent
SPEED = 3.0             # simulated seconds per wall second
SHADOW_WINDOWS = 12
CHUNK = 2048
TIMEOUT_S = 25.0


def nan_model(width: int, labels: int) -> onnx.ModelProto:
    """A detector with the shipped model's interface whose anomaly score is always NaN."""
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", width])
    score = helper.make_tensor_value_info("anomaly_score", TensorProto.FLOAT, ["N"])
    probs = helper.make_tensor_value_info("fault_probabilities", TensorProto.FLOAT,
                                          ["N", labels])
    inits = [helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("minus_one", TensorProto.FLOAT, [], [-1.0]),
             helper.make_tensor("zeros", TensorProto.FLOAT, [1, labels], [0.0] * labels),
             helper.make_tensor("normal", TensorProto.FLOAT, [1, labels],
                                [1.0] + [0.0] * (labels - 1))]
    nodes = [helper.make_node("ReduceSum", ["z", "axis"], ["s"], keepdims=0),
             helper.make_node("Mul", ["s", "zero"], ["s0"]),
             helper.make_node("Add", ["s0", "minus_one"], ["neg"]),
             helper.make_node("Sqrt", ["neg"], ["anomaly_score"]),
             helper.make_node("ReduceSum", ["z", "axis"], ["s1"], keepdims=1),
             helper.make_node("Mul", ["s1", "zeros"], ["p0"]),
             helper.make_node("Add", ["p0", "normal"], ["fault_probabilities"])]
    graph = helper.make_graph(nodes, "nan-detector", [z], [score, probs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    key = fsbundle.generate_signing_key()
    root = tmp_path_factory.mktemp("e2e-bundles")
    pub = root / "test.pub"
    pub.write_bytes(fsbundle.public_key_pem(key.public_key()))
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    det = manifest["models"]["detector"]
    out: dict[str, Any] = {"pub": pub, "key": key, "old": manifest["version"]}
    for version, broken in (("9.1.0", False), ("9.2.0", True)):
        path = root / version
        shutil.copytree(SHIPPED, path)
        if broken:
            model = nan_model(len(det["input_features"]), len(det["labels"]))
            for name in {det["file"], det.get("fp32_file", det["file"])}:
                onnx.save(model, str(path / name))
        fsbundle.write_manifest(path, {**manifest, "version": version})
        fsbundle.sign(path, key)
        out["nan" if broken else "good"] = path
    flipped = root / "flipped"
    shutil.copytree(out["good"], flipped)
    data = bytearray((flipped / det["file"]).read_bytes())
    data[len(data) // 2] ^= 0x01
    (flipped / det["file"]).write_bytes(bytes(data))
    out["flipped"] = flipped
    return out


@dataclasses.dataclass
class Fleet:
    site: str
    gateway: Gateway
    agents: dict[str, Agent]
    threads: list[threading.Thread]
    stop_event: threading.Event
    command_key: Any = None   # signs cmd/rollback (agents refuse unsigned ones)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(15)

    def versions(self) -> dict[str, str]:
        return {d: a.model_info["version"] for d, a in self.agents.items()}

    def registry(self) -> dict[str, str | None]:
        return {d.device: d.model_version for d in self.gateway.store.devices(self.site)}


def start_agent(url: str, site: str, device: str, state_dir: Path, pub: Path, seed: int,
                stop: threading.Event) -> tuple[Agent, threading.Thread]:
    from firmware_sim.node import NodeSource, SimNode
    from firmware_sim.scenario import Scenario

    node = SimNode(dataclasses.replace(Scenario.load("healthy"), duration_s=0.0), device,
                   seed=seed)
    config = AgentConfig.for_device(device, site, url, state_dir,
                                    model={"trusted_keys": [str(pub)]},
                                    decision={"commission_s": 4.0},
                                    service={"health_interval_s": 5.0})
    agent = Agent(config, NodeSource(node, realtime=True, speed=SPEED))
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True,
                              name=f"agent-{device}")
    thread.start()
    return agent, thread


def wait_for(check: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.fixture
def fleet(mosquitto: Any, bundles: dict[str, Any], tmp_path: Path) -> Iterator[Fleet]:
    site = f"e{uuid.uuid4().hex[:6]}"
    gw = Gateway(GatewayConfig.for_site(mosquitto.url, site, f"sqlite:///{tmp_path / 'g.db'}"))
    gw.start()
    stop = threading.Event()
    started = [start_agent(mosquitto.url, site, f"pump-{i}", tmp_path / f"pump-{i}",
                           bundles["pub"], i + 1, stop) for i in range(3)]
    fleet = Fleet(site, gw, {a.config.device.device_id: a for a, _ in started},
                  [t for _, t in started], stop, bundles["key"])
    try:
        assert wait_for(lambda: all(a.link.connected for a in fleet.agents.values())
                        and len(gw.store.devices(site)) == 3), "agents did not come online"
        assert fleet.versions() == dict.fromkeys(fleet.agents, bundles["old"])
        yield fleet
    finally:
        fleet.stop()
        gw.stop()


def run_rollout(fleet: Fleet, plan: RolloutPlan, pub: Path,
                relay: Callable[[str, bytes], bytes] | None = None) -> RolloutManager:
    """Drive a rollout from the gateway's own client and status hook."""
    def publish(topic: str, payload: bytes, qos: int) -> None:
        fleet.gateway.client.publish(topic, relay(topic, payload) if relay else payload,
                                     qos=qos)

    manager = RolloutManager(plan, fleet.gateway.store, publish, [pub],
                             command_key=fleet.command_key)
    fleet.gateway.hooks.append(manager.on_status)
    manager.start()
    wait_for(manager.done)
    return manager


def statuses(fleet: Fleet, rollout_id: str) -> dict[str, str]:
    return {d.device: d.status for d in fleet.gateway.store.rollout_devices(rollout_id)}


def test_healthy_rollout_goes_canary_then_everyone(fleet: Fleet, bundles: dict[str, Any],
                                                   mosquitto: Any) -> None:
    site, devices = targets(fleet.gateway.store, fleet.site)
    assert sorted(devices) == sorted(fleet.agents)
    plan = RolloutPlan(bundles["good"], site, devices, canary=1, abort_on_pct=50,
                       chunk_bytes=CHUNK, shadow_windows=SHADOW_WINDOWS)
    seen: list[tuple[str, dict[str, int]]] = []
    manager = deploy(plan, mosquitto.url, fleet.gateway.store, [bundles["pub"]],
                     timeout_s=TIMEOUT_S, reoffer_s=5.0,
                     progress=lambda m: seen.append((m.state, m.summary())),
                     command_key=bundles["key"])
    assert manager.state == "complete", manager.summary()
    assert manager.summary() == {"active": 3}
    # the canary alone was offered first; the others only after it was active
    canary_phase = [summary for state, summary in seen if state == "canary"]
    assert canary_phase and all(sum(s.values()) == 1 for s in canary_phase)
    assert fleet.versions() == dict.fromkeys(fleet.agents, "9.1.0")
    assert fleet.gateway.stats().invalid == 0     # every status matched its schema
    assert wait_for(lambda: statuses(fleet, manager.rollout_id)
                    == dict.fromkeys(fleet.agents, "active"))
    assert wait_for(lambda: fleet.registry() == dict.fromkeys(fleet.agents, "9.1.0"),
                    5.0), fleet.registry()      # from each agent's retained state message
    doc = messages.decode_fleet(messages.fleet_message(
        fleet.site, fleet_summary(fleet.gateway.store, fleet.site)["devices"], ts=time.time()))
    jsonschema.validate(doc, json.loads((ROOT / "docs" / "schemas" / "fleet.json").read_text()))
    assert {d["device"]: (d["rollout"]["version"], d["rollout"]["status"])
            for d in doc["devices"]} == dict.fromkeys(fleet.agents, ("9.1.0", "active"))
    # a rollback command returns one device to its last-known-good (the shipped) model
    back = devices[1]
    cmd = messages.command_message("rollback", {"rollout_id": manager.rollout_id},
                                   issued_by="test", ts=time.time(), command_id="c-back",
                                   key=bundles["key"])
    fleet.gateway.client.publish(topics.command(fleet.site, back, "rollback"), cmd, qos=1)
    assert wait_for(lambda: statuses(fleet, manager.rollout_id)[back] == "rolled_back", 10)
    assert fleet.agents[back].model_info["version"] == bundles["old"]
    assert wait_for(lambda: fleet.registry()[back] == bundles["old"], 5.0)
    # a reboot keeps the promoted model: a fresh agent on the same state directory
    fleet.stop()
    agent = fleet.agents[devices[0]]
    assert agent.ota is not None and agent.ota.active_bundle() is not None
    again = Agent(agent.config, ReplaySource([]))
    again.close()
    assert again.model_info["version"] == "9.1.0"


def test_canary_failing_its_shadow_check_aborts_and_nobody_moves(
        fleet: Fleet, bundles: dict[str, Any]) -> None:
    devices = tuple(sorted(fleet.agents))
    plan = RolloutPlan(bundles["nan"], fleet.site, devices, canary=1, abort_on_pct=30,
                       chunk_bytes=CHUNK, shadow_windows=SHADOW_WINDOWS)
    manager = run_rollout(fleet, plan, bundles["pub"])
    assert manager.state == "aborted" and manager.done(), manager.summary()
    got = statuses(fleet, manager.rollout_id)
    assert got == {devices[0]: "failed"}, got    # the others were never offered it
    (detail,) = [d.detail for d in fleet.gateway.store.rollout_devices(manager.rollout_id)]
    assert "NaN" in detail["detail"]
    assert fleet.versions() == dict.fromkeys(fleet.agents, bundles["old"])
    canary = fleet.agents[devices[0]]
    assert canary.ota is not None and canary.ota.state["pending"] is None
    assert not (canary.config.service.state_dir / "ota" / "bundles" / "foreshock-default-9.2.0"
                ).exists()
    (row,) = [r for r in fleet.gateway.store.rollouts() if r.rollout_id == manager.rollout_id]
    assert row.state == "aborted"


def test_flipped_byte_is_refused_and_the_running_model_stays(
        fleet: Fleet, bundles: dict[str, Any]) -> None:
    devices = tuple(sorted(fleet.agents))
    with pytest.raises(BundleError):       # the gateway will not publish it
        RolloutManager(RolloutPlan(bundles["flipped"], fleet.site, devices),
                       fleet.gateway.store, lambda *a: None, [bundles["pub"]])
    target = json.loads((bundles["good"] / "manifest.json").read_text())
    name = target["models"]["detector"]["file"]
    flipped = (bundles["flipped"] / name).read_bytes()

    def relay(topic: str, payload: bytes) -> bytes:
        """A hostile relay: serves the flipped file and fixes every hash it controls."""
        if topic.endswith("/model/offer"):
            offer = messages.decode_model_offer(payload)
            for f in offer["files"]:
                if f["name"] == name:
                    f["sha256"] = hashlib.sha256(flipped).hexdigest()
            return messages.dumps(offer)
        if topic.endswith("/model/chunk"):
            chunk = messages.decode_model_chunk(payload)
            if chunk["file"] == name:
                i = chunk["index"]
                return messages.model_chunk_message(chunk["rollout_id"], name, i,
                                                    chunk["count"],
                                                    flipped[i * CHUNK:(i + 1) * CHUNK])
        return payload

    plan = RolloutPlan(bundles["good"], fleet.site, devices[:1], canary=1,
                       chunk_bytes=CHUNK, shadow_windows=SHADOW_WINDOWS)
    manager = run_rollout(fleet, plan, bundles["pub"], relay)
    assert manager.state == "aborted", manager.summary()
    (row,) = fleet.gateway.store.rollout_devices(manager.rollout_id)
    assert row.status == "failed" and "mismatch" in row.detail["detail"], row.detail
    agent = fleet.agents[devices[0]]
    assert agent.model_info["version"] == bundles["old"]
    assert agent.ota is not None and agent.ota.refused == 1
    # the device also answers a rollback command for a rollout it never took with nothing
    cmd = messages.command_message("rollback", {"rollout_id": manager.rollout_id},
                                   issued_by="test", ts=time.time(), command_id="c1",
                                   key=bundles["key"])
    fleet.gateway.client.publish(topics.command(fleet.site, devices[0], "rollback"), cmd,
                                 qos=1)
    processed = agent.counters["windows_processed"]
    assert wait_for(lambda: agent.counters["windows_processed"] > processed + 5)
    assert agent.model_info["version"] == bundles["old"] and agent.ota.refused == 1
