"""What the outbox is configured with and reports: :class:`OutboxConfig` (byte budgets,
TTLs and policies per record class), :class:`Depth`, and the class names and sizes every
part of the outbox shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from foreshock.errors import OutboxError
from foreshock.topics import RECORD_KINDS

KINDS: Final = RECORD_KINDS
DRAIN_ORDER: Final = ("alert", "event", "health", "telemetry")
COUNTER_NAMES: Final = ("written", "acked", "dropped_by_policy", "expired")
RECORD_OVERHEAD_BYTES: Final = 64  # {"seq":..,"ts":..,"body":} in a batch; kind, boot id
MIB: Final = 1024 * 1024
DAY_S: Final = 86_400.0


@dataclass(frozen=True)
class OutboxConfig:
    """Byte budgets and TTLs per class, sized so a week offline at default rates fits.

    Default rates assumed: telemetry 4 channels x 1 record/s at about 300 stored bytes
    (body ~240 B + 64 B overhead): 4 x 604,800 s x 300 B = 726 MB per week < 1024 MiB.
    Health every 60 s at ~1.5 kB: 10,080 x 1.5 kB = 15 MB < 32 MiB. Events and alerts
    are rare (a few hundred per week at ~2 kB, under 1 MB); 64 MiB each leaves room for a
    storm. TTLs (14 days, events 30) exceed the week, so the week is kept whole. The file
    holds about 1.2x the logical bytes in pages; ``max_file_bytes`` (2 GiB) caps it.
    """

    alert_budget_bytes: int = 64 * MIB
    event_budget_bytes: int = 64 * MIB
    health_budget_bytes: int = 32 * MIB
    telemetry_budget_bytes: int = 1024 * MIB
    event_ttl_s: float = 30 * DAY_S
    health_ttl_s: float = 14 * DAY_S
    telemetry_ttl_s: float = 14 * DAY_S
    telemetry_policy: Literal["downsample", "drop_oldest"] = "downsample"
    max_record_bytes: int = 256 * 1024
    max_file_bytes: int = 2048 * MIB
    housekeeping_interval_s: float = 60.0
    check_on_open: bool = True

    def __post_init__(self) -> None:
        for kind in KINDS:
            if self.budget_bytes(kind) <= 0:
                raise OutboxError(f"outbox {kind}_budget_bytes must be > 0")
        if self.telemetry_policy not in ("downsample", "drop_oldest"):
            raise OutboxError(f"outbox telemetry_policy {self.telemetry_policy!r} is not "
                              "'downsample' or 'drop_oldest'")

    def budget_bytes(self, kind: str) -> int:
        return int(getattr(self, f"{kind}_budget_bytes"))

    def ttl_s(self, kind: str) -> float | None:
        """Seconds a record of ``kind`` may wait; ``None`` for alerts (never expire)."""
        return None if kind == "alert" else float(getattr(self, f"{kind}_ttl_s"))


@dataclass(frozen=True)
class Depth:
    """What one class holds: rows and logical bytes (body + per-record overhead)."""

    rows: int
    size_bytes: int
