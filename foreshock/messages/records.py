"""Record batches, the payload every device kind (telemetry, alert, event, health) travels in.

Devices send records in batches. A batch is one MQTT message carrying records of one kind::

    {"schema": "foreshock.batch/1", "site": "plant1", "device": "pump-07",
     "boot_id": "4f1c...", "kind": "telemetry", "sent_ts": 1764250000.12,
     "records": [{"seq": 41, "ts": 1764249999.5, "body": {...}}, ...]}

``(device, boot_id, seq)`` identifies a record for ever: the gateway stores it once and
sees gaps in ``seq`` within a boot. ``ts`` is the device's clock, Unix seconds. The body of
each kind has the required fields listed in ``BODY_FIELDS``; extra fields are allowed (a
subscriber ignores what it does not know), missing or mistyped ones make the batch invalid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

from foreshock.errors import MessageError
from foreshock.messages.codec import NUM, check_schema, dumps, loads, need, one_of
from foreshock.topics import ID_RE, RECORD_KINDS

BATCH_SCHEMA: Final = "foreshock.batch/1"
MAX_RECORDS: Final = 10_000

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


def encode_batch(batch: Batch) -> bytes:
    validate_batch(batch.to_json())
    return dumps(batch.to_json())


def decode_batch(payload: bytes | str) -> Batch:
    """Parse and validate a batch; raises MessageError naming the first problem."""
    obj = loads(payload)
    validate_batch(obj)
    records = tuple(Record(r["seq"], float(r["ts"]), r["body"]) for r in obj["records"])
    return Batch(obj["site"], obj["device"], obj["boot_id"], obj["kind"], records,
                 float(obj.get("sent_ts") or 0.0))


def validate_batch(obj: dict[str, Any]) -> None:
    check_schema(obj, BATCH_SCHEMA)
    for key in ("site", "device"):
        if not ID_RE.match(str(need(obj, key, (str,), "batch"))):
            raise MessageError(f"batch: {key} {obj[key]!r} is not a valid id")
    need(obj, "boot_id", (str,), "batch")
    kind = need(obj, "kind", (str,), "batch")
    if kind not in RECORD_KINDS:
        raise MessageError(f"batch: kind {kind!r} not one of {RECORD_KINDS}")
    sent_ts = obj.get("sent_ts", 0.0)
    if sent_ts is not None and (isinstance(sent_ts, bool) or not isinstance(sent_ts, NUM)
                                or not math.isfinite(sent_ts)):
        raise MessageError(f"batch: sent_ts must be a finite number, got {sent_ts!r}")
    records = need(obj, "records", (list,), "batch")
    if not 1 <= len(records) <= MAX_RECORDS:
        raise MessageError(f"batch: {len(records)} records, expected 1..{MAX_RECORDS}")
    for i, rec in enumerate(records):
        validate_record(kind, rec, f"record {i}")


def validate_record(kind: str, rec: Any, where: str = "record") -> None:
    if not isinstance(rec, dict):
        raise MessageError(f"{where}: must be an object")
    seq = need(rec, "seq", (int,), where)
    if not 0 <= seq < 2**63:
        raise MessageError(f"{where}: seq {seq} out of range")
    ts = need(rec, "ts", NUM, where)
    if not math.isfinite(ts):
        raise MessageError(f"{where}: ts must be finite")
    body = need(rec, "body", (dict,), where)
    for key, types in BODY_FIELDS[kind].items():
        need(body, key, types, f"{where} body")
    if kind == "alert":
        one_of(body, "status", ALERT_STATUSES, where)
        one_of(body, "severity", SEVERITIES, where)
    if kind in ("alert", "telemetry"):
        one_of(body, "zone", ZONES, where)
    if kind == "event":
        one_of(body, "type", EVENT_TYPES, where)
