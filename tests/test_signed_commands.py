"""Signed device commands: a real agent behind a real mosquitto runs a state-changing
command only when it is signed by a trusted key, fresh, and not a replay."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from agent.config import AgentConfig
from agent.service import Agent
from foreshock import bundle as fsbundle
from foreshock import messages, topics
from foreshock.errors import MessageError
from gateway import feedback as fb

SITE = "plant1"


def sign_key_file(tmp_path: Path, name: str) -> tuple[Any, Path]:
    key = fsbundle.generate_signing_key()
    pub = tmp_path / f"{name}.pub"
    pub.write_bytes(fsbundle.public_key_pem(key.public_key()))
    return key, pub


def test_signature_covers_every_field_and_is_canonical(tmp_path: Path) -> None:
    key, pub = sign_key_file(tmp_path, "site")
    trusted = [fsbundle.load_public_key(pub)]
    raw = messages.command_message("rebaseline", {"channel": 1}, issued_by="ops", ts=100.0,
                                   command_id="c1", key=key)
    obj = messages.decode_command(raw)
    messages.verify_command(obj, trusted, now_ts=150.0)
    reordered = json.loads(json.dumps(dict(reversed(list(obj.items())))))
    messages.verify_command(reordered, trusted, now_ts=150.0)   # key order does not matter
    for field, value in (("args", {"channel": 2}), ("command", "feedback"), ("ts", 101.0),
                         ("id", "c2"), ("issued_by", "x")):
        with pytest.raises(MessageError, match="bad signature"):
            messages.verify_command({**obj, field: value}, trusted, now_ts=150.0)
    with pytest.raises(MessageError, match="bad signature"):
        messages.verify_command({**obj, "sig": "not base64!"}, trusted, now_ts=150.0)
    with pytest.raises(MessageError, match="unsigned"):
        messages.verify_command({k: v for k, v in obj.items() if k != "sig"}, trusted)
    with pytest.raises(MessageError, match="stale"):
        messages.verify_command(obj, trusted, now_ts=100.0 + 601)
    assert len(base64.b64decode(obj["sig"])) == 64


def test_replay_guard_remembers_the_last_ids() -> None:
    guard = messages.CommandReplayGuard(size=2)
    for cid in ("a", "b"):
        guard.check({"id": cid})
    with pytest.raises(MessageError, match="replayed"):
        guard.check({"id": "b"})
    guard.check({"id": "c"})    # "a" falls out of the window
    guard.check({"id": "a"})


@pytest.fixture
def agent(tmp_path: Path, mosquitto: Any) -> Iterator[Agent]:
    from firmware_sim.node import NodeSource, SimNode
    from firmware_sim.scenario import Scenario

    _, pub = sign_key_file(tmp_path, "unused")
    site_key = fsbundle.generate_signing_key()
    cmd_pub = tmp_path / "command.pub"
    cmd_pub.write_bytes(fsbundle.public_key_pem(site_key.public_key()))
    device = f"pump-{uuid.uuid4().hex[:6]}"
    cfg = AgentConfig.for_device(device, SITE, mosquitto.url, tmp_path / "state",
                                 model={"trusted_keys": [str(pub)],
                                        "command_keys": [str(cmd_pub)]},
                                 decision={"commission_s": 2.0},
                                 link={"client_id": f"sig-{device}", "connect_timeout_s": 1.0,
                                       "gateway_timeout_s": 0.5})  # no gateway here
    node = SimNode(Scenario.load("healthy"), device, seed=3)
    agent = Agent(cfg, NodeSource(node, realtime=False))
    agent.site_key = site_key  # type: ignore[attr-defined]
    agent.start()
    try:
        assert agent.link.wait_connected(10)
        time.sleep(0.3)  # the command subscription follows the connection
        learn_until(agent, lambda: bool(agent.learning and agent.learning.streams))
        yield agent
    finally:
        agent.close()


def learn_until(agent: Agent, check: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        agent.step(0.01)
    return check()


def publish(mosquitto: Any, device: str, name: str, payload: bytes) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    client.publish(topics.command(SITE, device, name), payload, qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def resets(agent: Agent) -> list[dict[str, Any]]:
    assert agent.learning is not None
    return [r for r in agent.learning.audit.read() if r["change"] == "reset"]


def test_only_signed_fresh_unseen_commands_run(agent: Agent, mosquitto: Any) -> None:
    device, key = agent.config.device.device_id, agent.site_key  # type: ignore[attr-defined]
    stranger = fsbundle.generate_signing_key()
    now = time.time()

    def cmd(cid: str, k: Any, ts: float = now) -> bytes:
        return messages.command_message("rebaseline", {"why": cid}, issued_by="ops", ts=ts,
                                        command_id=cid, key=k)

    refused = [cmd("unsigned", None), cmd("stranger", stranger), cmd("stale", key, now - 3600)]
    for payload in refused:
        publish(mosquitto, device, "rebaseline", payload)
    assert learn_until(agent, lambda: agent.counters["bad_commands"] == 3)
    assert agent.counters["commands"] == 0 and resets(agent) == []

    good = cmd("signed", key)
    publish(mosquitto, device, "rebaseline", good)
    assert learn_until(agent, lambda: agent.counters["commands"] == 1)
    done = resets(agent)
    assert done and {r["why"] for r in done} == {"signed"}
    assert {r["who"] for r in done} == {"command:ops"}

    publish(mosquitto, device, "rebaseline", good)      # the same id again: a replay
    ping = messages.command_message("ping", {}, issued_by="ops", ts=now, command_id="p1")
    publish(mosquitto, device, "ping", ping)            # unsigned, but harmless: accepted
    assert learn_until(agent, lambda: agent.counters["bad_commands"] == 4
                       and agent.counters["commands"] == 2)
    assert len(resets(agent)) == len(done)


def test_gateway_feedback_is_signed_and_runs(agent: Agent, mosquitto: Any) -> None:
    device, key = agent.config.device.device_id, agent.site_key  # type: ignore[attr-defined]
    topic, payload = fb.feedback_command(SITE, device, incident="inc-x",
                                         label="maintenance_done", operator="ana",
                                         ts=time.time(), key=key)
    assert topic == topics.command(SITE, device, "feedback")
    assert "sig" in messages.decode_command(payload)
    publish(mosquitto, device, "feedback", payload)
    assert learn_until(agent, lambda: agent.counters["commands"] == 1)
    assert agent.counters["bad_commands"] == 0
    assert {r["who"] for r in resets(agent)} == {"command:ana"}


def test_cli_feedback_publishes_a_signed_command_the_agent_runs(
        agent: Agent, mosquitto: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """`foreshock gateway feedback` stores the label and sends it, signed, to the device
    through a real broker; a running gateway sees the command and does not store it twice;
    a label signed with an untrusted key is refused by the device."""
    from foreshock.cli import main
    from foreshock.messages import Batch, Record
    from gateway.config import GatewayConfig
    from gateway.service import Gateway
    from gateway.store import open_store

    device, key = agent.config.device.device_id, agent.site_key  # type: ignore[attr-defined]
    key_file = tmp_path / "command.key"
    key_file.write_bytes(fsbundle.private_key_pem(key))
    stranger_file = tmp_path / "stranger.key"
    stranger_file.write_bytes(fsbundle.private_key_pem(fsbundle.generate_signing_key()))
    db = f"sqlite:///{tmp_path / 'gw.db'}"
    store = open_store(db)
    body = {"incident": "inc-cli", "status": "raised", "severity": "alarm", "channel": 0,
            "anomaly_score": 5.0, "threshold": 3.0, "fault": "outer_race", "zone": "C",
            "explanation": {"features_z": {"kurtosis": 6.0}}, "model": {"name": "m"}}
    store.store_batch(Batch(SITE, device, "b", "alert", (Record(1, time.time(), body),),
                            time.time()), time.time())
    gateway = Gateway(GatewayConfig.for_site(mosquitto.url, SITE, db,
                                             client_id=f"gw-{device}"), store=store)
    gateway.start()

    def run(*args: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exc:
            main(["gateway", "feedback", "--incident", "inc-cli", "--db", db, "--by", "ana",
                  "--broker", mosquitto.url, *args])
            raise SystemExit(0)
        got = capsys.readouterr()
        return int(exc.value.code or 0), got.out + got.err

    try:
        time.sleep(0.3)     # the gateway's subscriptions settle
        code, out = run("--label", "confirmed", "--command-key", str(stranger_file))
        assert code == 0 and "sent signed cmd/feedback" in out, out
        assert learn_until(agent, lambda: agent.counters["bad_commands"] == 1)
        assert agent.counters["commands"] == 0
        code, out = run("--label", "maintenance_done", "--command-key", str(key_file))
        assert code == 0 and f"on {topics.command(SITE, device, 'feedback')}" in out, out
        assert learn_until(agent, lambda: agent.counters["commands"] == 1)
        assert {r["who"] for r in resets(agent)} == {"command:ana"}
        assert agent.counters["bad_commands"] == 1
        assert learn_until(agent, lambda: gateway.ingestor._counts["feedback"] >= 2), \
            gateway.ingestor._counts
        # stored once each, by the CLI; the gateway saw both commands and added none
        assert [(f.label, f.source) for f in fb.rows(store)] == [
            ("confirmed", "cli"), ("maintenance_done", "cli")]
        code, out = run("--label", "confirmed", "--broker", "mqtt://127.0.0.1:1",
                        "--command-key", str(key_file))
        assert code == 1 and "stored, but not sent" in out and "Traceback" not in out, out
    finally:
        gateway.stop()
        store.close()
