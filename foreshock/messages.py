"""Versioned JSON payloads on the MQTT topics (spec: docs/topics.md).

Devices send records in batches. A batch is one MQTT message carrying records of one kind::

    {"schema": "foreshock.batch/1", "site": "plant1", "device": "pump-07",
     "boot_id": "4f1c...", "kind": "telemetry", "sent_ts": 1764250000.12,
     "records": [{"seq": 41, "ts": 1764249999.5, "body": {...}}, ...]}

``(device, boot_id, seq)`` identifies a record for ever: the gateway stores it once and
sees gaps in ``seq`` within a boot. ``ts`` is the device's clock, Unix seconds. The body of
each kind has the required fields listed in ``BODY_FIELDS``; extra fields are allowed (a
subscriber ignores what it does not know), missing or mistyped ones make the batch invalid.

The retained ``state`` message (also the last will, with ``online`` false)::

    {"schema": "foreshock.state/1", "site": ..., "device": ..., "online": true,
     "boot_id": ..., "ts": ..., "agent_version": "0.1.0", "model": {"name":..,"version":..}}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Final

from foreshock.errors import MessageError
from foreshock.topics import ID_RE, RECORD_KINDS

BATCH_SCHEMA: Final = "foreshock.batch/1"
STATE_SCHEMA: Final = "foreshock.state/1"
COMMAND_SCHEMA: Final = "foreshock.command/1"
MODEL_STATUS_SCHEMA: Final = "foreshock.model_status/1"
MAX_PAYLOAD_BYTES: Final = 4 * 1024 * 1024
MAX_RECORDS: Final = 10_000

NUM = (int, float)
# Required body fields per record kind, with their JSON types.
BODY_FIELDS: Final[dict[str, dict[str, tuple[type, ...]]]] = {
    "telemetry": {
        "channel": (int,), "window_ts": NUM, "anomaly_score": NUM, "fault": (str,),
        "fault_probability": NUM, "rms_g": NUM, "velocity_rms_mm_s": NUM, "zone": (str,),
    },
    "alert": {
        "incident": (str,), "status": (str,), "severity": (str,), "channel": (int,),
        "anomaly_score": NUM, "threshold": NUM, "fault": (str,), "zone": (str,),
        "explanation": (dict,), "model": (dict,),
    },
    "event": {"type": (str,), "detail": (dict,)},
    "health": {"uptime_s": NUM, "counters": (dict,)},
}
ALERT_STATUSES: Final = ("raised", "updated", "cleared")
SEVERITIES: Final = ("info", "warning", "alarm", "critical")
ZONES: Final = ("A", "B", "C", "D", "?")
EVENT_TYPES: Final = ("data_quality", "drift", "model", "outbox", "link", "baseline", "source")


@dataclass(frozen=True)
class Record:
    """One stored-and-forwarded record: a sequence number, the device time, and a body."""

    seq: int
    ts: float
    body: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "body": self.body}


@dataclass(frozen=True)
class Batch:
    """Records of one kind from one device boot, as sent in one MQTT message."""

    site: str
    device: str
    boot_id: str
    kind: str
    records: tuple[Record, ...]
    sent_ts: float = 0.0
    schema: str = field(default=BATCH_SCHEMA)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema, "site": self.site, "device": self.device,
            "boot_id": self.boot_id, "kind": self.kind, "sent_ts": self.sent_ts,
            "records": [r.to_json() for r in self.records],
        }


def dumps(obj: dict[str, Any]) -> bytes:
    """Compact JSON with no NaN (non-finite numbers become null)."""
    return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False).encode()


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def encode_batch(batch: Batch) -> bytes:
    validate_batch(batch.to_json())
    return dumps(batch.to_json())


def loads(payload: bytes | str) -> dict[str, Any]:
    """Parse a JSON object payload, raising MessageError for anything else."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"payload is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MessageError("payload must be a JSON object")
    return obj


def decode_batch(payload: bytes | str) -> Batch:
    """Parse and validate a batch; raises MessageError naming the first problem."""
    obj = loads(payload)
    validate_batch(obj)
    records = tuple(Record(r["seq"], float(r["ts"]), r["body"]) for r in obj["records"])
    return Batch(obj["site"], obj["device"], obj["boot_id"], obj["kind"], records,
                 float(obj.get("sent_ts") or 0.0))


