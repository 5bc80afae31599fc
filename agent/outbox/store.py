"""The outbox's SQLite file: opening it (WAL, ``synchronous=FULL``, integrity check, size
cap, schema), write transactions, the mapping of SQLite failures to :class:`OutboxError`,
and the replacement of a corrupt file (moved aside; the fresh file's seq starts above the
current Unix time in microseconds). :class:`OutboxStore` is the base of
:class:`agent.outbox.Outbox`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import sqlite_utils

from foreshock.errors import OutboxError

from .config import KINDS, OutboxConfig

log = logging.getLogger(__name__)

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
BUMP: Final = ("INSERT INTO counters (kind, name, value) VALUES (?, ?, ?) "
               "ON CONFLICT (kind, name) DO UPDATE SET value = value + excluded.value")


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return type(exc) is sqlite3.DatabaseError or "malformed" in text or "not a database" in text


class OutboxStore:
    """The SQLite file of an outbox, one connection behind a lock; see the module doc."""

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

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError as exc:
                log.warning("outbox %s: checkpoint on close failed: %s", self.path, exc)
            self._conn.close()
