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

import base64
import hashlib
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from foreshock.errors import MessageError
from foreshock.topics import ID_RE, RECORD_KINDS

BATCH_SCHEMA: Final = "foreshock.batch/1"
STATE_SCHEMA: Final = "foreshock.state/1"
COMMAND_SCHEMA: Final = "foreshock.command/1"
COMMAND_MAX_AGE_S: Final = 600.0
COMMAND_REPLAY_IDS: Final = 256
SIGNED_COMMANDS: Final = ("rebaseline", "feedback", "rollback")  # verified by the agent
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
    sent_ts = obj.get("sent_ts", 0.0)
    if sent_ts is not None and (isinstance(sent_ts, bool) or not isinstance(sent_ts, NUM)
                                or not math.isfinite(sent_ts)):
        raise MessageError(f"batch: sent_ts must be a finite number, got {sent_ts!r}")
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
                    command_id: str, key: Ed25519PrivateKey | None = None) -> bytes:
    """A command; with ``key``, ``sig`` is the base64 ed25519 signature over
    :func:`command_signed_bytes` (the command without ``sig``)."""
    obj: dict[str, Any] = {"schema": COMMAND_SCHEMA, "command": name, "id": command_id,
                           "issued_by": issued_by, "ts": ts, "args": args}
    if key is not None:
        obj["sig"] = base64.b64encode(key.sign(command_signed_bytes(obj))).decode("ascii")
    return dumps(obj)


def decode_command(payload: bytes | str) -> dict[str, Any]:
    obj = loads(payload)
    if obj.get("schema") != COMMAND_SCHEMA:
        raise MessageError(f"schema {obj.get('schema')!r} is not {COMMAND_SCHEMA!r}")
    _need(obj, "command", (str,), "command")
    _need(obj, "id", (str,), "command")
    _need(obj, "args", (dict,), "command")
    return obj


def command_signed_bytes(obj: dict[str, Any]) -> bytes:
    """Canonical JSON of a command without ``sig``: sorted keys, compact separators."""
    body = {k: v for k, v in obj.items() if k != "sig"}
    try:
        return json.dumps(_finite(body), sort_keys=True, separators=(",", ":"),
                          allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise MessageError(f"command cannot be canonicalised: {exc}") from None


def verify_command(obj: dict[str, Any], trusted_keys: Sequence[Ed25519PublicKey], *,
                   now_ts: float | None = None, max_age_s: float = COMMAND_MAX_AGE_S) -> None:
    """Check a decoded command's signature against ``trusted_keys`` and its freshness.

    Raises MessageError: ``unsigned`` (no ``sig``), ``bad signature`` (no trusted key
    verifies it), or ``stale command`` (``ts`` missing or more than ``max_age_s`` away from
    ``now_ts``, default the local clock). Replayed ids are :class:`CommandReplayGuard`'s job.
    """
    sig = obj.get("sig")
    if not isinstance(sig, str) or not sig:
        raise MessageError("unsigned")
    try:
        raw = base64.b64decode(sig, validate=True)
    except ValueError:
        raise MessageError("bad signature") from None
    signed = command_signed_bytes(obj)
    if not any(_signed_by(k, raw, signed) for k in trusted_keys):
        raise MessageError("bad signature")
    ts = obj.get("ts")
    now = time.time() if now_ts is None else now_ts
    if (not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts)
            or abs(now - ts) > max_age_s):
        raise MessageError(f"stale command: ts {ts!r} is not within {max_age_s:g} s of {now:.0f}")


def _signed_by(key: Ed25519PublicKey, sig: bytes, data: bytes) -> bool:
    try:
        key.verify(sig, data)
    except InvalidSignature:
        return False
    return True


class CommandReplayGuard:
    """Remembers the ids of the last ``size`` accepted commands; ``check`` refuses a repeat.

    Together with the ``ts`` window of :func:`verify_command` this stops a captured signed
    command from being replayed: within the window its id is remembered, after it the
    command is stale.
    """

    def __init__(self, size: int = COMMAND_REPLAY_IDS) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.size = size

    def check(self, obj: dict[str, Any]) -> None:
        """Raise MessageError for an id seen before; otherwise remember it."""
        command_id = str(obj.get("id"))
        if command_id in self._seen:
            raise MessageError(f"replayed command id {command_id!r}")
        self._seen[command_id] = None
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)


