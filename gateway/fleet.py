"""Fleet view and analyst exports over the store.

``fleet_rows`` gives one display row per device (registry plus its latest rollout status);
``export`` writes a device's alerts or telemetry in a time range as CSV or Parquet.
Parquet needs ``pyarrow`` (the ``parquet`` extra); without it the export fails with one
:class:`~foreshock.errors.ConfigError` line naming the extra.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from foreshock.errors import ConfigError
from gateway.store import DeviceInfo, Store

FLEET_COLUMNS = ("site", "device", "online", "last_seen", "agent", "model", "outbox",
                 "last_alert", "quality", "rollout")
ExportKind = Literal["alerts", "telemetry"]
ExportFormat = Literal["csv", "parquet"]


def fleet_rows(store: Store, site: str | None = None,
               now: float | None = None) -> list[dict[str, str]]:
    """One row of display strings per device, in FLEET_COLUMNS order."""
    now = time.time() if now is None else now
    rollouts = latest_rollout_status(store)
    return [_row(d, now, rollouts.get((d.site, d.device), "")) for d in store.devices(site)]


def _row(d: DeviceInfo, now: float, rollout: str) -> dict[str, str]:
    online = {True: "online", False: "offline", None: "?"}[d.online]
    model = f"{d.model_name} {d.model_version}" if d.model_name else "-"
    alert = "-"
    if d.last_alert_incident:
        alert = (f"{d.last_alert_severity} {d.last_alert_status} {d.last_alert_incident} "
                 f"({age(now, d.last_alert_ts)} ago)")
    return {
        "site": d.site, "device": d.device, "online": online,
        "last_seen": f"{age(now, d.last_seen_ts)} ago" if d.last_seen_ts else "never",
        "agent": d.agent_version or "-", "model": model,
        "outbox": "-" if d.outbox_depth is None else str(d.outbox_depth),
        "last_alert": alert, "quality": d.data_quality or "-", "rollout": rollout or "-",
    }


FLEET_SCHEMA = "foreshock.fleet/1"


def fleet_summary(store: Store, site: str, now: float | None = None) -> dict[str, Any]:
    """The retained ``_control/fleet`` document (docs/schemas/fleet.json) of one site."""
    now = time.time() if now is None else now
    rollouts = {(r.site, r.device): r for r in store.rollout_devices()}
    devices = []
    for d in store.devices(site):
        r = rollouts.get((d.site, d.device))
        devices.append({
            "device": d.device, "online": d.online, "boot_id": d.boot_id,
            "last_seen_ts": d.last_seen_ts, "agent_version": d.agent_version,
            "model": {"name": d.model_name, "version": d.model_version}
            if d.model_name else None,
            "outbox_depth": d.outbox_depth,
            "last_alert": {"ts": d.last_alert_ts, "incident": d.last_alert_incident,
                           "status": d.last_alert_status, "severity": d.last_alert_severity}
            if d.last_alert_incident else None,
            "data_quality": d.data_quality,
            "rollout": {"rollout_id": r.rollout_id, "version": r.bundle_version,
                        "status": r.status} if r else None,
        })
    return {"schema": FLEET_SCHEMA, "site": site, "ts": now, "devices": devices}


def latest_rollout_status(store: Store) -> dict[tuple[str, str], str]:
    """``(site, device) -> "<bundle version> <status>"`` from the newest rollout row."""
    return {(r.site, r.device): f"{r.bundle_version} {r.status}"
            for r in store.rollout_devices()}


def age(now: float, ts: float | None) -> str:
    if ts is None:
        return "?"
    seconds = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def parse_time(value: str | None, name: str) -> float | None:
    """Unix seconds or ISO 8601 (naive means UTC); ConfigError names the option."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--{name} {value!r} is not a time; use ISO 8601 "
                          "(2026-11-27T08:00:00) or Unix seconds") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def export(store: Store, out: Path, *, device: str, kind: ExportKind, fmt: ExportFormat,
           since: float | None = None, until: float | None = None) -> int:
    """Write the device's records of ``kind`` in [since, until) to ``out``; return rows."""
    if kind not in ("alerts", "telemetry"):
        raise ConfigError(f"--kind {kind!r} is not allowed; use alerts or telemetry")
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"--format {fmt!r} is not allowed; use csv or parquet")
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ConfigError("parquet export needs pyarrow, which is not installed",
                          hint="pip install 'foreshock[parquet]' or use --format csv")
    rows = _alert_rows(store, device, since, until) if kind == "alerts" else \
        _telemetry_rows(store, device, since, until)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        with open(out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    else:
        _write_parquet(out, rows, columns)
    return len(rows)


def _alert_rows(store: Store, device: str, since: float | None,
                until: float | None) -> list[dict[str, Any]]:
    rows = store.alerts(device=device, since=since, until=until)
    for row in rows:
        row["explanation"] = json.dumps(row["explanation"], sort_keys=True)
        row["model"] = json.dumps(row["model"], sort_keys=True)
    return rows


def _telemetry_rows(store: Store, device: str, since: float | None,
                    until: float | None) -> list[dict[str, Any]]:
    out = []
    for r in store.records(device=device, kind="telemetry", since=since, until=until):
        row: dict[str, Any] = {"site": r.site, "device": r.device, "boot_id": r.boot_id,
                               "seq": r.seq, "ts": r.ts, "received_ts": r.received_ts}
        for key, value in r.body.items():
            row[key] = json.dumps(value, sort_keys=True) if isinstance(value,
                                                                       (dict, list)) else value
        out.append(row)
    return out


def _write_parquet(out: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    import pyarrow as pa  # type: ignore[import-not-found,unused-ignore]
    import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]

    table = pa.table({c: [row.get(c) for row in rows] for c in columns})
    pq.write_table(table, out)
