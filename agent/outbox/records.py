"""The outbox's records: :class:`Outbox` stores them (validated, kept as JSON text, fsynced
before a seq is returned), hands out pending ones class by class, boot by boot, and deletes
exactly the acknowledged row ids. The file, transactions and corruption recovery are in
:mod:`agent.outbox.store`; budgets and expiry in :mod:`agent.outbox.retention`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from typing import Any, Final

from foreshock.errors import MessageError, OutboxError
from foreshock.messages import Record, dumps, validate_record

from .config import COUNTER_NAMES, KINDS, RECORD_OVERHEAD_BYTES, Depth
from .retention import OutboxRetention
from .store import BUMP

_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class Outbox(OutboxRetention):
    """SQLite outbox of one device; thread-safe (one connection behind a lock)."""

    # -- writing -----------------------------------------------------------------------
    def _encode(self, kind: str, body: dict[str, Any], ts: float) -> tuple[str, float]:
        if kind not in KINDS:
            raise MessageError(f"unknown record kind {kind!r}; expected one of {KINDS}")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
            raise MessageError(f"{kind} record: ts must be a finite number, got {ts!r}")
        validate_record(kind, {"seq": 0, "ts": ts, "body": body}, f"{kind} record")
        try:
            text = _ENCODER.encode(body)
        except ValueError:  # NaN or inf somewhere: stored as null, and must still be valid
            text = dumps(body).decode()
            validate_record(kind, {"seq": 0, "ts": ts, "body": json.loads(text)},
                            f"{kind} record (non-finite numbers become null)")
        except TypeError as exc:
            raise MessageError(f"{kind} record body is not JSON-serialisable: {exc}") from None
        if len(text) > self.config.max_record_bytes:
            raise MessageError(f"{kind} record body of {len(text)} bytes exceeds "
                               f"max_record_bytes={self.config.max_record_bytes}")
        return text, float(ts)

    def put(self, kind: str, body: dict[str, Any], ts: float) -> int:
        """Store one record; returns its seq once it is fsynced (raises OutboxError)."""
        text, tsf = self._encode(kind, body, ts)
        return self._write(kind, [(kind, self.boot_id, tsf, len(text) + RECORD_OVERHEAD_BYTES,
                                   text)])[0]

    def put_many(self, kind: str, items: Iterable[tuple[dict[str, Any], float]]) -> list[int]:
        """Store ``(body, ts)`` pairs in one fsynced transaction; returns their seqs."""
        rows = []
        for body, ts in items:
            text, tsf = self._encode(kind, body, ts)
            rows.append((kind, self.boot_id, tsf, len(text) + RECORD_OVERHEAD_BYTES, text))
        return self._write(kind, rows) if rows else []

    def put_records(self, items: Iterable[tuple[str, dict[str, Any], float]]) -> list[int]:
        """Store ``(kind, body, ts)`` records of any classes in one fsynced transaction
        (one fsync for a step's alerts, events and telemetry); returns their seqs, in the
        given order. Every record is encoded and checked first: a bad one raises
        :class:`MessageError` and nothing is stored."""
        rows = []
        for kind, body, ts in items:
            text, tsf = self._encode(kind, body, ts)
            rows.append((kind, self.boot_id, tsf, len(text) + RECORD_OVERHEAD_BYTES, text))
        return self._write(rows[0][0], rows) if rows else []

    def _write(self, kind: str, rows: list[tuple[str, str, float, int, str]]) -> list[int]:
        """Insert in one transaction (rows may be of several classes; ``kind`` names the
        write in errors); on a full file make room once, on a replaced corrupt file retry
        once (into the fresh file)."""
        nbytes = sum(r[3] for r in rows)
        kinds = list(dict.fromkeys(r[0] for r in rows))
        with self._lock:
            for attempt in (1, 2):
                recovered = len(self.recovered)
                try:
                    seqs = self._insert(kind, rows)
                    break
                except OutboxError as exc:
                    retry = len(self.recovered) > recovered or (
                        "full" in str(exc) and self._make_room(kind, nbytes))
                    if attempt == 2 or not retry:
                        raise
            for k in kinds:
                if self._depth[k][1] > self.config.budget_bytes(k):
                    self._enforce_budget(k)
            if time.monotonic() - self._last_housekeeping > self.config.housekeeping_interval_s:
                self.expire()
        return seqs

    def _insert(self, kind: str, rows: list[tuple[str, str, float, int, str]]) -> list[int]:
        per_kind: dict[str, list[int]] = {}
        for r in rows:
            per_kind.setdefault(r[0], []).append(r[3])
        with self._guard(f"put {kind}"):
            with self._tx() as conn:
                conn.executemany("INSERT INTO records (kind, boot_id, ts, nbytes, body) "
                                 "VALUES (?, ?, ?, ?, ?)", rows)
                last = int(conn.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()[0])
                for k, sizes in per_kind.items():
                    conn.execute(BUMP, (k, "written", len(sizes)))
            for k, sizes in per_kind.items():
                self._depth[k][0] += len(sizes)
                self._depth[k][1] += sum(sizes)
        return list(range(last - len(rows) + 1, last + 1))

    # -- reading and acknowledging ---------------------------------------------------------
    def _batch_rows(self, kind: str, limit: int, after: int,
                    max_bytes: int | None) -> tuple[str, list[tuple[int, float, str]]]:
        """Oldest rows of one boot after ``after``, within ``max_bytes`` (at least one)."""
        with self._guard(f"pending {kind}"):
            rows = self._conn.execute(
                "SELECT id, boot_id, ts, nbytes, body FROM records WHERE kind = ? AND id > ? "
                "ORDER BY id LIMIT ?", (kind, after, limit)).fetchall()
        out: list[tuple[int, float, str]] = []
        total = 0
        for row_id, boot_id, ts, nbytes, body in rows:
            total += nbytes
            if boot_id != rows[0][1] or (out and max_bytes is not None and total > max_bytes):
                break
            out.append((row_id, ts, body))
        return (rows[0][1] if rows else ""), out

    def pending(self, kind: str, limit: int, *, after: int = 0) -> list[tuple[int, Record]]:
        """Oldest unacknowledged records of ``kind`` (row id > ``after``), any boot."""
        with self._guard(f"pending {kind}"):
            rows = self._conn.execute(
                "SELECT id, ts, body FROM records WHERE kind = ? AND id > ? ORDER BY id "
                "LIMIT ?", (kind, after, limit)).fetchall()
        return [(i, Record(i, ts, json.loads(body))) for i, ts, body in rows]

    def pending_batch(self, kind: str, limit: int, *, after: int = 0,
                      max_bytes: int | None = None) -> tuple[str, list[tuple[int, Record]]]:
        """Like :meth:`pending` but from one boot only and at most ``max_bytes`` (at least
        one record): what fits one :class:`~foreshock.messages.Batch`. Returns the boot id."""
        boot, rows = self._batch_rows(kind, limit, after, max_bytes)
        return boot, [(i, Record(i, ts, json.loads(body))) for i, ts, body in rows]

    def pending_json(self, kind: str, limit: int, *, after: int = 0,
                     max_bytes: int | None = None) -> tuple[str, list[int], str]:
        """:meth:`pending_batch` without decoding: ``(boot_id, row_ids, records)`` where
        ``records`` is the JSON array of ``{"seq", "ts", "body"}`` objects of a Batch,
        built from the stored text (the link's hot path)."""
        boot, rows = self._batch_rows(kind, limit, after, max_bytes)
        records = ",".join(f'{{"seq":{i},"ts":{ts!r},"body":{body}}}' for i, ts, body in rows)
        return boot, [i for i, _, _ in rows], f"[{records}]"

    def ack(self, row_ids: Iterable[int]) -> int:
        """Delete acknowledged rows in one statement; returns how many were still there."""
        ids = [int(i) for i in row_ids]
        if not ids:
            return 0
        with self._guard("ack"), self._tx(fsync=False) as conn:
            deleted = conn.execute(
                "DELETE FROM records WHERE id IN (SELECT value FROM json_each(?)) "
                "RETURNING kind, nbytes", (json.dumps(ids),)).fetchall()
            for kind in KINDS:
                self._removed(conn, kind, "acked", [n for k, n in deleted if k == kind])
        return len(deleted)

    def depth(self) -> dict[str, Depth]:
        with self._lock:
            return {k: Depth(rows, size) for k, (rows, size) in self._depth.items()}

    def counters(self) -> dict[str, dict[str, int]]:
        """Persistent counters per class: written, acked, dropped_by_policy, expired."""
        out = {k: dict.fromkeys(COUNTER_NAMES, 0) for k in KINDS}
        with self._guard("counters"):
            for kind, name, value in self._conn.execute(
                    "SELECT kind, name, value FROM counters WHERE kind != '_outbox'"):
                out.setdefault(kind, {})[name] = int(value)
        return out

    @property
    def corrupt_recovered(self) -> int:
        """How many times this outbox replaced a corrupt file (persists in the new file)."""
        with self._guard("counters"):
            row = self._conn.execute("SELECT value FROM counters WHERE kind = '_outbox' AND "
                                     "name = 'corrupt_recovered'").fetchone()
        return int(row[0]) if row else 0

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