# --- model rollout and fleet (docs/schemas/model-*.json, fleet.json) ----------------------
MODEL_OFFER_SCHEMA: Final = "foreshock.model_offer/1"
MODEL_CHUNK_SCHEMA: Final = "foreshock.model_chunk/1"
FLEET_SCHEMA: Final = "foreshock.fleet/1"
MODEL_STATUSES: Final = ("offered", "downloading", "verified", "shadow", "active", "failed",
                         "rolled_back")
ROLLOUT_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FILE_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
MAX_BUNDLE_BYTES: Final = 256 * 1024 * 1024
MIN_CHUNK_BYTES: Final = 1024


def _schema(obj: dict[str, Any], schema: str) -> None:
    if obj.get("schema") != schema:
        raise MessageError(f"schema {obj.get('schema')!r} is not {schema!r}")


def _rollout_id(obj: dict[str, Any], where: str) -> str:
    rid = _need(obj, "rollout_id", (str,), where)
    if not ROLLOUT_ID_RE.match(rid):
        raise MessageError(f"{where}: rollout_id {rid[:40]!r} is not 1-64 characters of "
                           "A-Z a-z 0-9 _ . - starting with a letter or digit")
    return str(rid)


def _bundle_ref(obj: dict[str, Any], where: str) -> dict[str, str]:
    bundle = _need(obj, "bundle", (dict,), where)
    for key in ("name", "version"):
        _need(bundle, key, (str,), f"{where} bundle")
    return {"name": bundle["name"], "version": bundle["version"]}


def model_offer_message(rollout_id: str, bundle: dict[str, str], files: list[dict[str, Any]],
                        *, chunk_bytes: int, shadow_windows: int, ts: float) -> bytes:
    """A ``foreshock.model_offer/1``; ``files``: ``{name, size, sha256, chunks}`` each."""
    obj = {"schema": MODEL_OFFER_SCHEMA, "rollout_id": rollout_id,
           "bundle": {"name": bundle["name"], "version": bundle["version"]},
           "files": files, "chunk_bytes": chunk_bytes, "shadow_windows": shadow_windows,
           "ts": ts}
    decode_model_offer(dumps(obj))
    return dumps(obj)


