"""Bad OTA payloads (model offers, chunks, rollback commands) into the agent's OtaReceiver:
counted invalid and dropped, never raised; the receiver never writes outside its state
directory and never allocates in proportion to an unchecked number."""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz_messages import JSON, PAYLOADS

from agent.ota import CHUNK_SCHEMA, OFFER_SCHEMA, OtaConfig, OtaReceiver, parse_offer
from foreshock.errors import MessageError

RUNNING = {"name": "foreshock-default", "version": "0.1.1"}
TOPIC = "foreshock/v1/plant1/pump-1/"
SAFE_ID = st.from_regex(r"[a-z0-9][a-z0-9-]{0,15}", fullmatch=True)


def receiver(state_dir: Path) -> OtaReceiver:
    return OtaReceiver(OtaConfig("plant1", "pump-1", state_dir, (), "0" * 16), RUNNING)


def offer(rollout_id: str = "r1", chunks: int = 1, size: int = 5) -> dict[str, Any]:
    return {"schema": OFFER_SCHEMA, "rollout_id": rollout_id,
            "bundle": {"name": "foreshock-default", "version": "0.2.0"},
            "files": [{"name": "detector.onnx", "size": size, "chunks": chunks,
                       "sha256": "0" * 64}]}


def chunk(rollout_id: str, data: bytes = b"hello", index: int = 0,
          count: int = 1) -> dict[str, Any]:
    return {"schema": CHUNK_SCHEMA, "rollout_id": rollout_id, "file": "detector.onnx",
            "index": index, "count": count, "sha256": hashlib.sha256(data).hexdigest(),
            "data": base64.b64encode(data).decode()}


@st.composite
def near_misses(draw: st.DrawFn) -> tuple[str, bytes]:
    """An offer or chunk (with safe ids and small counts) with one field replaced."""
    rid = draw(SAFE_ID)
    kind, obj = draw(st.sampled_from([("model/offer", offer(rid, draw(st.integers(1, 4)))),
                                      ("model/chunk", chunk(rid))]))
    key = draw(st.sampled_from(sorted(obj)))
    if key != "rollout_id":
        obj[key] = draw(JSON | st.integers(-5, 5))
    return kind, json.dumps(obj).encode()


TOPICS = st.sampled_from(["model/offer", "model/chunk", "cmd/rollback"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(TOPICS, PAYLOADS) | near_misses(), min_size=1, max_size=4))
def test_dispatch_counts_bad_messages_and_stays_in_its_directory(
        messages: list[tuple[str, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        rx = receiver(state)
        for kind, payload in messages:
            rx.dispatch(TOPIC + kind, payload)
        outside = [p for p in Path(tmp).rglob("*") if state not in (p, *p.parents)]
        assert not outside


@pytest.mark.parametrize("rollout_id", ["a\x00b", "x" * 300])
def test_unusable_rollout_id_is_a_counted_drop(rollout_id: str, tmp_path: Path) -> None:
    rx = receiver(tmp_path / "state")
    rx.dispatch(TOPIC + "model/offer", json.dumps(offer(rollout_id)).encode())
    rx.dispatch(TOPIC + "model/chunk", json.dumps(chunk(rollout_id)).encode())
    assert rx.invalid >= 1


def test_rollout_id_cannot_escape_the_state_directory(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    rx = receiver(tmp_path / "a" / "state")
    rid = "../../../victim"
    rx.dispatch(TOPIC + "model/offer", json.dumps(offer(rid)).encode())
    rx.dispatch(TOPIC + "model/chunk", json.dumps(chunk(rid)).encode())
    assert (victim / "precious").exists()
    assert rx.invalid == 2


def test_offer_with_absurd_chunk_count_is_refused() -> None:
    with pytest.raises(MessageError):
        parse_offer(json.dumps(offer(chunks=10**9, size=5)).encode())
