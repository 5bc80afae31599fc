"""What the outbox gives up, always counted: a class over its byte budget (alerts never;
events and health drop their oldest rows; telemetry is downsampled or drops its oldest),
the oldest telemetry when the file is full, and records past their class TTL.
:class:`OutboxRetention` sits between :class:`~agent.outbox.store.OutboxStore` and
:class:`agent.outbox.Outbox`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Final

from .config import KINDS
from .store import BUMP, OutboxStore

log = logging.getLogger(__name__)

EXPIRE_CHUNK: Final = 2000


class OutboxRetention(OutboxStore):
    """Budgets, room when the file is full, and TTL expiry of an outbox."""

    # -- eviction ----------------------------------------------------------------------
    def _make_room(self, kind: str, nbytes: int) -> bool:
        """The file is full: drop the oldest telemetry (a tenth, at least 64 KiB and twice
        what is being written) so the write still fits; never touches alerts."""
        if self._depth["telemetry"][0] == 0:
            return False
        over = max(self._depth["telemetry"][1] // 10, 2 * nbytes, 64 * 1024)
        log.warning("outbox file full: dropping %d bytes of the oldest telemetry for %s",
                    over, kind)
        with self._guard("evict telemetry"):
            self._drop_oldest_bytes("telemetry", over)
        return True

    def _enforce_budget(self, kind: str) -> None:
        budget = self.config.budget_bytes(kind)
        if kind == "alert":
            log.warning("outbox alerts hold %d bytes, over their %d byte budget; alerts are "
                        "never evicted", self._depth[kind][1], budget)
            return
        target = int(budget * 0.9)
        with self._guard(f"evict {kind}"):
            while self._depth[kind][1] > target and self._depth[kind][0] > 0:
                if (kind == "telemetry" and self.config.telemetry_policy == "downsample"
                        and self._depth[kind][0] >= 4):
                    self._downsample(kind)
                else:
                    self._drop_oldest_bytes(kind, self._depth[kind][1] - target)

    def _removed(self, conn: sqlite3.Connection, kind: str, counter: str,
                 sizes: list[int]) -> None:
        if sizes:
            conn.execute(BUMP, (kind, counter, len(sizes)))
            self._depth[kind][0] -= len(sizes)
            self._depth[kind][1] -= sum(sizes)

    def _downsample(self, kind: str) -> None:
        half = self._depth[kind][0] // 2
        with self._tx() as conn:
            sizes = [r[0] for r in conn.execute(
                "WITH old AS (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM records "
                "WHERE kind = ? ORDER BY id LIMIT ?) DELETE FROM records WHERE id IN "
                "(SELECT id FROM old WHERE rn % 2 = 0) RETURNING nbytes", (kind, half))]
            self._removed(conn, kind, "dropped_by_policy", sizes)

    def _drop_oldest_bytes(self, kind: str, over_bytes: int) -> None:
        total, last_id = 0, None
        cur = self._conn.execute("SELECT id, nbytes FROM records WHERE kind = ? ORDER BY id",
                                 (kind,))
        for row_id, nbytes in cur:
            total, last_id = total + nbytes, row_id
            if total >= over_bytes:
                break
        cur.close()
        if last_id is not None:
            with self._tx() as conn:
                sizes = [r[0] for r in conn.execute(
                    "DELETE FROM records WHERE kind = ? AND id <= ? RETURNING nbytes",
                    (kind, last_id))]
                self._removed(conn, kind, "dropped_by_policy", sizes)

    def expire(self, now: float | None = None) -> int:
        """Delete records older than their class TTL (by record ts); alerts never expire.

        Works from the oldest rows forward, ``EXPIRE_CHUNK`` rows at a time, and stops at a
        chunk that is not wholly expired: the cost follows what expires, not the backlog
        (``ts`` grows with ``seq`` as records are written)."""
        now = time.time() if now is None else now
        expired = 0
        with self._guard("expire"):
            self._last_housekeeping = time.monotonic()
            for kind in KINDS:
                ttl = self.config.ttl_s(kind)
                while ttl is not None and self._depth[kind][0] > 0:
                    with self._tx() as conn:
                        sizes = [r[0] for r in conn.execute(
                            "DELETE FROM records WHERE id IN (SELECT id FROM records "
                            "WHERE kind = ? ORDER BY id LIMIT ?) AND ts < ? RETURNING nbytes",
                            (kind, EXPIRE_CHUNK, now - ttl))]
                        self._removed(conn, kind, "expired", sizes)
                    expired += len(sizes)
                    if len(sizes) < EXPIRE_CHUNK:
                        break
        return expired