def decode_model_offer(payload: bytes | str) -> dict[str, Any]:
    """Validate an offer: safe rollout id and file names, each file's chunk count matching
    its size and ``chunk_bytes``, the whole bundle under ``MAX_BUNDLE_BYTES``."""
    obj = loads(payload)
    _schema(obj, MODEL_OFFER_SCHEMA)
    _rollout_id(obj, "offer")
    obj["bundle"] = _bundle_ref(obj, "offer")
    files = _need(obj, "files", (list,), "offer")
    chunk_bytes = obj.get("chunk_bytes")
    if not files or len(files) > 64:
        raise MessageError("offer: files must list 1..64 files")
    total = 0
    for f in files:
        if not isinstance(f, dict) or not FILE_NAME_RE.match(str(f.get("name", ""))) or \
                not SHA256_RE.match(str(f.get("sha256", ""))):
            raise MessageError(f"offer: bad file entry {str(f)[:80]}")
        size = _need(f, "size", (int,), "offer file")
        chunks = _need(f, "chunks", (int,), "offer file")
        total += max(0, size)
        if size < 0 or total > MAX_BUNDLE_BYTES:
            raise MessageError(f"offer: file sizes must be 0..{MAX_BUNDLE_BYTES} bytes in all")
        if chunks < 1 or chunks > max(1, -(-size // MIN_CHUNK_BYTES)) or (
                isinstance(chunk_bytes, int) and not isinstance(chunk_bytes, bool) and
                chunks != max(1, -(-size // max(1, chunk_bytes)))):
            raise MessageError(f"offer: {chunks} chunks do not fit file {f['name']} of "
                               f"{size} bytes")
    return obj


def model_chunk_message(rollout_id: str, file: str, index: int, count: int,
                        data: bytes) -> bytes:
    """A ``foreshock.model_chunk/1`` carrying ``data`` (base64, with its SHA-256)."""
    return dumps({"schema": MODEL_CHUNK_SCHEMA, "rollout_id": rollout_id, "file": file,
                  "index": index, "count": count, "sha256": hashlib.sha256(data).hexdigest(),
                  "data": base64.b64encode(data).decode()})


def decode_model_chunk(payload: bytes | str) -> dict[str, Any]:
    """Validate a chunk's fields (not yet its data against its hash)."""
    obj = loads(payload)
    _schema(obj, MODEL_CHUNK_SCHEMA)
    _rollout_id(obj, "chunk")
    for key, types in (("file", (str,)), ("index", (int,)), ("count", (int,)),
                       ("sha256", (str,)), ("data", (str,))):
        _need(obj, key, types, "chunk")
    if not FILE_NAME_RE.match(obj["file"]) or not 0 <= obj["index"] < obj["count"]:
        raise MessageError("chunk: bad file name or index")
    return obj


def chunk_data(chunk: dict[str, Any]) -> bytes:
    """A validated chunk's bytes; MessageError on bad base64 or a SHA-256 mismatch."""
    where = f"chunk {chunk['file']}#{chunk['index']}"
    try:
        data = base64.b64decode(chunk["data"], validate=True)
    except ValueError:
        raise MessageError(f"{where}: bad base64") from None
    if hashlib.sha256(data).hexdigest() != chunk["sha256"]:
        raise MessageError(f"{where}: SHA-256 mismatch")
    return data


def model_status_message(site: str, device: str, rollout_id: str, bundle: dict[str, str],
                         status: str, *, ts: float, detail: str = "",
                         progress: float | None = None,
                         missing: dict[str, list[int]] | None = None) -> bytes:
    """A ``foreshock.model_status/1`` (device -> gateway)."""
    if status not in MODEL_STATUSES:
        raise ValueError(f"model status {status!r} not one of {MODEL_STATUSES}")
    obj: dict[str, Any] = {"schema": MODEL_STATUS_SCHEMA, "site": site, "device": device,
                           "rollout_id": rollout_id,
                           "bundle": {"name": bundle["name"], "version": bundle["version"]},
                           "status": status, "ts": ts}
    if detail:
        obj["detail"] = detail
    if progress is not None:
        obj["progress"] = round(min(1.0, max(0.0, progress)), 4)
    if missing is not None:
        obj["missing_chunks"] = missing
    return dumps(obj)


def decode_model_status(payload: bytes | str) -> dict[str, Any]:
    obj = loads(payload)
    _schema(obj, MODEL_STATUS_SCHEMA)
    _need(obj, "device", (str,), "model status")
    _need(obj, "rollout_id", (str,), "model status")
    obj["bundle"] = _bundle_ref(obj, "model status")
    _one_of(obj, "status", MODEL_STATUSES, "model status")
    _need(obj, "ts", NUM, "model status")
    missing = obj.get("missing_chunks")
    if missing is not None and not (isinstance(missing, dict) and all(
            isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                        for i in v) for v in missing.values())):
        raise MessageError("model status: missing_chunks must map file names to indexes")
    return obj


def fleet_message(site: str, devices: list[dict[str, Any]], *, ts: float) -> bytes:
    """The retained ``foreshock.fleet/1`` summary of one site (docs/schemas/fleet.json)."""
    return dumps({"schema": FLEET_SCHEMA, "site": site, "ts": ts, "devices": devices})


def decode_fleet(payload: bytes | str) -> dict[str, Any]:
    obj = loads(payload)
    _schema(obj, FLEET_SCHEMA)
    _need(obj, "site", (str,), "fleet")
    _need(obj, "ts", NUM, "fleet")
    for i, dev in enumerate(_need(obj, "devices", (list,), "fleet")):
        if not isinstance(dev, dict):
            raise MessageError(f"fleet: device {i} must be an object")
        _need(dev, "device", (str,), f"fleet device {i}")
        _need(dev, "online", (bool, type(None)), f"fleet device {i}")
    return obj


# --- gateway presence (docs/topics.md "Gateway presence") ---------------------------------
GATEWAY_PRESENCE_SCHEMA: Final = "foreshock.gateway_presence/1"


def gateway_presence_message(site: str, gateway: str, *, online: bool, ts: float,
                             interval_s: float) -> bytes:
    """A gateway instance (``gateway`` = its MQTT client id) says it is live and subscribed
    (``online`` true, repeated every ``interval_s``) or leaving (``online`` false)."""
    return dumps({"schema": GATEWAY_PRESENCE_SCHEMA, "site": site, "gateway": gateway,
                  "online": online, "ts": ts, "interval_s": interval_s})


def decode_gateway_presence(payload: bytes | str) -> dict[str, Any]:
    obj = loads(payload)
    _schema(obj, GATEWAY_PRESENCE_SCHEMA)
    _need(obj, "site", (str,), "gateway presence")
    _need(obj, "gateway", (str,), "gateway presence")
    _need(obj, "online", (bool,), "gateway presence")
    _need(obj, "ts", NUM, "gateway presence")
    interval_s = _need(obj, "interval_s", NUM, "gateway presence")
    if not (math.isfinite(interval_s) and interval_s >= 0):
        raise MessageError(f"gateway presence: interval_s {interval_s!r} must be >= 0")
    return obj
