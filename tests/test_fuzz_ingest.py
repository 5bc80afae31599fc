"""Bad input at the gateway: arbitrary payloads on device topics are counted invalid, the
store keeps only valid records, nothing raises (directly and through a real broker)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_messages import JSON, PAYLOADS

from foreshock import messages, topics
from foreshock.messages import Batch, Record
from gateway.config import GatewayConfig
from gateway.ingest import Ingestor
from gateway.service import Gateway
from gateway.store import Store, open_store

KINDS = (*topics.RECORD_KINDS, "state", "model/status", "frames/0", "cmd/ping")
TOPICS = (st.sampled_from([f"foreshock/v1/plant1/pump-1/{k}" for k in KINDS])
          | st.text(max_size=60))


def valid_batch(seq: int) -> dict[str, Any]:
    body = {"type": "baseline", "detail": {"status": "ok"}}
    batch = Batch("plant1", "pump-1", "boot-1", "event", (Record(seq, 1.0e9, body),), 1.0e9)
    return batch.to_json()


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_batches(draw: st.DrawFn) -> bytes:
    """A valid event batch with one field replaced, removed or retyped."""
    obj = valid_batch(draw(st.integers(1, 10**6)))
    path = draw(st.sampled_from(_paths(obj)))
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON)
    return json.dumps(copy.deepcopy(obj)).encode()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return open_store(f"sqlite:///{tmp_path_factory.mktemp('gw') / 'gw.sqlite'}")


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(TOPICS, PAYLOADS | mutated_batches())
def test_ingest_counts_bad_payloads_and_never_raises(store: Store, topic: str,
                                                     payload: bytes) -> None:
    ingestor = Ingestor(store)
    outcome = ingestor.handle(topic, payload, 1.0e9)
    stats = ingestor.stats()
    if topics.is_control(topic):
        assert stats.messages == 0
        return
    assert stats.messages == 1
    assert stats.invalid == (0 if outcome.valid else 1)
    if outcome.valid and topic.endswith(("/telemetry", "/alert", "/event", "/health")):
        batch = messages.decode_batch(payload)  # what was stored was a valid batch
        assert (batch.site, batch.device) == (outcome.site, outcome.device)


def test_garbage_through_a_real_broker_is_counted_and_valid_data_still_stored(
        tmp_path: Path, mosquitto: Any) -> None:
    cfg = GatewayConfig.for_site(mosquitto.url, "plant1", f"sqlite:///{tmp_path / 'g.db'}",
                                 share_group="", client_id="fuzz-gw")
    garbage = [b"", b"\x00\xff", b"[1,2]", b'{"schema": "foreshock.batch/1"}', b"{" * 10_000,
               json.dumps({**valid_batch(1), "device": "pump-2"}).encode(),
               json.dumps({**valid_batch(1), "records": []}).encode()]
    with Gateway(cfg) as gateway:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        for i, payload in enumerate(garbage):
            kind = topics.RECORD_KINDS[i % 4]
            pub.publish(topics.record("plant1", "pump-1", kind), payload,
                        qos=1).wait_for_publish(5)
        pub.publish(topics.record("plant1", "pump-1", "event"),
                    json.dumps(valid_batch(5)).encode(), qos=1).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
        deadline = time.monotonic() + 10
        while gateway.stats().messages < len(garbage) + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = gateway.stats()
        assert stats.invalid == len(garbage)
        assert stats.records_stored == 1
        assert [r.seq for r in gateway.store.records(device="pump-1")] == [5]


def test_batch_with_mistyped_sent_ts_is_invalid() -> None:
    ingestor = Ingestor(open_store("sqlite:///:memory:"))
    payload = json.dumps({**valid_batch(1), "sent_ts": [None]}).encode()
    outcome = ingestor.handle(topics.record("plant1", "pump-1", "event"), payload, 1.0e9)
    assert not outcome.valid and ingestor.stats().invalid == 1


def test_gateway_keeps_ingesting_after_a_mistyped_sent_ts(tmp_path: Path,
                                                          mosquitto: Any) -> None:
    cfg = GatewayConfig.for_site(mosquitto.url, "plant1", f"sqlite:///{tmp_path / 'g.db'}",
                                 share_group="", client_id="fuzz-gw-sent-ts")
    with Gateway(cfg) as gateway:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        topic = topics.record("plant1", "pump-1", "event")
        bad = json.dumps({**valid_batch(1), "sent_ts": {"x": 1}}).encode()
        pub.publish(topic, bad, qos=1).wait_for_publish(5)
        pub.publish(topic, json.dumps(valid_batch(2)).encode(), qos=1).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
        deadline = time.monotonic() + 5
        while gateway.stats().records_stored < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r.seq for r in gateway.store.records(device="pump-1")] == [2]
