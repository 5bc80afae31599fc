"""Durable store-and-forward outbox: one SQLite file in WAL mode (policies: docs/outbox.md).

Records of four classes (alert, event, health, telemetry) wait here until the broker has
acknowledged them. Every record gets ``seq``, the file's AUTOINCREMENT row id: strictly
increasing and never reused, so ``(device, boot_id, seq)`` names a record for ever. The row
id is also what :meth:`Outbox.ack` takes; nothing is ever acknowledged by time.

Durability: every write commits with ``synchronous=FULL``, so the WAL is fsynced before
:meth:`Outbox.put` returns a seq (an alert the caller holds a seq for survives ``kill -9``
and power loss) and once per :meth:`Outbox.put_many` batch. Acks commit without fsync: a
lost ack only means a resend.

Policy when a class goes over its byte budget (accept or evict, always counted):

* ``alert``: never evicted, never expired. Over budget is only logged.
* ``event``, ``health``: the oldest rows are dropped down to 90 % of the budget.
* ``telemetry``: ``downsample`` (default) deletes every other row of the oldest half until
  the class is under 90 % of its budget, so a long outage keeps a thinned history instead
  of a hole; ``drop_oldest`` deletes the oldest rows instead.

A corrupt file is moved aside as ``<name>.corrupt-<UTC time>`` (kept for salvage) and a
fresh file is started whose seq begins above the current Unix time in microseconds, so no
seq can repeat one already sent. :attr:`Outbox.recovered` and the persistent
``corrupt_recovered`` counter tell the agent to publish an ``outbox`` event. When the file
(``max_file_bytes``) or the disk is full, a write first gives up the oldest telemetry; only
then, and on any other I/O error, it raises :class:`OutboxError`.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import sqlite_utils

from foreshock.errors import MessageError, OutboxError
from foreshock.messages import Record, dumps, validate_record
from foreshock.topics import RECORD_KINDS

log = logging.getLogger(__name__)

KINDS: Final = RECORD_KINDS
DRAIN_ORDER: Final = ("alert", "event", "health", "telemetry")
COUNTER_NAMES: Final = ("written", "acked", "dropped_by_policy", "expired")
RECORD_OVERHEAD_BYTES: Final = 64  # {"seq":..,"ts":..,"body":} in a batch; kind, boot id
MIB: Final = 1024 * 1024
DAY_S: Final = 86_400.0
EXPIRE_CHUNK: Final = 2000

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    ts REAL NOT NULL,
    nbytes INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_kind ON records(kind);
CREATE TABLE IF NOT EXISTS counters (
    kind TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;
"""
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
BUMP: Final = ("INSERT INTO counters (kind, name, value) VALUES (?, ?, ?) "
               "ON CONFLICT (kind, name) DO UPDATE SET value = value + excluded.value")


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


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return type(exc) is sqlite3.DatabaseError or "malformed" in text or "not a database" in text


class Outbox:
    """SQLite outbox of one device; thread-safe (one connection behind a lock)."""

    def __init__(self, path: str | Path, config: OutboxConfig | None = None, *,
                 boot_id: str | None = None) -> None:
        self.path = Path(path)
        self.config = config or OutboxConfig()
        self.boot_id = boot_id or uuid.uuid4().hex
        self.recovered: list[Path] = []
        self._lock = threading.RLock()
        self._depth: dict[str, list[int]] = {k: [0, 0] for k in KINDS}
        self._last_housekeeping = time.monotonic()
        self._conn = self._open()

    # -- opening, corruption ---------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except OSError as exc:
            raise OutboxError(f"outbox {self.path}: cannot open: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise OutboxError(f"outbox {self.path}: cannot open: {exc}") from exc
            return self._start_fresh(str(exc))

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            db = sqlite_utils.Database(conn)
            db.enable_wal()
            conn.execute("PRAGMA synchronous=FULL")
            if self.config.check_on_open:
                result = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
                if result != "ok":
                    raise sqlite3.DatabaseError(f"quick_check: {result}")
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={self.config.max_file_bytes // page_size}")
            conn.executescript(SCHEMA)
            self._load_depth(conn)
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def _load_depth(self, conn: sqlite3.Connection) -> None:
        self._depth = {k: [0, 0] for k in KINDS}
        for kind, rows, size in conn.execute(
                "SELECT kind, count(*), coalesce(sum(nbytes), 0) FROM records GROUP BY kind"):
            if kind in self._depth:
                self._depth[kind] = [int(rows), int(size)]

    def _start_fresh(self, reason: str) -> sqlite3.Connection:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        try:
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.rename(aside.with_name(aside.name + suffix))
            conn = self._connect()
            first_seq = time.time_ns() // 1000
            with self._tx(conn):
                conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('records', ?)",
                             (first_seq,))
                conn.execute(BUMP, ("_outbox", "corrupt_recovered", 1))
        except (OSError, sqlite3.DatabaseError) as exc:
            raise OutboxError(f"outbox {self.path} is corrupt and could not be replaced: "
                              f"{exc}") from exc
        log.error("outbox %s was corrupt (%s); moved aside to %s, started a fresh one",
                  self.path, reason, aside)
        self.recovered.append(aside)
        return conn

    @contextmanager
    def _tx(self, conn: sqlite3.Connection | None = None, *,
            fsync: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``fsync=False`` (acks only) commits without waiting
        for the disk: a lost ack after power loss only means a resend."""
        conn = conn or self._conn
        if not fsync:
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite rolls back by itself on SQLITE_FULL, IOERR
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            if not fsync:
                conn.execute("PRAGMA synchronous=FULL")

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Map SQLite failures to OutboxError; a corrupt file is replaced on the way."""
        with self._lock:
            try:
                yield
            except sqlite3.DatabaseError as exc:
                if _is_corruption(exc):
                    self._conn.close()
                    self._conn = self._start_fresh(str(exc))
                    raise OutboxError(f"outbox {self.path}: {what} failed, file was corrupt "
                                      "and has been replaced", hint="retry") from exc
                raise OutboxError(f"outbox {self.path}: {what} failed: {exc}",
                                  hint="check free disk space and the storage device") from exc

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

    # -- eviction ----------------------------------------------------------------------
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

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError as exc:
                log.warning("outbox %s: checkpoint on close failed: %s", self.path, exc)
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
