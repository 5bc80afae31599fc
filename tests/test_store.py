"""Store contract suite: the same tests against SQLite (tmp_path) and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreshock.errors import StoreError
from foreshock.messages import Batch, Record
from gateway import gaps as gapmath
from gateway.schema import LATEST_VERSION
from gateway.store import Store, open_store
from gateway.store_backends import SqliteStore

T0 = 1_764_250_000.0


def telemetry(seq: int, score: float = 0.1) -> Record:
    return Record(seq, T0 + seq, {
        "channel": 0, "window_ts": T0 + seq, "anomaly_score": score, "fault": "normal",
        "fault_probability": 0.9, "rms_g": 0.2, "velocity_rms_mm_s": 1.1, "zone": "A"})


def alert(seq: int, status: str = "raised") -> Record:
    return Record(seq, T0 + seq, {
        "incident": "inc-1", "status": status, "severity": "alarm", "channel": 0,
        "anomaly_score": 4.2, "threshold": 3.0, "fault": "outer_race", "zone": "C",
        "explanation": {"bands": [{"name": "bpfo_1x", "z": 7.5}]},
        "model": {"name": "default", "version": "1.0.0"}})


def batch(kind: str, records: list[Record], device: str = "pump-1",
          boot: str = "boot-a") -> Batch:
    return Batch("plant1", device, boot, kind, tuple(records), T0)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gw.db'}"
    else:
        url = request.getfixturevalue("postgres_dsn")
    s = open_store(url)
    yield s
    s.close()


def test_schema_migrated_and_reopen_is_idempotent(store: Store) -> None:
    assert store.schema_version() == LATEST_VERSION
    assert store.migrate() == LATEST_VERSION


def test_duplicates_dropped_and_counted(store: Store) -> None:
    first = store.store_batch(batch("telemetry", [telemetry(i) for i in range(5)]), T0)
    assert (first.inserted, first.duplicates) == (5, 0)
    again = store.store_batch(batch("telemetry", [telemetry(i) for i in range(3, 8)]), T0)
    assert (again.inserted, again.duplicates) == (3, 2)
    assert store.count() == 8
    # another boot of the same device reuses seq numbers legitimately
    other = store.store_batch(batch("telemetry", [telemetry(0)], boot="boot-b"), T0)
    assert other.inserted == 1


def test_records_roundtrip_with_filters(store: Store) -> None:
    store.store_batch(batch("telemetry", [telemetry(i, score=i / 10) for i in range(10)]), T0)
    store.store_batch(batch("telemetry", [telemetry(1)], device="fan-2"), T0)
    rows = store.records(device="pump-1", kind="telemetry", since=T0 + 2, until=T0 + 5)
    assert [r.seq for r in rows] == [2, 3, 4]
    assert rows[0].body["anomaly_score"] == pytest.approx(0.2)
    assert rows[0].received_ts == T0 and rows[0].boot_id == "boot-a"
    assert len(store.records(device="fan-2")) == 1


def test_alerts_kept_with_explanation_and_returned_once(store: Store) -> None:
    res = store.store_batch(batch("alert", [alert(3), alert(4, "updated")]), T0)
    assert [r.seq for r in res.new_alerts] == [3, 4]
    dup = store.store_batch(batch("alert", [alert(3)]), T0)
    assert dup.new_alerts == () and dup.duplicates == 1
    rows = store.alerts(device="pump-1")
    assert len(rows) == 2
    assert rows[0]["explanation"]["bands"][0]["z"] == 7.5
    assert rows[1]["status"] == "updated"
    dev = store.devices()[0]
    assert (dev.last_alert_incident, dev.last_alert_status) == ("inc-1", "updated")


def test_gaps_open_and_fill(store: Store) -> None:
    res = store.store_batch(batch("telemetry", [telemetry(i) for i in (1, 2, 6, 7)]), T0)
    assert res.opened_gaps == ((3, 5),)
    store.store_batch(batch("telemetry", [telemetry(4)]), T0 + 1)
    assert [(g.first_seq, g.last_seq) for g in store.gaps()] == [(3, 3), (5, 5)]
    store.store_batch(batch("telemetry", [telemetry(3), telemetry(5)]), T0 + 2)
    assert store.gaps() == []


def test_device_registry_state_health_quality(store: Store) -> None:
    store.store_state({"site": "plant1", "device": "pump-1", "online": True, "boot_id": "b2",
                       "ts": T0 + 10, "agent_version": "0.1.0",
                       "model": {"name": "default", "version": "1.2.0"}}, T0 + 10)
    store.store_batch(batch("health", [Record(5, T0 + 5, {
        "uptime_s": 5, "counters": {"outbox_depth": {"telemetry": {"rows": 7, "bytes": 900},
                                                     "alert": {"rows": 1, "bytes": 80}}}})]),
        T0 + 11)
    store.store_batch(batch("event", [Record(6, T0 + 6, {
        "type": "data_quality", "detail": {"state": "clipping"}})]), T0 + 12)
    # a stale last will of an older boot must not mark the new boot offline
    store.store_state({"site": "plant1", "device": "pump-1", "online": False, "boot_id": "b1",
                       "ts": T0, "agent_version": "0.1.0"}, T0 + 13)
    dev = store.devices(site="plant1")[0]
    assert dev.online is True and dev.boot_id == "b2"
    assert (dev.model_name, dev.model_version, dev.agent_version) == ("default", "1.2.0",
                                                                      "0.1.0")
    assert dev.outbox_depth == 8 and dev.data_quality == "clipping"
    assert dev.last_seen_ts == T0 + 12  # a stale will is not a sign of life
    store.store_state({"site": "plant1", "device": "pump-1", "online": False, "boot_id": "b2",
                       "ts": T0 + 10, "agent_version": "0.1.0"}, T0 + 14)
    assert store.devices()[0].online is False


def test_late_health_does_not_overwrite_newer(store: Store) -> None:
    new = Record(9, T0 + 9, {"uptime_s": 9, "counters": {"outbox_depth": 2}})
    old = Record(1, T0 + 1, {"uptime_s": 1, "counters": {"outbox_depth": 50}})
    store.store_batch(batch("health", [new]), T0)
    store.store_batch(batch("health", [old]), T0)
    assert store.devices()[0].outbox_depth == 2


def test_concurrent_writers_store_each_record_once(store: Store, tmp_path: Path,
                                                   request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path / 'gw.db'}" if isinstance(store, SqliteStore)
           else request.getfixturevalue("postgres_dsn"))
    other = open_store(url)
    results: list[Any] = []

    def write(s: Store) -> None:
        for start in range(0, 200, 20):
            recs = [telemetry(i) for i in range(start, start + 20)]
            results.append(s.store_batch(batch("telemetry", recs), T0))

    threads = [threading.Thread(target=write, args=(s,)) for s in (store, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    assert sum(r.inserted for r in results) == 200
    assert sum(r.duplicates for r in results) == 200
    assert store.count() == 200 and store.gaps() == []


def committed(store: Store, table: str) -> int:
    """Rows of ``table`` another connection sees (a plain reader: the store's own reads
    take SQLite's write lock)."""
    if isinstance(store, SqliteStore):
        import sqlite3

        with closing(sqlite3.connect(store.path)) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    import psycopg

    with psycopg.connect(store.dsn) as conn:  # type: ignore[attr-defined]
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def state(device: str) -> dict[str, Any]:
    return {"site": "plant1", "device": device, "online": True, "boot_id": "boot-a",
            "ts": T0, "agent_version": "0.1.0", "model": {"name": "m", "version": "1"}}


def test_group_commits_its_writes_together(store: Store) -> None:
    with store.group():
        a = store.store_batch(batch("telemetry", [telemetry(i) for i in range(5)]), T0)
        b = store.store_batch(batch("telemetry", [telemetry(i) for i in range(3, 8)]), T0)
        store.store_batch(batch("alert", [alert(1)], device="fan-2"), T0)
        store.store_state(state("fan-2"), T0)
        with store.group():  # a group inside the group is the same group
            store.store_batch(batch("health", [Record(1, T0, {"outbox_depth": 3})]), T0)
        assert store.count() == 9  # this thread reads its own writes
        assert committed(store, "records") == committed(store, "devices") == 0
    assert (a.inserted, b.inserted, b.duplicates) == (5, 3, 2)
    assert committed(store, "records") == 9 and committed(store, "alerts") == 1
    assert {d.device: d.online for d in store.devices()} == {"fan-2": True, "pump-1": None}


def test_group_rolls_back_everything_when_its_block_raises(store: Store) -> None:
    with pytest.raises(KeyError), store.group():  # the caller's error comes out as it is
        store.store_batch(batch("telemetry", [telemetry(i) for i in range(5)]), T0)
        store.store_state(state("fan-2"), T0)
        raise KeyError("caller")
    assert store.count() == 0 and store.devices() == [] and store.count("boots") == 0
    store.store_batch(batch("telemetry", [telemetry(0)]), T0)  # the store works on
    assert store.count() == 1


def test_group_with_a_caught_write_failure_commits_nothing(store: Store) -> None:
    bad = Record(9, T0, {"anomaly_score": float("nan")})  # not storable JSON
    with pytest.raises(StoreError, match="rolled back"), store.group():
        store.store_batch(batch("telemetry", [telemetry(i) for i in range(3)]), T0)
        with pytest.raises(StoreError):
            store.store_batch(batch("telemetry", [bad]), T0)
        with pytest.raises(StoreError, match="earlier write"):
            store.store_batch(batch("telemetry", [telemetry(3)]), T0)
    assert store.count() == 0 and store.count("boots") == 0
    with store.group():
        store.store_batch(batch("telemetry", [telemetry(i) for i in range(3)]), T0)
    assert store.count() == 3


def test_a_value_the_database_cannot_hold_is_refused_as_the_messages_fault(
        store: Store) -> None:
    """RecordRefused (a StoreError): retrying cannot help, so the gateway drops it counted.
    An infinite number (1e400 parses to inf) on both backends; a NUL character in JSON text
    on PostgreSQL (SQLite keeps it)."""
    from gateway.store import RecordRefused

    body = telemetry(1).body
    with pytest.raises(RecordRefused, match="JSON"):
        store.store_batch(batch("telemetry", [Record(1, T0, {**body, "rms_g": 1e400})]), T0)
    nul = batch("telemetry", [Record(2, T0, {**body, "note": "a\x00b"})])
    if store.dialect.name == "postgresql":
        with pytest.raises(RecordRefused):
            store.store_batch(nul, T0)
        assert store.count() == 0
    else:
        assert store.store_batch(nul, T0).inserted == 1
    with pytest.raises(StoreError), store.group():   # inside a group too, rolled back
        store.store_batch(batch("telemetry", [telemetry(3)]), T0)
        store.store_batch(batch("telemetry", [Record(4, T0, {**body, "rms_g": 1e400})]), T0)
    assert [r.seq for r in store.records()] == ([] if store.dialect.name == "postgresql"
                                                else [2])


def test_bad_urls_raise_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        open_store("mysql://x/y")
    with pytest.raises(StoreError):
        open_store("postgresql://nobody@127.0.0.1:1/nothing")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError):
        open_store(f"sqlite:///{tmp_path / 'dir.db'}")


