"""The two store backends: SQLite in WAL mode through sqlite-utils, and PostgreSQL.

SQLite serialises writers with ``BEGIN IMMEDIATE`` and runs ``synchronous=FULL`` by default so
a commit survives power loss before the gateway acknowledges the MQTT message
(``sqlite:///gw.db?synchronous=NORMAL`` survives process crashes only; with group commit it
gains little, a slow fsync being paid once per group: docs/gateway.md). PostgreSQL
locks the boot row (``SELECT ... FOR UPDATE``) so gap bookkeeping stays exact when several
gateway instances write records of one device at once.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from foreshock.errors import StoreError
from gateway.store import POSTGRES, SQLITE, Store

log = logging.getLogger(__name__)
BUSY_TIMEOUT_MS = 10_000
SYNCHRONOUS = ("FULL", "NORMAL", "EXTRA")


class SqliteStore(Store):
    """A store in one SQLite file (WAL). Safe to call from several threads."""

    dialect = SQLITE

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        super().__init__()
        self.path = Path(path)
        if synchronous.upper() not in SYNCHRONOUS:
            raise StoreError(f"synchronous={synchronous!r} is not allowed; use one of "
                             f"{', '.join(SYNCHRONOUS)}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), isolation_level=None,
                                   check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
            self.db = sqlite_utils.Database(conn)
            self.db.enable_wal()
            conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            conn.execute("PRAGMA foreign_keys=ON")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}",
                             hint="check the path and its permissions") from None
        self.conn = conn

    @contextmanager
    def _begin(self) -> Iterator[Any]:
        cur = self.conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            cur.close()
            raise StoreError(f"SQLite store {self.path} is busy or broken: {exc}") from None
        try:
            yield cur
        except BaseException:
            if self.conn.in_transaction:
                cur.execute("ROLLBACK")
            raise
        else:
            try:
                cur.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
        finally:
            cur.close()

    def _refuses(self, exc: BaseException) -> bool:
        return isinstance(exc, (OverflowError, sqlite3.DataError))

    def journal_mode(self) -> str:
        return str(self.conn.execute("PRAGMA journal_mode").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self.conn.close()


class PostgresStore(Store):
    """A store in a PostgreSQL database (psycopg 3)."""

    dialect = POSTGRES

    def __init__(self, dsn: str) -> None:
        super().__init__()
        try:
            import psycopg
            from psycopg.types.json import Jsonb
        except ImportError:
            raise StoreError("PostgreSQL store needs psycopg",
                             hint="pip install 'foreshock[postgres]'") from None
        self._jsonb = Jsonb
        self._psycopg = psycopg
        self.dsn = dsn
        self.conn = self._connect()

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self.dsn, autocommit=True)
        except self._psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL store: {exc}".strip(),
                             hint="check the postgresql:// url, the server and its "
                                  "pg_hba.conf") from None

    def _live(self) -> Any:
        """The connection, opened again if the server dropped it (restart, failover)."""
        if self.conn.closed or self.conn.broken:
            log.warning("PostgreSQL connection lost; reconnecting")
            self.conn = self._connect()
        return self.conn

    def _refuses(self, exc: BaseException) -> bool:
        # class 22 (data exception): untranslatable character, numeric value out of range
        return isinstance(exc, (OverflowError, self._psycopg.errors.DataError))

    def _json(self, value: Any) -> Any:
        super()._json(value)  # same rule as SQLite: no NaN in stored JSON (RecordRefused)
        return self._jsonb(value)

    @contextmanager
    def _begin(self) -> Iterator[Any]:
        conn = self._live()
        with conn.transaction(), conn.cursor() as cur:
            yield cur

    @contextmanager
    def _begin_group(self) -> Iterator[Any]:
        # pipeline mode: statements whose rows are not needed go out without a round trip
        conn = self._live()
        with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
            yield cur

    @contextmanager
    def _batch_tx(self) -> Iterator[Any]:
        with self._lock:
            if self._group is not None:  # joins the group's (pipelined) transaction
                with self._joined(self._group) as cur:
                    yield cur
                return
            with self._begin_group() as cur:
                yield cur

    def close(self) -> None:
        with self._lock:
            self.conn.close()
