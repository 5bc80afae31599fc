"""docs/schemas/*.json agree with what foreshock.messages produces and accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreshock import messages, topics
from foreshock.errors import MessageError
from foreshock.messages import BODY_FIELDS, Batch, Record

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"
ENUMS = {"status": messages.ALERT_STATUSES, "severity": messages.SEVERITIES,
         "zone": messages.ZONES, "type": messages.EVENT_TYPES}


def schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.json").read_text())


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(name))


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.json")), ids=lambda p: p.stem)
def test_every_schema_is_valid_draft_2020_12(path: Path) -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))


@pytest.mark.parametrize("kind", topics.RECORD_KINDS)
def test_batch_schema_lists_exactly_the_contract_fields(kind: str) -> None:
    body = schema(f"batch-{kind}")["properties"]["records"]["items"]["properties"]["body"]
    assert set(body["required"]) == set(BODY_FIELDS[kind])
    for key, prop in body["properties"].items():
        if "enum" in prop:
            assert tuple(prop["enum"]) == ENUMS[key]


ids = st.from_regex(topics.ID_RE, fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64) | st.integers(-10**6, 10**6)


def body_for(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for key, types in BODY_FIELDS[kind].items():
        if key in ENUMS and (kind != "telemetry" or key == "zone"):
            fields[key] = st.sampled_from(ENUMS[key])
        elif types == (int,):
            fields[key] = st.integers(0, 64)
        elif types == (str,):
            fields[key] = st.text(max_size=12)
        elif types == (dict,):
            fields[key] = st.dictionaries(st.text(max_size=5), finite, max_size=3)
        else:
            fields[key] = finite
    return st.fixed_dictionaries(fields, optional={"extra": st.text(max_size=5)})


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    kind = draw(st.sampled_from(topics.RECORD_KINDS))
    records = draw(st.lists(st.builds(Record, st.integers(0, 2**63 - 1), finite, body_for(kind)),
                            min_size=1, max_size=5))
    return Batch(draw(ids), draw(ids), draw(st.text(max_size=20)), kind, tuple(records),
                 draw(finite))


@settings(max_examples=60, deadline=None)
@given(batches())
def test_every_batch_messages_encodes_matches_its_schema(batch: Batch) -> None:
    obj = json.loads(messages.encode_batch(batch))
    validator(f"batch-{batch.kind}").validate(obj)


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from(["drop", "retype", "enum"]))
def test_schema_rejects_what_messages_rejects(batch: Batch, how: str) -> None:
    obj = json.loads(messages.encode_batch(batch))
    body = obj["records"][0]["body"]
    key = sorted(BODY_FIELDS[batch.kind])[0]
    if how == "drop":
        del body[key]
    elif how == "retype":
        body[key] = [1]
    else:
        enum_keys = [k for k in BODY_FIELDS[batch.kind] if k in ENUMS]
        if not enum_keys:
            return
        body[enum_keys[0]] = "no-such-value"
    with pytest.raises(MessageError):
        messages.validate_batch(obj)
    assert not validator(f"batch-{batch.kind}").is_valid(obj)


def test_state_messages_match_schema() -> None:
    v = validator("state")
    for online in (True, False):
        raw = messages.state_message("plant1", "pump-1", online=online, boot_id="b", ts=1.5,
                                     agent_version="0.1.0",
                                     model={"name": "m", "version": "1.0.0"})
        messages.decode_state(raw)
        v.validate(json.loads(raw))
    assert not v.is_valid({"schema": messages.STATE_SCHEMA, "device": "d", "online": "yes",
                           "boot_id": "b", "ts": 1})


@pytest.mark.parametrize("name", topics.COMMANDS)
def test_command_messages_match_schema(name: str) -> None:
    raw = messages.command_message(name, {"n": 1}, issued_by="ops", ts=2.0, command_id="c1")
    messages.decode_command(raw)
    validator("command").validate(json.loads(raw))
    assert not validator("command").is_valid({**json.loads(raw), "command": "format-disk"})
