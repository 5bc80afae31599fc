"""Config loading helpers shared by the agent, the gateway and the simulator.

Each side defines its own frozen dataclasses; this module reads TOML and turns a table into
such a dataclass, failing with one :class:`ConfigError` that names the key, the bad value and
what is allowed. A config key, its dataclass field and its CLI option share one name.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from foreshock.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


def read_toml(path: Path | str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None


def from_table(cls: type[T], table: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a TOML table, checking keys and scalar types.

    Nested dataclass fields are built from nested tables. Unknown keys are an error (a typo
    must not silently fall back to a default).
    """
    if not isinstance(table, dict):
        raise ConfigError(f"[{where or cls.__name__}] must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {_key(where, unknown[0])}; allowed keys: {', '.join(sorted(fields))}")
    kwargs: dict[str, Any] = {}
    for name, value in table.items():
        kwargs[name] = _coerce(hints[name], value, _key(where, name))
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"[{where or cls.__name__}] {exc}") from None


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_table(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} = {value!r} has the wrong type (expected {hint})")
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{key} = {value!r} is not allowed; use one of {allowed}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise ConfigError(f"{key} = {value!r} must be a list")
        (inner, *_) = typing.get_args(hint) or (Any,)
        items = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r} must be a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r} must be an integer")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} must be true or false")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r} must be a string")
        return value
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r} must be a path string")
        return Path(value)
    return value


def check_range(key: str, value: float, low: float, high: float) -> None:
    """Raise ConfigError unless low <= value <= high."""
    if not (low <= value <= high):
        raise ConfigError(f"{key} = {value!r} is out of range; allowed {low:g}..{high:g}")
