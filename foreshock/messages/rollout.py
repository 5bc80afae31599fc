"""Model rollout and fleet payloads (docs/schemas/model-*.json, fleet.json): the gateway's
offer and chunks, the device's model status, and the retained per-site fleet summary.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any, Final

from foreshock.errors import MessageError
from foreshock.messages.codec import NUM, check_schema, dumps, loads, need, one_of

MODEL_OFFER_SCHEMA: Final = "foreshock.model_offer/1"
MODEL_CHUNK_SCHEMA: Final = "foreshock.model_chunk/1"
MODEL_STATUS_SCHEMA: Final = "foreshock.model_status/1"
FLEET_SCHEMA: Final = "foreshock.fleet/1"
MODEL_STATUSES: Final = ("offered", "downloading", "verified", "shadow", "active", "failed",
                         "rolled_back")
ROLLOUT_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FILE_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
MAX_BUNDLE_BYTES: Final = 256 * 1024 * 1024
MIN_CHUNK_BYTES: Final = 1024


def _rollout_id(obj: dict[str, Any], where: str) -> str:
    rid = need(obj, "rollout_id", (str,), where)
    if not ROLLOUT_ID_RE.match(rid):
        raise MessageError(f"{where}: rollout_id {rid[:40]!r} is not 1-64 characters of "
                           "A-Z a-z 0-9 _ . - starting with a letter or digit")
    return str(rid)


def _bundle_ref(obj: dict[str, Any], where: str) -> dict[str, str]:
    bundle = need(obj, "bundle", (dict,), where)
    for key in ("name", "version"):
        need(bundle, key, (str,), f"{where} bundle")
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
    check_schema(obj, MODEL_OFFER_SCHEMA)
    _rollout_id(obj, "offer")
    obj["bundle"] = _bundle_ref(obj, "offer")
    files = need(obj, "files", (list,), "offer")
    chunk_bytes = obj.get("chunk_bytes")
    if not files or len(files) > 64:
        raise MessageError("offer: files must list 1..64 files")
    total = 0
    for f in files:
        if not isinstance(f, dict) or not FILE_NAME_RE.match(str(f.get("name", ""))) or \
                not SHA256_RE.match(str(f.get("sha256", ""))):
            raise MessageError(f"offer: bad file entry {str(f)[:80]}")
        size = need(f, "size", (int,), "offer file")
        chunks = need(f, "chunks", (int,), "offer file")
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
    check_schema(obj, MODEL_CHUNK_SCHEMA)
    _rollout_id(obj, "chunk")
    for key, types in (("file", (str,)), ("index", (int,)), ("count", (int,)),
                       ("sha256", (str,)), ("data", (str,))):
        need(obj, key, types, "chunk")
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
    check_schema(obj, MODEL_STATUS_SCHEMA)
    need(obj, "device", (str,), "model status")
    need(obj, "rollout_id", (str,), "model status")
    obj["bundle"] = _bundle_ref(obj, "model status")
    one_of(obj, "status", MODEL_STATUSES, "model status")
    need(obj, "ts", NUM, "model status")
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
    check_schema(obj, FLEET_SCHEMA)
    need(obj, "site", (str,), "fleet")
    need(obj, "ts", NUM, "fleet")
    for i, dev in enumerate(need(obj, "devices", (list,), "fleet")):
        if not isinstance(dev, dict):
            raise MessageError(f"fleet: device {i} must be an object")
        need(dev, "device", (str,), f"fleet device {i}")
        need(dev, "online", (bool, type(None)), f"fleet device {i}")
    return obj
