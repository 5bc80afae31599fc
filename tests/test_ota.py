"""Model rollout end to end: gateway RolloutManager and agent OtaReceiver, real bundles.

Bundles are the shipped default detector re-versioned and signed with a test key; the
agents load them with the real onnxruntime loader. MQTT tests use the real mosquitto.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.ota import OtaConfig, OtaReceiver, ShadowPolicy
from foreshock import bundle as fsbundle
from foreshock import messages, topics
from foreshock.errors import BundleError, MessageError
from gateway.config import GatewayConfig
from gateway.rollout import (
    BundleFile,
    RolloutManager,
    RolloutPlan,
    chunk_message,
    offer_message,
    read_bundle,
)
from gateway.service import Gateway

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "bundles" / "foreshock-default" / "0.1.1"
SCHEMAS = ROOT / "docs" / "schemas"
RUNNING = {"name": "foreshock-default", "version": "0.1.1"}
CHUNK = 2048


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    key = fsbundle.generate_signing_key()
    root = tmp_path_factory.mktemp("bundles")
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    bundles = {}
    # 0.3.0 alerts on nothing (floor 1000), 0.4.0 on everything (floor 0): shadow tests
    for version, floor in (("0.2.0", None), ("0.0.9", None), ("0.3.0", 1000.0),
                           ("0.4.0", 0.0)):
        path = root / version
        shutil.copytree(SHIPPED, path)
        data = json.loads(json.dumps({**manifest, "version": version}))
        if floor is not None:
            data["thresholds"]["anomaly"]["value"] = floor
            data["thresholds"]["anomaly"]["adapt"]["floor"] = floor
        fsbundle.write_manifest(path, data)
        fsbundle.sign(path, key)
        bundles[version] = path
    return {"pem": fsbundle.public_key_pem(key.public_key()), "bundles": bundles, "key": key,
            "spec": manifest["feature_spec_hash"], "width": len(
                manifest["models"]["detector"]["input_features"])}


def receiver(keys: dict[str, Any], state_dir: Path, device: str = "pump-1",
             spec: str | None = None, windows: int = 20) -> OtaReceiver:
    cfg = OtaConfig("plant1", device, state_dir, (keys["pem"],), spec or keys["spec"],
                    ShadowPolicy(windows=windows, max_latency_ms=500.0))
    return OtaReceiver(cfg, RUNNING)


def status_of(payloads: list[bytes]) -> list[str]:
    return [json.loads(p)["status"] for p in payloads]


def offer_and_chunks(keys: dict[str, Any], version: str = "0.2.0", rid: str = "r1",
                     tamper: bool = False) -> tuple[bytes, list[bytes]]:
    manifest, files = read_bundle(keys["bundles"][version], [keys["pem"]])
    if tamper:  # a hostile relay flips one byte and fixes every hash it controls
        f = next(f for f in files if f.name.endswith(".onnx"))
        data = bytearray(f.data)
        data[len(data) // 2] ^= 0x01
        files = [BundleFile(x.name, bytes(data)) if x.name == f.name else x for x in files]
    offer = offer_message(rid, manifest, files, CHUNK, 20)
    chunks = [chunk_message(rid, f, i, CHUNK) for f in files
              for i in range(-(-len(f.data) // CHUNK))]
    return offer, chunks


def test_download_resumes_across_reboots_then_shadow_promote_and_rollback(
        keys: dict[str, Any], tmp_path: Path) -> None:
    offer, chunks = offer_and_chunks(keys)
    ota = receiver(keys, tmp_path)
    first = ota.on_offer(offer)
    assert status_of(first) == ["downloading"]
    assert sum(len(v) for v in json.loads(first[0])["missing_chunks"].values()) == len(chunks)
    for c in chunks[: len(chunks) // 2]:
        assert ota.on_chunk(c) == []
    ota = receiver(keys, tmp_path)  # reboot mid-download: the chunks are kept
    again = json.loads(ota.on_offer(offer)[0])
    missing = sum(len(v) for v in again["missing_chunks"].values())
    assert missing == len(chunks) - len(chunks) // 2 and again["progress"] >= 0.4
    out: list[bytes] = []
    for c in chunks[len(chunks) // 2:]:
        out += ota.on_chunk(c)
    assert status_of(out) == ["verified", "shadow"] and ota.running() == RUNNING
    ota = receiver(keys, tmp_path)  # reboot during the shadow run: restart it
    assert status_of(ota.resume()) == ["shadow"]
    healthy = np.zeros((20, keys["width"]), np.float32)
    assert status_of(ota.observe(healthy)) == ["active"]
    ota = receiver(keys, tmp_path)
    assert ota.resume() == []  # the promoted model still verifies after the reboot
    assert ota.running() == {"name": "foreshock-default", "version": "0.2.0"}
    fsbundle.verify(ota.active_bundle() or Path("/nonexistent"),
                    [fsbundle.load_public_key(keys["pem"])])
    back = ota.on_rollback({"args": {"rollout_id": "r1"}})
    assert status_of(back) == ["rolled_back"] and receiver(keys, tmp_path).running() == RUNNING
    for payload, name in [(offer, "model-offer"), (chunks[0], "model-chunk"),
                          (first[0], "model-status"), (back[0], "model-status")]:
        jsonschema.validate(json.loads(payload), json.loads((SCHEMAS / f"{name}.json")
                                                            .read_text()))


def deliver(ota: OtaReceiver, offer: bytes, chunks: list[bytes]) -> list[bytes]:
    out = ota.on_offer(offer)
    for c in chunks:
        out += ota.on_chunk(c)
    return out


def test_tampered_unsigned_incompatible_and_older_bundles_are_refused(
        keys: dict[str, Any], tmp_path: Path) -> None:
    ota = receiver(keys, tmp_path / "a")
    out = deliver(ota, *offer_and_chunks(keys, tamper=True))
    assert status_of(out)[-1] == "failed" and "SHA-256 mismatch" in json.loads(out[-1])["detail"]
    assert ota.running() == RUNNING and ota.state["pending"] is None
    ota = receiver(keys, tmp_path / "b", spec="0123456789abcdef")
    out = deliver(ota, *offer_and_chunks(keys, rid="r2"))
    assert status_of(out)[-1] == "failed" and "feature spec" in json.loads(out[-1])["detail"]
    ota = receiver(keys, tmp_path / "c")
    out = ota.on_offer(offer_and_chunks(keys, version="0.0.9", rid="r3")[0])
    assert status_of(out) == ["failed"] and "not newer" in json.loads(out[0])["detail"]
    unsigned = tmp_path / "unsigned"
    shutil.copytree(keys["bundles"]["0.2.0"], unsigned)
    (unsigned / "signature").unlink()
    with pytest.raises(BundleError, match="unsigned"):
        read_bundle(unsigned, [keys["pem"]])  # the gateway will not publish it either
    manifest, files = read_bundle(keys["bundles"]["0.2.0"], [keys["pem"]])
    files = [f for f in files if f.name != "signature"]
    ota = receiver(keys, tmp_path / "d")
    out = ota.on_offer(offer_message("r4", manifest, files, CHUNK, 20))
    for f in files:
        for i in range(-(-len(f.data) // CHUNK)):
            out += ota.on_chunk(chunk_message("r4", f, i, CHUNK))
    assert status_of(out)[-1] == "failed" and "unsigned" in json.loads(out[-1])["detail"]
    with pytest.raises(MessageError):
        ota.on_chunk(b'{"schema": "foreshock.model_chunk/1", "rollout_id": "r4"}')
    assert ota.dispatch(topics.model_chunk("plant1", "pump-1"), b"junk") == []
    assert ota.dispatch(topics.model_offer("plant1", "pump-1"), b"{}") == []
    assert ota.invalid == 2


class SimAgent:
    """A device's OTA side on MQTT: the real OtaReceiver, fed ``z`` in its shadow run."""

    def __init__(self, url: str, site: str, device: str, ota: OtaReceiver, z_value: float,
                 width: int) -> None:
        self.site, self.device, self.ota = site, device, ota
        self.z = np.full((20, width), z_value, np.float32)
        self.lock = threading.Lock()
        host, port = url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=f"{site}-{device}")
        self.client.on_message = self.on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(host, int(port))
        self.client.subscribe([(topics.model_offer(site, device), 1),
                               (topics.model_chunk(site, device), 1),
                               (topics.commands(site, device), 1)])
        self.client.loop_start()
        assert subscribed.wait(10), "device subscription not granted"

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            out = self.ota.dispatch(msg.topic, bytes(msg.payload))
            if self.ota.shadow is not None:
                out += self.ota.observe(self.z)
        for p in out:
            client.publish(topics.model_status(self.site, self.device), p, qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def fleet(mosquitto: Any, keys: dict[str, Any], tmp_path: Path) -> Iterator[Any]:
    site = f"o{uuid.uuid4().hex[:6]}"
    agents: list[SimAgent] = []
    gw = Gateway(GatewayConfig.for_site(mosquitto.url, site, f"sqlite:///{tmp_path / 'g.db'}"))
    gw.start()

    def make(device: str, z_value: float) -> SimAgent:
        agent = SimAgent(mosquitto.url, site, device,
                         receiver(keys, tmp_path / device, device), z_value, keys["width"])
        agents.append(agent)
        return agent

    yield site, gw, make
    for a in agents:
        a.close()
    gw.stop()


def run_rollout(gw: Gateway, plan: RolloutPlan, keys: dict[str, Any]) -> RolloutManager:
    def publish(topic: str, payload: bytes, qos: int) -> None:
        gw.client.publish(topic, payload, qos=qos)

    manager = RolloutManager(plan, gw.store, publish, [keys["pem"]])
    gw.hooks.append(manager.on_status)
    time.sleep(0.2)  # device subscriptions settle
    manager.start()
    deadline = time.monotonic() + 30
    while not manager.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    return manager


def test_failing_canary_aborts_and_every_device_stays_on_the_old_model(
        fleet: Any, keys: dict[str, Any]) -> None:
    site, gw, make = fleet
    agents = [make("bad-canary", 30.0), make("good-canary", 0.0), make("pump-3", 0.0),
              make("pump-4", 0.0)]
    plan = RolloutPlan(keys["bundles"]["0.2.0"], site, tuple(a.device for a in agents),
                       canary=2, abort_on_pct=50, chunk_bytes=CHUNK, shadow_windows=20)
    manager = run_rollout(gw, plan, keys)
    assert manager.state == "aborted" and manager.done(), manager.summary()
    assert all(a.ota.running() == RUNNING for a in agents)
    statuses = {d.device: d.status for d in gw.store.rollout_devices(manager.rollout_id)}
    assert statuses["bad-canary"] == "failed" and statuses["good-canary"] == "rolled_back"
    assert "pump-3" not in statuses and "pump-4" not in statuses
    (row,) = gw.store.rollouts()
    assert row.state == "aborted"


def test_healthy_canary_widens_to_the_whole_fleet(fleet: Any, keys: dict[str, Any]) -> None:
    site, gw, make = fleet
    agents = [make(f"fan-{i}", 0.0) for i in range(3)]
    plan = RolloutPlan(keys["bundles"]["0.2.0"], site, tuple(a.device for a in agents),
                       canary=1, abort_on_pct=50, chunk_bytes=CHUNK, shadow_windows=20)
    manager = run_rollout(gw, plan, keys)
    assert manager.state == "complete", manager.summary()
    assert manager.summary() == {"active": 3}
    assert all(a.ota.running()["version"] == "0.2.0" for a in agents)
    assert {d.status for d in gw.store.rollout_devices()} == {"active"}


def test_deploy_runs_a_rollout_over_its_own_mqtt_client(
        fleet: Any, keys: dict[str, Any], mosquitto: Any) -> None:
    from gateway.deploy import deploy, targets

    site, gw, make = fleet
    make("mill-1", 0.0)
    make("mill-2", 0.0)
    time.sleep(0.2)
    site_, devices = targets(gw.store, f"{site}/mill-1,mill-2")
    plan = RolloutPlan(keys["bundles"]["0.2.0"], site_, devices, canary=1,
                       chunk_bytes=CHUNK, shadow_windows=20)
    seen: list[str] = []
    manager = deploy(plan, mosquitto.url, gw.store, [keys["pem"]], timeout_s=30,
                     progress=lambda m: seen.append(m.state))
    assert manager.state == "complete" and manager.summary() == {"active": 2}
    assert "canary" in seen


def test_promoted_model_that_no_longer_verifies_falls_back_at_boot(
        keys: dict[str, Any], tmp_path: Path) -> None:
    ota = receiver(keys, tmp_path)
    deliver(ota, *offer_and_chunks(keys))
    assert status_of(ota.observe(np.zeros((20, keys["width"]), np.float32))) == ["active"]
    model = next((ota.active_bundle() or tmp_path).glob("*.onnx"))
    data = model.read_bytes()
    model.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))  # storage corruption
    ota = receiver(keys, tmp_path)
    assert status_of(ota.resume()) == ["rolled_back"] and ota.running() == RUNNING


