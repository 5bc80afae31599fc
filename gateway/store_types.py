"""Row and result types of the gateway store (see :mod:`gateway.store`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from foreshock.messages import Record


@dataclass(frozen=True)
class StoreResult:
    """What one batch did to the store."""

    inserted: int
    duplicates: int
    new_alerts: tuple[Record, ...] = ()
    opened_gaps: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class StoredRecord:
    site: str
    device: str
    boot_id: str
    seq: int
    kind: str
    ts: float
    received_ts: float
    body: dict[str, Any]


@dataclass(frozen=True)
class Gap:
    site: str
    device: str
    boot_id: str
    first_seq: int
    last_seq: int
    detected_ts: float

    @property
    def missing(self) -> int:
        return self.last_seq - self.first_seq + 1


@dataclass(frozen=True)
class DeviceInfo:
    """One row of the fleet registry. ``None`` means not reported yet."""

    site: str
    device: str
    online: bool | None = None
    boot_id: str | None = None
    state_ts: float | None = None
    last_seen_ts: float | None = None
    agent_version: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    outbox_depth: int | None = None
    health_ts: float | None = None
    last_alert_ts: float | None = None
    last_alert_incident: str | None = None
    last_alert_status: str | None = None
    last_alert_severity: str | None = None
    data_quality: str | None = None
    data_quality_ts: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutRow:
    rollout_id: str
    bundle_name: str
    bundle_version: str
    target: str
    canary: int
    abort_on_pct: float
    state: str
    created_ts: float
    updated_ts: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutDevice:
    rollout_id: str
    site: str
    device: str
    status: str
    detail: dict[str, Any]
    updated_ts: float
    bundle_version: str