def test_sqlite_runs_in_wal(tmp_path: Path) -> None:
    s = open_store(str(tmp_path / "x.db"))
    assert isinstance(s, SqliteStore) and s.journal_mode() == "wal"
    s.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 60), min_size=1, max_size=10), min_size=1,
                max_size=8))
def test_gap_math_matches_set_complement(arrivals: list[list[int]]) -> None:
    first = top = None
    open_gaps: list[tuple[int, int]] = []
    seen: set[int] = set()
    for seqs in arrivals:
        fresh = set(seqs) - seen
        if not fresh:
            continue
        upd = gapmath.update(first, top, open_gaps, fresh)
        first, top, open_gaps = upd.first_seq, upd.max_seq, list(upd.gaps)
        seen |= fresh
    missing = {s for a, b in open_gaps for s in range(a, b + 1)}
    assert missing == set(range(min(seen), max(seen) + 1)) - seen


def test_sqlite_synchronous_option(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path / 'n.db'}?synchronous=NORMAL")
    assert isinstance(s, SqliteStore)
    assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    s.close()
    with pytest.raises(StoreError, match="synchronous"):
        open_store(f"sqlite:///{tmp_path / 'n.db'}?synchronous=OFF")
    with pytest.raises(StoreError, match="fsync_mode"):
        open_store(f"sqlite:///{tmp_path / 'n.db'}?fsync_mode=1")


