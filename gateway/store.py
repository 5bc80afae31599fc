"""The gateway's telemetry store: one interface, SQLite (default) and PostgreSQL behind it.

``open_store(url)`` takes ``sqlite:///path/to/file.db`` (or a bare path; add
``?synchronous=NORMAL`` to skip the per-commit fsync) or
``postgresql://user@host/db`` (also a libpq ``key=value`` string). Both backends run the same
SQL and the same migrations (:mod:`gateway.schema`) and pass the same contract suite.

Each write method runs in its own transaction, unless the calling thread holds a
:meth:`Store.group`: then the writes join the group's one transaction, committed (or rolled
back) when the group ends (the gateway stores many MQTT messages per commit). Duplicates
are dropped by the database itself: ``INSERT ... ON CONFLICT DO NOTHING RETURNING seq`` on
the unique key ``(device, boot_id, seq)``, so two gateway instances racing on the same
records still store each once and each count what they inserted. Reads serve the fleet
view and exports. Failures raise :class:`~foreshock.errors.StoreError`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from foreshock.errors import StoreError
from foreshock.messages import Batch, Record
from gateway import gaps as gapmath
from gateway.schema import LATEST_VERSION, MIGRATIONS, MIGRATIONS_TABLE
from gateway.store_sql import DeviceUpdates, device_updates, upsert_device_sql
from gateway.store_tx import RecordRefused, Transactions
from gateway.store_types import (
    DeviceInfo,
    Gap,
    RolloutDevice,
    RolloutRow,
    StoredRecord,
    StoreResult,
)

__all__ = ["DeviceInfo", "Gap", "RecordRefused", "RolloutDevice", "RolloutRow", "Store",
           "StoreResult", "StoredRecord", "open_store"]

log = logging.getLogger(__name__)
INSERT_CHUNK = 500  # rows per INSERT statement: under SQLite's and PostgreSQL's bind limits


@dataclass(frozen=True)
class Dialect:
    name: str
    placeholder: str
    id_column: str
    json_type: str
    real_type: str
    lock_suffix: str
    greatest: str

    def sql(self, text: str) -> str:
        filled = text.replace("{id}", self.id_column).replace("{json}", self.json_type)
        filled = filled.replace("{real}", self.real_type).replace("{greatest}", self.greatest)
        return filled.replace("?", self.placeholder)


SQLITE = Dialect("sqlite", "?", "INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT", "REAL", "",
                 "max")
POSTGRES = Dialect("postgresql", "%s", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
                   "JSONB", "DOUBLE PRECISION", " FOR UPDATE", "GREATEST")


class Store(Transactions):
    """The store interface. Subclasses provide a connection and a transaction
    (:class:`gateway.store_tx.Transactions`)."""

    dialect: Dialect = SQLITE

    def _json(self, value: Any) -> Any:
        return _json_text(value)

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # --- helpers -------------------------------------------------------------------------
    def _exec(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; fetch rows only from SELECT and RETURNING (so a pipelined
        backend sends the other statements without waiting for them)."""
        cur.execute(self.dialect.sql(sql), tuple(params))
        if "RETURNING" in sql or sql.lstrip().upper().startswith("SELECT"):
            return list(cur.fetchall())
        return []

    def _batch_tx(self) -> AbstractContextManager[Any]:
        """The transaction of :meth:`store_batch`; PostgreSQL pipelines it."""
        return self._tx()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._tx() as cur:
            return self._exec(cur, sql, params)

    def migrate(self) -> int:
        """Apply missing migrations; return the schema version."""
        with self._tx() as cur:
            self._exec(cur, MIGRATIONS_TABLE)
        for version, statements in MIGRATIONS:
            with self._tx() as cur:
                done = self._exec(cur, "SELECT 1 FROM schema_migrations WHERE version = ?",
                                  (version,))
                if done:
                    continue
                for statement in statements:
                    self._exec(cur, statement)
                self._exec(cur, "INSERT INTO schema_migrations (version, applied_ts) "
                           "VALUES (?, ?)", (version, _now()))
                log.info("store schema migrated to version %d", version)
        return self.schema_version()

    def schema_version(self) -> int:
        rows = self._query("SELECT max(version) FROM schema_migrations")
        return int(rows[0][0] or 0)

    # --- writes --------------------------------------------------------------------------
    def store_batch(self, batch: Batch, received_ts: float) -> StoreResult:
        """Store a validated batch in one transaction; duplicates are dropped and counted."""
        try:
            with self._batch_tx() as cur:
                inserted = self._insert_records(cur, batch, received_ts)
                fresh = [r for r in batch.records if r.seq in inserted]
                opened = self._update_gaps(cur, batch, sorted(inserted), received_ts)
                if batch.kind == "alert" and fresh:
                    self._insert_alerts(cur, batch, fresh, received_ts)
                self._upsert_device(cur, device_updates(batch, fresh, received_ts))
        except StoreError:
            raise
        except Exception as exc:
            error = RecordRefused if self._refuses(exc) else StoreError
            raise error(f"cannot store batch from {batch.device}: {exc}") from exc
        alerts = tuple(fresh) if batch.kind == "alert" else ()
        return StoreResult(len(inserted), len(batch.records) - len(inserted), alerts, opened)

    def _insert_records(self, cur: Any, batch: Batch, received_ts: float) -> set[int]:
        inserted: set[int] = set()
        cols = "(site, device, boot_id, seq, kind, ts, received_ts, body)"
        for start in range(0, len(batch.records), INSERT_CHUNK):
            chunk = batch.records[start:start + INSERT_CHUNK]
            params: list[Any] = []
            for r in chunk:
                params += [batch.site, batch.device, batch.boot_id, r.seq, batch.kind, r.ts,
                           received_ts, self._json(r.body)]
            values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
            rows = self._exec(cur, f"INSERT INTO records {cols} VALUES {values} "
                              "ON CONFLICT (device, boot_id, seq) DO NOTHING RETURNING seq",
                              params)
            inserted.update(int(row[0]) for row in rows)
        return inserted

    def _update_gaps(self, cur: Any, batch: Batch, seqs: list[int],
                     received_ts: float) -> tuple[tuple[int, int], ...]:
        """Move the boot's bounds and open gaps; the upsert locks the boot row."""
        key = (batch.device, batch.boot_id)
        first, top, n_gaps = self._exec(
            cur, "INSERT INTO boots (site, device, boot_id, first_seen_ts, last_seen_ts) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device, boot_id) DO UPDATE SET "
            "last_seen_ts = excluded.last_seen_ts RETURNING first_seq, max_seq, gap_count",
            (batch.site, *key, received_ts, received_ts))[0]
        if not seqs:
            return ()
        start = seqs[0] if top is None else top + 1
        if not n_gaps and seqs[0] == start and seqs[-1] == start + len(seqs) - 1:
            # the common case: records arrive in order with nothing missing
            self._exec(cur, "UPDATE boots SET first_seq = ?, max_seq = ? WHERE device = ? "
                       "AND boot_id = ?", (seqs[0] if first is None else first, seqs[-1], *key))
            return ()
        old = [(int(a), int(b), float(t)) for a, b, t in self._exec(
            cur, "SELECT first_seq, last_seq, detected_ts FROM gaps WHERE device = ? "
            "AND boot_id = ?", key)]
        upd = gapmath.update(first, top, [(a, b) for a, b, _ in old], seqs)
        self._exec(cur, "UPDATE boots SET first_seq = ?, max_seq = ?, gap_count = ? "
                   "WHERE device = ? AND boot_id = ?",
                   (upd.first_seq, upd.max_seq, len(upd.gaps), *key))
        if set(upd.gaps) != {(a, b) for a, b, _ in old}:
            self._exec(cur, "DELETE FROM gaps WHERE device = ? AND boot_id = ?", key)
            for a, b in upd.gaps:
                detected = gapmath.origin((a, b), old) or received_ts
                self._exec(cur, "INSERT INTO gaps (site, device, boot_id, first_seq, last_seq, "
                           "detected_ts) VALUES (?, ?, ?, ?, ?, ?)",
                           (batch.site, *key, a, b, detected))
        return upd.opened

    def _insert_alerts(self, cur: Any, batch: Batch, fresh: list[Record],
                       received_ts: float) -> None:
        for r in fresh:
            b = r.body
            self._exec(cur, "INSERT INTO alerts (site, device, boot_id, seq, ts, received_ts, "
                       "incident, status, severity, channel, anomaly_score, threshold, fault, "
                       "zone, explanation, model) VALUES "
                       "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                       "ON CONFLICT (device, boot_id, seq) DO NOTHING",
                       (batch.site, batch.device, batch.boot_id, r.seq, r.ts, received_ts,
                        b["incident"], b["status"], b["severity"], b["channel"],
                        b["anomaly_score"], b["threshold"], b["fault"], b["zone"],
                        self._json(b["explanation"]), self._json(b["model"])))

    def _upsert_device(self, cur: Any, updates: DeviceUpdates) -> None:
        sql, params = upsert_device_sql(updates)
        self._exec(cur, sql, params)

    def store_state(self, state: dict[str, Any], received_ts: float) -> None:
        """Apply a decoded ``state`` message (birth or last will) to the fleet registry.

        A stale last will (offline for an older boot while a newer boot is online) is
        ignored, because shared subscriptions do not order messages across instances.
        """
        site, device = str(state.get("site", "")), str(state["device"])
        model = state.get("model") if isinstance(state.get("model"), dict) else {}
        with self._tx() as cur:
            rows = self._exec(cur, "SELECT online, boot_id, state_ts FROM devices WHERE "
                              "site = ? AND device = ?", (site, device))
            if rows and not state["online"] and rows[0][0] and rows[0][1] != state["boot_id"] \
                    and float(rows[0][2] or 0) > float(state["ts"]):
                log.info("ignoring stale offline state of %s boot %s", device, state["boot_id"])
                return
            updates = DeviceUpdates(site, device, received_ts, {
                "online": bool(state["online"]), "boot_id": str(state["boot_id"]),
                "state_ts": float(state["ts"]),
                "agent_version": state.get("agent_version"),
                "model_name": (model or {}).get("name"),
                "model_version": (model or {}).get("version")})
            self._upsert_device(cur, updates)

    # --- reads ---------------------------------------------------------------------------
    def devices(self, site: str | None = None) -> list[DeviceInfo]:
        names = [f.name for f in DeviceInfo.__dataclass_fields__.values() if f.name != "extra"]
        where, params = (" WHERE site = ?", [site]) if site else ("", [])
        rows = self._query(f"SELECT {', '.join(names)} FROM devices{where} "
                           "ORDER BY site, device", params)
        out = []
        for row in rows:
            values = dict(zip(names, row, strict=True))
            if values["online"] is not None:
                values["online"] = bool(values["online"])
            out.append(DeviceInfo(**values))
        return out

    def records(self, device: str | None = None, kind: str | None = None,
                since: float | None = None, until: float | None = None,
                limit: int | None = None) -> list[StoredRecord]:
        """Stored records ordered by device time, filtered by device, kind and ts range."""
        where, params = _filters(device=device, kind=kind, since=since, until=until)
        tail = f" LIMIT {int(limit)}" if limit else ""
        rows = self._query("SELECT site, device, boot_id, seq, kind, ts, received_ts, body "
                           f"FROM records{where} ORDER BY ts, device, boot_id, seq{tail}",
                           params)
        return [StoredRecord(row[0], row[1], row[2], int(row[3]), row[4], float(row[5]),
                             float(row[6]), _obj(row[7])) for row in rows]

    def alerts(self, device: str | None = None, since: float | None = None,
               until: float | None = None) -> list[dict[str, Any]]:
        """Stored alerts (one dict per alert record, explanation included), oldest first."""
        cols = ("site", "device", "boot_id", "seq", "ts", "received_ts", "incident", "status",
                "severity", "channel", "anomaly_score", "threshold", "fault", "zone",
                "explanation", "model")
        where, params = _filters(device=device, since=since, until=until)
        rows = self._query(f"SELECT {', '.join(cols)} FROM alerts{where} ORDER BY ts, seq",
                           params)
        out = [dict(zip(cols, row, strict=True)) for row in rows]
        for a in out:
            a["explanation"], a["model"] = _obj(a["explanation"]), _obj(a["model"])
        return out

    def gaps(self, device: str | None = None) -> list[Gap]:
        where, params = _filters(device=device)
        rows = self._query("SELECT site, device, boot_id, first_seq, last_seq, detected_ts "
                           f"FROM gaps{where} ORDER BY device, boot_id, first_seq", params)
        return [Gap(*row) for row in rows]

    # --- rollouts ------------------------------------------------------------------------
    def save_rollout(self, rollout: RolloutRow) -> None:
        """Insert or update a rollout (bundle, target, canary, threshold, state)."""
        r = rollout
        with self._tx() as cur:
            self._exec(cur, "INSERT INTO rollouts (rollout_id, bundle_name, bundle_version, "
                       "target, canary, abort_on_pct, state, created_ts, updated_ts, detail) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rollout_id) DO "
                       "UPDATE SET state = excluded.state, updated_ts = excluded.updated_ts, "
                       "detail = excluded.detail",
                       (r.rollout_id, r.bundle_name, r.bundle_version, r.target, r.canary,
                        r.abort_on_pct, r.state, r.created_ts, r.updated_ts,
                        self._json(r.detail)))

    def rollouts(self) -> list[RolloutRow]:
        rows = self._query("SELECT rollout_id, bundle_name, bundle_version, target, canary, "
                           "abort_on_pct, state, created_ts, updated_ts, detail FROM rollouts "
                           "ORDER BY created_ts")
        return [RolloutRow(row[0], row[1], row[2], row[3], int(row[4]), float(row[5]), row[6],
                           float(row[7]), float(row[8]), _obj(row[9])) for row in rows]

    def set_rollout_device(self, rollout_id: str, site: str, device: str, status: str,
                           detail: dict[str, Any], ts: float) -> None:
        with self._tx() as cur:
            self._exec(cur, "INSERT INTO rollout_devices (rollout_id, site, device, status, "
                       "detail, updated_ts) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rollout_id, "
                       "site, device) DO UPDATE SET status = excluded.status, "
                       "detail = excluded.detail, updated_ts = excluded.updated_ts",
                       (rollout_id, site, device, status, self._json(detail), ts))

    def rollout_devices(self, rollout_id: str | None = None) -> list[RolloutDevice]:
        """Per-device rollout status, oldest update first (all rollouts when no id)."""
        where, params = (" WHERE d.rollout_id = ?", [rollout_id]) if rollout_id else ("", [])
        rows = self._query("SELECT d.rollout_id, d.site, d.device, d.status, d.detail, "
                           "d.updated_ts, r.bundle_version FROM rollout_devices d JOIN "
                           f"rollouts r ON r.rollout_id = d.rollout_id{where} "
                           "ORDER BY d.updated_ts", params)
        return [RolloutDevice(row[0], row[1], row[2], row[3], _obj(row[4]), float(row[5]),
                              row[6]) for row in rows]

    def count(self, table: str = "records") -> int:
        if table not in ("records", "alerts", "gaps", "devices", "boots"):
            raise ValueError(f"unknown table {table!r}")
        return int(self._query(f"SELECT count(*) FROM {table}")[0][0])