def test_offer_chunk_and_status_parsers_bound_what_they_accept(keys: dict[str, Any]) -> None:
    offer, chunks = offer_and_chunks(keys)
    obj = messages.decode_model_offer(offer)
    assert obj["bundle"] == {"name": "foreshock-default", "version": "0.2.0"}
    for rid in ("../../victim", "a\x00b", "x" * 65, ""):
        with pytest.raises(MessageError, match="rollout_id"):
            messages.decode_model_offer(json.dumps({**obj, "rollout_id": rid}).encode())
    bad = {**obj, "files": [{**obj["files"][0], "chunks": 10**9}]}
    with pytest.raises(MessageError, match="chunks do not fit"):
        messages.decode_model_offer(json.dumps(bad).encode())
    bad = {**obj, "files": [{**obj["files"][0], "size": -1}]}
    with pytest.raises(MessageError, match="sizes"):
        messages.decode_model_offer(json.dumps(bad).encode())
    chunk = messages.decode_model_chunk(chunks[0])
    assert messages.chunk_data(chunk)
    with pytest.raises(MessageError, match="SHA-256 mismatch"):
        messages.chunk_data({**chunk, "sha256": "0" * 64})
    with pytest.raises(MessageError, match="index"):
        messages.decode_model_chunk(json.dumps({**chunk, "index": chunk["count"]}).encode())
    status = messages.model_status_message("plant1", "pump-1", "r1", RUNNING, "downloading",
                                           ts=1.0, progress=1.5, missing={"a": [1]})
    assert messages.decode_model_status(status)["progress"] == 1.0
    jsonschema.validate(json.loads(status), json.loads((SCHEMAS / "model-status.json")
                                                       .read_text()))
    with pytest.raises(MessageError, match="status"):
        messages.decode_model_status(status.replace(b"downloading", b"exploded"))


