"""Bad input on the MQTT boundaries: command, batch and state payloads.

Every payload either decodes or raises MessageError; the agent counts a bad command and
goes on (directly and through a real broker).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import AgentConfig
from agent.service import Agent
from foreshock import messages, topics
from foreshock.errors import MessageError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
FIELDS = {"schema": st.sampled_from([messages.COMMAND_SCHEMA, messages.BATCH_SCHEMA,
                                     messages.STATE_SCHEMA, "x"]) | JSON,
          "command": st.sampled_from(topics.COMMANDS) | JSON, "id": JSON, "args": JSON,
          "site": st.sampled_from(["plant1", "bad site", ""]) | JSON,
          "device": st.sampled_from(["pump-1", "../x"]) | JSON, "boot_id": JSON,
          "kind": st.sampled_from(topics.RECORD_KINDS) | JSON, "online": JSON, "ts": JSON,
          "records": st.lists(st.fixed_dictionaries({}, optional={
              "seq": st.integers() | JSON, "ts": st.floats() | JSON,
              "body": st.dictionaries(st.sampled_from(
                  ["channel", "window_ts", "status", "severity", "zone", "type", "detail",
                   "uptime_s", "counters", "incident"]), JSON)}), max_size=3) | JSON}
NEAR_MISS = st.fixed_dictionaries({}, optional=FIELDS)
PAYLOADS = (st.binary(max_size=300)
            | JSON.map(lambda o: json.dumps(o).encode())
            | NEAR_MISS.map(lambda o: json.dumps(o, allow_nan=True).encode()))
DECODERS = (messages.decode_command, messages.decode_batch, messages.decode_state)


@settings(max_examples=150, deadline=None)
@given(PAYLOADS)
def test_decoders_accept_or_raise_message_error(payload: bytes) -> None:
    for decode in DECODERS:
        try:
            decode(payload)
        except MessageError:
            pass


def test_oversized_payload_is_refused_before_parsing() -> None:
    big = b"[" * (messages.MAX_PAYLOAD_BYTES + 1)
    for decode in DECODERS:
        with pytest.raises(MessageError, match="exceeds"):
            decode(big)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json_and_are_refused(constant: bytes) -> None:
    """Python's parser takes them; the gateway could never store them (strict JSON), so a
    batch carrying one would come back for ever: refused at decoding."""
    batch = messages.Batch("plant1", "pump-1", "boot-a", "telemetry", (messages.Record(
        1, 1.7e9, {"channel": 0, "window_ts": 1.7e9, "anomaly_score": 0.25, "fault": "normal",
                   "fault_probability": 0.9, "rms_g": 0.2, "velocity_rms_mm_s": 1.1,
                   "zone": "A"}),), 1.7e9)
    good = messages.encode_batch(batch)
    assert messages.decode_batch(good).records[0].body["anomaly_score"] == 0.25
    with pytest.raises(MessageError, match="not a JSON number"):
        messages.decode_batch(good.replace(b"0.25", constant))


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Agent:
    from firmware_sim.node import NodeSource, SimNode
    from firmware_sim.scenario import Scenario

    state = tmp_path_factory.mktemp("agent")
    cfg = AgentConfig.for_device("pump-1", "plant1", "", state)
    node = SimNode(Scenario.load("healthy"), "pump-1", seed=1)
    return Agent(cfg, NodeSource(node, realtime=False), store=False)


TOPICS = (st.sampled_from([topics.command("plant1", "pump-1", c) for c in topics.COMMANDS])
          | st.text(max_size=60))


@settings(max_examples=150, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
@given(TOPICS, PAYLOADS)
def test_agent_counts_bad_commands_and_never_raises(agent: Agent, topic: str,
                                                   payload: bytes) -> None:
    agent._commands.clear()
    before = agent.counters["bad_commands"]
    try:
        _, _, kind = topics.parse(topic)
        messages.decode_command(payload)
        if kind.startswith("cmd/") and kind[4:] in messages.SIGNED_COMMANDS:
            raise MessageError("unsigned")   # fuzzed payloads carry no valid signature
        expected_bad, expected_queued = 0, int(kind.startswith("cmd/"))
    except (ValueError, MessageError):
        expected_bad, expected_queued = 1, 0
    agent._on_command(topic, payload)
    assert agent.counters["bad_commands"] - before == expected_bad
    assert len(agent._commands) == expected_queued


def test_bad_commands_through_a_real_broker(tmp_path: Path, mosquitto: Any) -> None:
    """Garbage published on the device's command topics: counted, the agent keeps going."""
    cfg = AgentConfig.for_device("pump-9", "plant1", mosquitto.url, tmp_path,
                                 link={"client_id": "fuzz-pump-9"})
    from firmware_sim.node import NodeSource, SimNode
    from firmware_sim.scenario import Scenario

    node = SimNode(Scenario.load("healthy"), "pump-9", seed=1)
    agent = Agent(cfg, NodeSource(node, realtime=False))
    agent.start()
    try:
        assert agent.link.wait_connected(10)
        time.sleep(0.3)  # the command subscription follows the connection
        bad = [b"", b"\xff\xfe", b"[]", b"null", b'{"schema": "foreshock.command/1"}',
               json.dumps({"schema": messages.COMMAND_SCHEMA, "command": "rebaseline",
                           "id": 7, "args": {}}).encode(), b"{" * 5000]
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        for name, payload in zip(topics.COMMANDS * 2, bad, strict=False):
            topic = topics.command("plant1", "pump-9", name)
            pub.publish(topic, payload, qos=1).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
        deadline = time.monotonic() + 10
        while agent.counters["bad_commands"] < len(bad) and time.monotonic() < deadline:
            agent.step(0.01)
        assert agent.counters["bad_commands"] == len(bad)
        assert agent.step(0.01) >= 0  # the loop still runs
    finally:
        agent.close()
