"""The JSON framing every payload shares: compact encoding without NaN, the size-bounded
object parser, and the field checks that name the first problem in a :class:`MessageError`.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from foreshock.errors import MessageError

MAX_PAYLOAD_BYTES: Final = 4 * 1024 * 1024
NUM = (int, float)


def dumps(obj: dict[str, Any]) -> bytes:
    """Compact JSON with no NaN (non-finite numbers become null)."""
    return json.dumps(finite(obj), separators=(",", ":"), allow_nan=False).encode()


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def loads(payload: bytes | str) -> dict[str, Any]:
    """Parse a JSON object payload, raising MessageError for anything else."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        obj = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"payload is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MessageError("payload must be a JSON object")
    return obj


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (Python's parser accepts them): refused."""
    raise ValueError(f"{name} is not a JSON number")


def need(obj: dict[str, Any], key: str, types: tuple[type, ...], where: str) -> Any:
    """``obj[key]``, which must be present and of one of ``types`` (a bool is not an int)."""
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


def one_of(body: dict[str, Any], key: str, allowed: tuple[str, ...], where: str) -> None:
    """``body[key]`` must be one of ``allowed``."""
    if body[key] not in allowed:
        raise MessageError(f"{where}: {key} {body[key]!r} not one of {allowed}")


def check_schema(obj: dict[str, Any], schema: str) -> None:
    """The payload's ``schema`` must be ``schema``."""
    if obj.get("schema") != schema:
        raise MessageError(f"schema {obj.get('schema')!r} is not {schema!r}")
