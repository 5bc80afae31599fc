"""The ``agent.toml`` provisioning writes: the keys it owns merged into whatever the file
already holds, and a minimal TOML writer for it."""

from __future__ import annotations

from typing import Any, Final

from agent.provision.request import CA_CERT, CERT, KEY, MODEL_KEY, STATE_DIR, Request, parse_source

CONFIG_HEADER: Final = ("# Foreshock agent configuration (docs/config.md). Written by "
                        "`foreshock device provision`;\n# a re-run updates only [device], "
                        "[link] broker/TLS and [model] trusted_keys.\n\n")
DEFAULT_SOURCE: Final = "serial:/dev/ttyUSB0"


def merge_config(current: dict[str, Any], req: Request) -> dict[str, Any]:
    """``current`` with the keys provisioning owns set; everything else kept."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in current.items()}
    merged.setdefault("device", {}).update(device_id=req.device_id, site=req.site)
    merged.setdefault("link", {}).update(
        broker_url=req.broker_url, tls_ca_path=req.config_path(CA_CERT),
        tls_cert_path=req.config_path(CERT), tls_key_path=req.config_path(KEY))
    model = merged.setdefault("model", {})
    keys = list(model.get("trusted_keys", []))
    model_key = req.config_path(MODEL_KEY)
    model["trusted_keys"] = keys if model_key in keys else [*keys, model_key]
    merged.setdefault("service", {}).setdefault("state_dir", req.config_path(STATE_DIR))
    if req.source is not None or "source" not in merged:
        merged["source"] = parse_source(req.source or DEFAULT_SOURCE)
    return merged


def dump_toml(table: dict[str, Any], prefix: str = "") -> str:
    """Minimal TOML writer for config tables: scalars, lists and nested tables."""
    simple = {k: v for k, v in table.items() if not isinstance(v, dict)}
    nested = {k: v for k, v in table.items() if isinstance(v, dict)}
    out = [f"[{prefix}]"] if prefix and (simple or not nested) else []
    out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in simple.items()]
    text = "\n".join(out) + ("\n\n" if out else "")
    for k, v in nested.items():
        text += dump_toml(v, f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k))
    return text


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))