def test_rollout_rows_roundtrip(store: Store) -> None:
    from gateway.store import RolloutRow

    store.save_rollout(RolloutRow("r1", "m", "1.1.0", "plant1", 1, 25.0, "canary", T0, T0,
                                  {"canary": ["pump-1"]}))
    store.save_rollout(RolloutRow("r1", "m", "1.1.0", "plant1", 1, 25.0, "widening", T0,
                                  T0 + 5, {"canary": ["pump-1"]}))
    store.set_rollout_device("r1", "plant1", "pump-1", "offered", {}, T0 + 1)
    store.set_rollout_device("r1", "plant1", "pump-1", "active", {"windows": 10}, T0 + 2)
    (row,) = store.rollouts()
    assert row.state == "widening" and row.detail == {"canary": ["pump-1"]}
    (dev,) = store.rollout_devices("r1")
    assert dev.status == "active" and dev.detail == {"windows": 10}
    assert dev.bundle_version == "1.1.0"


def test_outbox_depth_shapes() -> None:
    from gateway.store_sql import outbox_depth

    assert outbox_depth({"outbox_depth": 3}) == 3
    assert outbox_depth({"counters": {"outbox_depth": {"alert": {"rows": 2}, "event": 1}}}) == 3
    assert outbox_depth({"gauges": {"outbox_depth": 4.0}}) == 4
    assert outbox_depth({"outbox": {"depth": 5}}) == 5
    assert outbox_depth({"counters": {"frames": 10}}) is None