def test_offer_sets_the_length_of_the_shadow_run(keys: dict[str, Any], tmp_path: Path) -> None:
    manifest, files = read_bundle(keys["bundles"]["0.2.0"], [keys["pem"]])
    ota = receiver(keys, tmp_path, windows=1000)
    out = ota.on_offer(offer_message("r7", manifest, files, CHUNK, 5))
    for f in files:
        for i in range(-(-len(f.data) // CHUNK)):
            out += ota.on_chunk(chunk_message("r7", f, i, CHUNK))
    assert status_of(out)[-2:] == ["verified", "shadow"]
    assert status_of(ota.observe(np.zeros((5, keys["width"]), np.float32))) == ["active"]


def test_running_agent_resumes_an_update_after_a_restart_and_promotes_it(
        keys: dict[str, Any], tmp_path: Path) -> None:
    """The real Agent without a broker: messages enter where the link delivers them."""
    from test_agent_service import frames

    from agent.config import AgentConfig
    from agent.service import Agent
    from agent.sources import ReplaySource

    pem = tmp_path / "test.pub"
    pem.write_bytes(keys["pem"])
    cfg = AgentConfig.for_device("pump-9", "plant1", "", tmp_path / "s",
                                 model={"trusted_keys": [str(pem)]},
                                 decision={"commission_s": 4.0})
    offer, chunks = offer_and_chunks(keys, rid="r9")
    agent = Agent(cfg, ReplaySource([]))
    assert agent.model_info == RUNNING
    agent._on_command(topics.model_offer("plant1", "pump-9"), offer)
    for c in chunks[:3]:
        agent._on_command(topics.model_chunk("plant1", "pump-9"), c)
    agent.step(0.0)
    agent.close()                                   # power cut mid-download
    again = Agent(cfg, ReplaySource(frames(200, 1000)))
    assert again.ota is not None and again.ota.state["pending"]["phase"] == "downloading"
    for c in chunks[3:]:
        again._on_command(topics.model_chunk("plant1", "pump-9"), c)
    again.step(0.0)
    assert again.ota.shadow is not None and again.model_info == RUNNING
    again.run(threading.Event())                    # healthy frames: the shadow run passes
    assert again.model_info == {"name": "foreshock-default", "version": "0.2.0"}
    third = Agent(cfg, ReplaySource([]))            # and the promoted model survives a reboot
    third.close()
    assert third.model_info["version"] == "0.2.0"
    assert status_of(list(third._unsent)) == []


def test_agent_starts_on_its_configured_model_when_the_ota_state_is_malformed(
        tmp_path: Path) -> None:
    from agent.config import AgentConfig
    from agent.service import Agent
    from agent.sources import ReplaySource

    cfg = AgentConfig.for_device("pump-10", "plant1", "", tmp_path / "s")
    (tmp_path / "s" / "ota").mkdir(parents=True)
    (tmp_path / "s" / "ota" / "ota.json").write_text('{"active": {"name": "x"}}')
    agent = Agent(cfg, ReplaySource([]))
    agent.close()
    assert agent.model_info == RUNNING and agent.ota is not None
    assert (tmp_path / "s" / "ota" / "ota.json.bad").exists()


def test_shadow_is_judged_against_the_running_model(keys: dict[str, Any], tmp_path: Path
                                                     ) -> None:
    """Real bundles in the real receiver: alerting where the running model alerts is fine
    (an open fault does not block an update), alerting where it is silent is not, and
    missing what it flags matters only on an operator-confirmed fault."""
    loud = np.full((20, keys["width"]), 8.0, np.float32)
    on, off = np.ones(20, bool), np.zeros(20, bool)

    def shadow(version: str, z: Any, running: Any, confirmed: Any, name: str) -> str:
        manifest, files = read_bundle(keys["bundles"][version], [keys["pem"]])
        ota = receiver(keys, tmp_path / name)
        deliver(ota, offer_message(name, manifest, files, CHUNK, 20),
                [chunk_message(name, f, i, CHUNK) for f in files
                 for i in range(-(-len(f.data) // CHUNK))])
        out = ota.observe(z, running, confirmed)
        return f"{status_of(out)[-1]}: {json.loads(out[-1]).get('detail', '')}"

    # the candidate alerts on 100 % of windows, as the running model does: an open fault
    assert shadow("0.2.0", loud, on, off, "fault").startswith("active")
    got = shadow("0.2.0", loud, off, off, "noisy")
    assert got.startswith("failed") and "where the running model is silent" in got
    # a quieter candidate: fine on unconfirmed alerts (false alarms), not on a confirmed fault
    assert shadow("0.3.0", loud, on, off, "quiet").startswith("active")
    got = shadow("0.3.0", loud, on, on, "deaf")
    assert got.startswith("failed") and "misses 20 of 20 windows" in got


def agent_for(keys: dict[str, Any], tmp_path: Path, device: str, frames_: list[Any]) -> Any:
    from agent.config import AgentConfig
    from agent.service import Agent
    from agent.sources import ReplaySource

    pem = tmp_path / f"{device}.pub"
    pem.write_bytes(keys["pem"])
    cfg = AgentConfig.for_device(device, "plant1", "", tmp_path / device,
                                 model={"trusted_keys": [str(pem)]},
                                 decision={"commission_s": 4.0})
    return Agent(cfg, ReplaySource(frames_))


def offer_to(agent: Any, keys: dict[str, Any], version: str, rid: str) -> None:
    device = agent.config.device.device_id
    offer, chunks = offer_and_chunks(keys, version=version, rid=rid)
    agent._on_command(topics.model_offer("plant1", device), offer)
    for c in chunks:
        agent._on_command(topics.model_chunk("plant1", device), c)
    agent.step(0.0)
    assert agent.ota.shadow is not None, list(agent._unsent)


def run_until(agent: Any, check: Any, limit: int = 2000) -> bool:
    for _ in range(limit):
        if check() or (agent.source.exhausted and not agent.queue):
            break
        agent.step(0.0)
    return bool(check())


def details(agent: Any) -> list[str]:
    return [f"{json.loads(p)['status']}: {json.loads(p).get('detail', '')}"
            for p in agent._unsent]


@pytest.mark.parametrize(("version", "confirm"), [("0.2.0", False), ("0.3.0", False),
                                                 ("0.3.0", True)])
def test_running_agent_with_an_open_fault_shadow_checks_relative_to_its_model(
        keys: dict[str, Any], tmp_path: Path, version: str, confirm: bool) -> None:
    """The real Agent (features, onnxruntime, decider) on a machine whose vibration jumps:
    the running model raises an incident. A candidate that flags the same windows (0.2.0,
    alert rate ~100 %) is promoted; one that flags none (0.3.0) is promoted only while no
    operator confirmed the incident, and refused once the signed ``confirmed`` feedback
    has arrived."""
    from test_agent_service import frames

    agent = agent_for(keys, tmp_path, "pump-f", frames(900, 150))
    try:
        assert run_until(agent, lambda: any(s.incident for s in
                                            agent.pipeline.decider._streams.values()))
        incident = next(s.incident.id for s in agent.pipeline.decider._streams.values()
                        if s.incident)
        if confirm:
            payload = messages.command_message(
                "feedback", {"incident": incident, "label": "confirmed", "note": ""},
                issued_by="ana", ts=time.time(), command_id="c1", key=keys["key"])
            agent._on_command(topics.command("plant1", "pump-f", "feedback"), payload)
            agent.step(0.0)
            assert agent.counters["bad_commands"] == 0
        offer_to(agent, keys, version, "r-1")
        assert run_until(agent, lambda: agent.ota.shadow is None)
        got = details(agent)[-1]
        if confirm:
            assert got.startswith("failed") and "confirmed fault" in got, got
            assert agent.model_info["version"] == "0.1.1"
        else:
            assert got.startswith("active"), got
            assert agent.model_info["version"] == version
    finally:
        agent.close()


def test_running_agent_refuses_a_candidate_that_alerts_where_its_model_is_silent(
        keys: dict[str, Any], tmp_path: Path) -> None:
    from test_agent_service import frames

    agent = agent_for(keys, tmp_path, "pump-h", frames(600, 10_000))
    try:
        assert run_until(agent, lambda: agent.counters["windows_processed"] > 40)
        offer_to(agent, keys, "0.4.0", "r-noisy")     # floor 0: alerts on every window
        assert run_until(agent, lambda: agent.ota.shadow is None)
        got = details(agent)[-1]
        assert got.startswith("failed") and "where the running model is silent" in got, got
        assert agent.model_info["version"] == "0.1.1"
        offer_to(agent, keys, "0.2.0", "r-same")      # the running model's twin passes
        assert run_until(agent, lambda: agent.ota.shadow is None)
        assert details(agent)[-1].startswith("active") and \
            agent.model_info["version"] == "0.2.0"
    finally:
        agent.close()
