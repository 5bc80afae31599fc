"""Fleet-registry updates derived from records, and the upsert that applies them.

Each group of device columns has a timestamp that guards it: a late record (a backlog
replayed after an outage) never overwrites a newer value. ``last_seen_ts`` is the
gateway's receive time and only moves forward. State fields (online, boot, versions) are
applied in arrival order by :meth:`gateway.store.Store.store_state`.

Where the values come from (docs/gateway.md):

- ``outbox_depth``: the first of health body ``outbox_depth``, ``counters.outbox_depth``,
  ``gauges.outbox_depth``, ``outbox``; each a number, ``{"depth": n}`` or per-class
  ``{kind: n}`` / ``{kind: {"rows": n, ...}}`` (summed over classes).
- last alert: the newest alert record's ``incident``, ``status`` and ``severity``.
- ``data_quality``: the newest ``data_quality`` event's ``detail.state`` (or
  ``detail.status``; ``"issue"`` when neither is given).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foreshock.messages import Batch, Record

GUARDS = {
    "outbox_depth": "health_ts", "health_ts": "health_ts",
    "last_alert_ts": "last_alert_ts", "last_alert_incident": "last_alert_ts",
    "last_alert_status": "last_alert_ts", "last_alert_severity": "last_alert_ts",
    "data_quality": "data_quality_ts", "data_quality_ts": "data_quality_ts",
}


@dataclass(frozen=True)
class DeviceUpdates:
    site: str
    device: str
    seen_ts: float
    values: dict[str, Any]


def device_updates(batch: Batch, fresh: list[Record], received_ts: float) -> DeviceUpdates:
    """Registry columns to update for the newly stored records ``fresh`` of ``batch``."""
    values: dict[str, Any] = {}
    if fresh and batch.kind == "health":
        newest = max(fresh, key=lambda r: r.ts)
        values["health_ts"] = newest.ts
        depth = outbox_depth(newest.body)
        if depth is not None:
            values["outbox_depth"] = depth
    elif fresh and batch.kind == "alert":
        newest = max(fresh, key=lambda r: r.ts)
        values.update(last_alert_ts=newest.ts, last_alert_incident=newest.body["incident"],
                      last_alert_status=newest.body["status"],
                      last_alert_severity=newest.body["severity"])
    elif fresh and batch.kind == "event":
        quality = [r for r in fresh if r.body.get("type") == "data_quality"]
        if quality:
            newest = max(quality, key=lambda r: r.ts)
            detail = newest.body.get("detail") or {}
            state = detail.get("state") or detail.get("status") or "issue"
            values.update(data_quality=str(state), data_quality_ts=newest.ts)
    return DeviceUpdates(batch.site, batch.device, received_ts, values)


def outbox_depth(body: dict[str, Any]) -> int | None:
    """The outbox depth (rows waiting, all classes) a health record reports, if any."""
    counters = body.get("counters") if isinstance(body.get("counters"), dict) else {}
    gauges = body.get("gauges") if isinstance(body.get("gauges"), dict) else {}
    for value in (body.get("outbox_depth"), (counters or {}).get("outbox_depth"),
                  (gauges or {}).get("outbox_depth"), body.get("outbox")):
        depth = _depth(value)
        if depth is not None:
            return depth
    return None


def _depth(value: Any) -> int | None:
    """A number, ``{"depth": n}``, or per-class ``{kind: n | {"rows": n}}`` summed."""
    if _is_number(value):
        return int(value)
    if not isinstance(value, dict):
        return None
    if _is_number(value.get("depth")):
        return int(value["depth"])
    rows = [v.get("rows") if isinstance(v, dict) else v for v in value.values()]
    numbers = [int(v) for v in rows if isinstance(v, (int, float)) and _is_number(v)]
    return sum(numbers) if numbers else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def upsert_device_sql(updates: DeviceUpdates) -> tuple[str, list[Any]]:
    """An ``INSERT ... ON CONFLICT DO UPDATE`` for one device, with ``?`` placeholders."""
    cols = ["site", "device", "last_seen_ts", *updates.values]
    params = [updates.site, updates.device, updates.seen_ts, *updates.values.values()]
    sets = ["last_seen_ts = {greatest}(COALESCE(devices.last_seen_ts, 0), "
            "excluded.last_seen_ts)"]
    for col in updates.values:
        guard = GUARDS.get(col)
        if guard:
            sets.append(f"{col} = CASE WHEN excluded.{guard} >= COALESCE(devices.{guard}, "
                        f"excluded.{guard}) THEN excluded.{col} ELSE devices.{col} END")
        else:
            sets.append(f"{col} = excluded.{col}")
    marks = ", ".join("?" * len(cols))
    sql = (f"INSERT INTO devices ({', '.join(cols)}) VALUES ({marks}) "
           f"ON CONFLICT (site, device) DO UPDATE SET {', '.join(sets)}")
    return sql, params
