"""Commands to a device (``cmd/<name>``): the payload, its ed25519 signature over canonical
JSON, the freshness window and the replay guard.

``rebaseline``, ``feedback`` and ``rollback`` change state, so the agent runs them only when
signed by a trusted key, fresh, and with an id it has not accepted before (docs/topics.md).
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from foreshock.errors import MessageError
from foreshock.messages.codec import check_schema, dumps, finite, loads, need

COMMAND_SCHEMA: Final = "foreshock.command/1"
COMMAND_MAX_AGE_S: Final = 600.0
COMMAND_REPLAY_IDS: Final = 256
SIGNED_COMMANDS: Final = ("rebaseline", "feedback", "rollback")  # verified by the agent


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
    check_schema(obj, COMMAND_SCHEMA)
    need(obj, "command", (str,), "command")
    need(obj, "id", (str,), "command")
    need(obj, "args", (dict,), "command")
    return obj


def command_signed_bytes(obj: dict[str, Any]) -> bytes:
    """Canonical JSON of a command without ``sig``: sorted keys, compact separators."""
    body = {k: v for k, v in obj.items() if k != "sig"}
    try:
        return json.dumps(finite(body), sort_keys=True, separators=(",", ":"),
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
