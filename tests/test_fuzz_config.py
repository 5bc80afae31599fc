"""Bad config files: random TOML text and real configs with one key mutated go into
AgentConfig.load, GatewayConfig.load and Scenario.load; the only error is ConfigError."""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import AgentConfig
from firmware_sim.scenario import SCENARIO_DIR, Scenario
from foreshock.config import read_toml
from foreshock.errors import ConfigError
from gateway.config import GatewayConfig

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = {
    "agent": ROOT / "agent" / "deploy" / "agent.toml.sample",
    "gateway": ROOT / "gateway" / "gateway.toml.sample",
    "scenario": SCENARIO_DIR / "sensor-faults.toml",
}
LOADERS: dict[str, Callable[[Path], Any]] = {
    "agent": AgentConfig.load, "gateway": GatewayConfig.load, "scenario": Scenario.load}
BARE = re.compile(r"^[A-Za-z0-9_-]+$")

TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
SCALARS = (st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | TEXT
           | st.sampled_from([0, -1, 1e300, -0.0, "", "/dev/null", "mqtt://", "nan"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)


def toml_key(key: str) -> str:
    return key if BARE.match(key) else json.dumps(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") \
            if math.isinf(value) else repr(value)
    if isinstance(value, (int, str)):
        return json.dumps(value) if isinstance(value, str) else str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_text(doc: dict[str, Any]) -> str:
    """A minimal TOML writer: top-level keys, tables, and arrays of tables."""
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not _tables(v)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{toml_key(k)}]")
            lines += [f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
        elif _tables(v):
            for item in v:
                lines.append(f"[[{toml_key(k)}]]")
                lines += [f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"


def _tables(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(i, dict) for i in v)


def load_text(which: str, text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz-{which}.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            LOADERS[which](path)
        except ConfigError:
            pass


@st.composite
def mutated(draw: st.DrawFn, which: str) -> str:
    """The sample config with one key (in a table, or new) set to a random value, or
    removed, or one table replaced by a scalar."""
    doc = read_toml(SAMPLES[which])
    tables = [k for k, v in doc.items() if isinstance(v, dict)]
    how = draw(st.sampled_from(["set", "new", "drop", "table"]))
    name = draw(st.sampled_from(tables)) if tables else None
    if how == "table" and name:
        doc[name] = draw(SCALARS)
    elif name and doc[name] and how in ("set", "drop"):
        key = draw(st.sampled_from(sorted(doc[name])))
        if how == "drop":
            del doc[name][key]
        else:
            doc[name][key] = draw(VALUES)
    else:
        target = doc[name] if name else doc
        target[draw(TEXT.filter(bool))] = draw(VALUES)
    return toml_text(doc)


def test_the_samples_load() -> None:
    for which, path in SAMPLES.items():
        assert LOADERS[which](path) is not None, which


@pytest.mark.parametrize("which", sorted(LOADERS))
@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_mutated_config_loads_or_raises_config_error(which: str, data: st.DataObject) -> None:
    load_text(which, data.draw(mutated(which)))


@pytest.mark.parametrize("which", sorted(LOADERS))
@settings(max_examples=60, deadline=None)
@given(text=st.text(st.characters(codec="utf-8"), max_size=200)
       | st.dictionaries(TEXT, VALUES, max_size=4).map(toml_text))
def test_random_toml_text_loads_or_raises_config_error(which: str, text: str) -> None:
    load_text(which, text)


@pytest.mark.parametrize("which", sorted(LOADERS))
def test_missing_file_or_directory_raises_config_error(which: str, tmp_path: Path) -> None:
    for path in (tmp_path / "missing.toml", tmp_path):
        with pytest.raises(ConfigError):
            LOADERS[which](path)


@pytest.mark.parametrize("which", sorted(LOADERS))
def test_non_utf8_file_raises_config_error(which: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe\x00 not utf-8 [[[")
    with pytest.raises(ConfigError):
        LOADERS[which](bad)