def _need(obj: dict[str, Any], key: str, types: tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise MessageError(f"{where}: missing field {key!r}")
    value = obj[key]
    if isinstance(value, bool) and bool not in types:
        raise MessageError(f"{where}: field {key!r} must be {_names(types)}, got bool")
    if not isinstance(value, types):
        raise MessageError(
            f"{where}: field {key!r} must be {_names(types)}, got {type(value).__name__}")
    return value


def _names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def validate_batch(obj: dict[str, Any]) -> None:
    if obj.get("schema") != BATCH_SCHEMA:
        raise MessageError(f"schema {obj.get('schema')!r} is not {BATCH_SCHEMA!r}")
    for key in ("site", "device"):
        if not ID_RE.match(str(_need(obj, key, (str,), "batch"))):
            raise MessageError(f"batch: {key} {obj[key]!r} is not a valid id")
    _need(obj, "boot_id", (str,), "batch")
    kind = _need(obj, "kind", (str,), "batch")
    if kind not in RECORD_KINDS:
        raise MessageError(f"batch: kind {kind!r} not one of {RECORD_KINDS}")
    records = _need(obj, "records", (list,), "batch")
    if not 1 <= len(records) <= MAX_RECORDS:
        raise MessageError(f"batch: {len(records)} records, expected 1..{MAX_RECORDS}")
    for i, rec in enumerate(records):
        validate_record(kind, rec, f"record {i}")


def validate_record(kind: str, rec: Any, where: str = "record") -> None:
    if not isinstance(rec, dict):
        raise MessageError(f"{where}: must be an object")
    seq = _need(rec, "seq", (int,), where)
    if not 0 <= seq < 2**63:
        raise MessageError(f"{where}: seq {seq} out of range")
    ts = _need(rec, "ts", NUM, where)
    if not math.isfinite(ts):
        raise MessageError(f"{where}: ts must be finite")
    body = _need(rec, "body", (dict,), where)
    for key, types in BODY_FIELDS[kind].items():
        _need(body, key, types, f"{where} body")
    if kind == "alert":
        _one_of(body, "status", ALERT_STATUSES, where)
        _one_of(body, "severity", SEVERITIES, where)
    if kind in ("alert", "telemetry"):
        _one_of(body, "zone", ZONES, where)
    if kind == "event":
        _one_of(body, "type", EVENT_TYPES, where)


def _one_of(body: dict[str, Any], key: str, allowed: tuple[str, ...], where: str) -> None:
    if body[key] not in allowed:
        raise MessageError(f"{where}: {key} {body[key]!r} not one of {allowed}")


def state_message(site: str, device: str, *, online: bool, boot_id: str, ts: float,
                  agent_version: str, model: dict[str, str] | None = None) -> bytes:
    return dumps({
        "schema": STATE_SCHEMA, "site": site, "device": device, "online": online,
        "boot_id": boot_id, "ts": ts, "agent_version": agent_version, "model": model or {},
    })


def decode_state(payload: bytes | str) -> dict[str, Any]:
    obj = loads(payload)
    if obj.get("schema") != STATE_SCHEMA:
        raise MessageError(f"schema {obj.get('schema')!r} is not {STATE_SCHEMA!r}")
    _need(obj, "device", (str,), "state")
    _need(obj, "online", (bool,), "state")
    _need(obj, "boot_id", (str,), "state")
    _need(obj, "ts", NUM, "state")
    return obj


def command_message(name: str, args: dict[str, Any], *, issued_by: str, ts: float,
                    command_id: str) -> bytes:
    return dumps({"schema": COMMAND_SCHEMA, "command": name, "id": command_id,
                  "issued_by": issued_by, "ts": ts, "args": args})


def decode_command(payload: bytes | str) -> dict[str, Any]:
    obj = loads(payload)
    if obj.get("schema") != COMMAND_SCHEMA:
        raise MessageError(f"schema {obj.get('schema')!r} is not {COMMAND_SCHEMA!r}")
    _need(obj, "command", (str,), "command")
    _need(obj, "id", (str,), "command")
    _need(obj, "args", (dict,), "command")
    return obj