def _json_text(value: Any) -> str:
    """Compact JSON text; a non-finite number is the message's fault: RecordRefused."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise RecordRefused(f"not storable as JSON: {exc}") from None


def _filters(**kw: Any) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for key, value in kw.items():
        if value is None:
            continue
        op = {"since": "ts >= ?", "until": "ts < ?"}.get(key, f"{key} = ?")
        clauses.append(op)
        params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _obj(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _now() -> float:
    return time.time()


def _sqlite_options(query: str) -> dict[str, str]:
    """``?synchronous=NORMAL`` trades power-loss durability of the last commits for speed."""
    options = dict(part.partition("=")[::2] for part in query.split("&") if part)
    unknown = set(options) - {"synchronous"}
    if unknown:
        raise StoreError(f"unknown SQLite store option {sorted(unknown)[0]!r}; "
                         "allowed: synchronous")
    return options


def open_store(url: str) -> Store:
    """Open (and migrate) the store at ``url``; raises StoreError naming the problem."""
    from gateway.store_backends import PostgresStore, SqliteStore

    if url.startswith(("postgresql://", "postgres://")) or "dbname=" in url:
        store: Store = PostgresStore(url)
    elif url.startswith("sqlite:///"):
        path, _, query = url.removeprefix("sqlite:///").partition("?")
        store = SqliteStore(path, **_sqlite_options(query))
    elif url.startswith("sqlite:") or "://" in url:
        raise StoreError(f"store url {url!r} is not supported",
                         hint="use sqlite:///path/to/gateway.db or postgresql://user@host/db")
    else:
        store = SqliteStore(url)
    if store.migrate() != LATEST_VERSION:
        raise StoreError(f"store {url} schema is newer than this gateway understands")
    return store
