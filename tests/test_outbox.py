"""Outbox contract suite on real SQLite files (WAL) under tmp_path, plus durability under
SIGKILL of a writer process. Every test of ``TestOutboxContract`` runs against each
telemetry policy the outbox offers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from agent.outbox import RECORD_OVERHEAD_BYTES, Outbox, OutboxConfig
from foreshock.errors import MessageError, OutboxError
from foreshock.messages import Record

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_764_250_000.0


def telemetry(i: int = 0, pad: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"channel": i % 4, "window_ts": NOW + i, "anomaly_score": 0.1 * i,
                            "fault": "normal", "fault_probability": 0.9, "rms_g": 0.2,
                            "velocity_rms_mm_s": 1.1, "zone": "A"}
    if pad:
        body["pad"] = "x" * pad
    return body


def alert(i: int = 0) -> dict[str, Any]:
    return {"incident": f"inc-{i}", "status": "raised", "severity": "alarm", "channel": 0,
            "anomaly_score": 3.2, "threshold": 2.0, "fault": "outer_race", "zone": "C",
            "explanation": {"top": [["bpfo_env", 6.1]]}, "model": {"name": "m", "version": "1"}}


def event(i: int = 0) -> dict[str, Any]:
    return {"type": "data_quality", "detail": {"gaps": i}}


def health(i: int = 0) -> dict[str, Any]:
    return {"uptime_s": float(i), "counters": {"frames": i}}


MakeOutbox = Callable[..., Outbox]


@pytest.fixture(params=["downsample", "drop_oldest"])
def make_outbox(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    opened: list[Outbox] = []

    def make(name: str = "outbox.db", boot_id: str = "boot-a", **overrides: Any) -> Outbox:
        config = OutboxConfig(**{"telemetry_policy": request.param, **overrides})
        ob = Outbox(tmp_path / name, config, boot_id=boot_id)
        opened.append(ob)
        return ob

    yield make
    for ob in opened:
        try:
            ob.close()
        except sqlite3.ProgrammingError:
            pass  # closed by the test


def all_seqs(ob: Outbox, kind: str) -> list[int]:
    return [rid for rid, _ in ob.pending(kind, 10**9)]


class TestOutboxContract:
    def test_put_assigns_increasing_seq_and_pending_returns_records(
            self, make_outbox: MakeOutbox) -> None:
        ob = make_outbox()
        seqs = [ob.put("alert", alert(i), NOW + i) for i in range(3)]
        seqs += ob.put_many("telemetry", [(telemetry(i), NOW + i) for i in range(5)])
        seqs.append(ob.put("event", event(), NOW))
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        rows = ob.pending("alert", 10)
        assert [rid for rid, _ in rows] == seqs[:3]
        assert all(rec.seq == rid for rid, rec in rows)
        assert rows[1][1].body == alert(1) and rows[1][1].ts == NOW + 1
        assert all_seqs(ob, "telemetry") == seqs[3:8]
        assert ob.pending("telemetry", 2, after=seqs[4]) == ob.pending("telemetry", 5)[2:4]

    def test_put_records_stores_several_classes_in_one_write(
            self, make_outbox: MakeOutbox) -> None:
        """One transaction for a step's alert, events and telemetry: seqs in the given order,
        each class's rows, depth and written counter as if stored class by class; a record
        that cannot be encoded stores nothing."""
        ob, one = make_outbox(), make_outbox("one.db")
        items = [("alert", alert(1), NOW), ("event", event(2), NOW + 1),
                 ("telemetry", telemetry(3), NOW + 2), ("telemetry", telemetry(4), NOW + 3)]
        seqs = ob.put_records(items)
        assert seqs == sorted(seqs) and len(seqs) == 4
        for kind, body, ts in items:
            one.put(kind, body, ts)
        for kind in ("alert", "event", "telemetry"):
            assert [r.body for _, r in ob.pending(kind, 10)] == \
                [r.body for _, r in one.pending(kind, 10)]
        assert all_seqs(ob, "telemetry") == seqs[2:]
        assert ob.depth() == one.depth() and ob.counters() == one.counters()
        with pytest.raises(MessageError):
            ob.put_records([("alert", alert(5), NOW), ("telemetry", {"bad": float("nan")}, NOW)])
        assert ob.depth() == one.depth()
        assert ob.put_records([]) == []

    def test_ack_deletes_exactly_the_given_row_ids(self, make_outbox: MakeOutbox) -> None:
        ob = make_outbox()
        seqs = ob.put_many("telemetry", [(telemetry(i), NOW) for i in range(10)])
        assert ob.ack([seqs[1], seqs[5], 10**12]) == 2
        assert all_seqs(ob, "telemetry") == [s for s in seqs if s not in (seqs[1], seqs[5])]
        assert ob.ack([]) == 0
        assert ob.counters()["telemetry"]["acked"] == 2
        assert ob.depth()["telemetry"].rows == 8

    def test_writes_commit_with_synchronous_full(self, make_outbox: MakeOutbox) -> None:
        ob = make_outbox()
        assert Path(ob.path).with_name("outbox.db-wal").exists()  # WAL mode
        seqs = ob.put_many("telemetry", [(telemetry(), NOW)])
        ob.ack(seqs)  # acks commit without fsync, and must switch FULL back on
        ob.put("alert", alert(), NOW)
        # white-box: the fsync guarantee lives in this per-connection setting (2 = FULL)
        assert ob._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert ob._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def test_depth_counts_rows_and_bytes(self, make_outbox: MakeOutbox) -> None:
        ob = make_outbox()
        ob.put_many("telemetry", [(telemetry(i), NOW) for i in range(4)])
        size = sum(len(json.dumps(telemetry(i), separators=(",", ":"))) for i in range(4))
        assert ob.depth()["telemetry"].rows == 4
        assert ob.depth()["telemetry"].size_bytes == size + 4 * RECORD_OVERHEAD_BYTES
        assert ob.depth()["alert"].rows == 0

    def test_restart_keeps_rows_counters_and_never_reuses_seq(
            self, make_outbox: MakeOutbox) -> None:
        ob = make_outbox()
        first = ob.put_many("telemetry", [(telemetry(i), NOW) for i in range(5)])
        ob.ack(first[3:])
        ob.close()
        ob2 = make_outbox(boot_id="boot-b")
        assert all_seqs(ob2, "telemetry") == first[:3]
        assert ob2.counters()["telemetry"] == {"written": 5, "acked": 2,
                                                "dropped_by_policy": 0, "expired": 0}
        assert ob2.depth()["telemetry"].rows == 3
        # the newest rows were acked and deleted; AUTOINCREMENT still never reuses them
        assert ob2.put("alert", alert(), NOW) == first[-1] + 1
        boot, rows = ob2.pending_batch("telemetry", 100)
        assert boot == "boot-a" and len(rows) == 3

    def test_pending_batch_stays_within_one_boot_and_byte_bound(
            self, make_outbox: MakeOutbox) -> None:
        ob = make_outbox()
        ob.put_many("telemetry", [(telemetry(i), NOW) for i in range(3)])
        ob.close()
        ob = make_outbox(boot_id="boot-b")
        ob.put_many("telemetry", [(telemetry(i), NOW) for i in range(3)])
        boot, rows = ob.pending_batch("telemetry", 100)
        assert boot == "boot-a" and len(rows) == 3
        boot, rows = ob.pending_batch("telemetry", 100, after=rows[-1][0])
        assert boot == "boot-b" and len(rows) == 3
        one = len(json.dumps(telemetry(0), separators=(",", ":"))) + RECORD_OVERHEAD_BYTES
        assert len(ob.pending_batch("telemetry", 100, max_bytes=2 * one + 5)[1]) == 2
        assert len(ob.pending_batch("telemetry", 100, max_bytes=1)[1]) == 1  # at least one

    def test_pending_json_is_the_batch_records_array(self, make_outbox: MakeOutbox) -> None:
        ob = make_outbox()
        ob.put_many("telemetry", [(telemetry(i), NOW + i / 3) for i in range(7)])
        ob.put("alert", alert(), NOW)
        boot, rows = ob.pending_batch("telemetry", 5, after=1, max_bytes=2_000)
        boot2, ids, records = ob.pending_json("telemetry", 5, after=1, max_bytes=2_000)
        assert (boot2, ids) == (boot, [rid for rid, _ in rows]) and len(ids) >= 2
        assert json.loads(records) == [rec.to_json() for _, rec in rows]
        assert ob.pending_json("event", 5) == ("", [], "[]")

    def test_non_finite_numbers_are_refused_where_the_schema_needs_a_number(
            self, make_outbox: MakeOutbox) -> None:
        ob = make_outbox()
        with pytest.raises(MessageError, match="null"):
            ob.put("telemetry", {**telemetry(), "rms_g": float("inf")}, NOW)
        seq = ob.put("telemetry", {**telemetry(), "extra": float("nan")}, NOW)
        assert ob.pending("telemetry", 1) == [(seq, Record(seq, NOW, {**telemetry(),
                                                                      "extra": None}))]
        with pytest.raises(MessageError, match="JSON"):
            ob.put("event", {"type": "model", "detail": {"when": object()}}, NOW)

    def test_telemetry_over_budget_is_evicted_oldest_first_and_counted(
            self, make_outbox: MakeOutbox) -> None:
        budget = 50_000
        ob = make_outbox(telemetry_budget_bytes=budget)
        written: list[int] = []
        for _ in range(20):
            written += ob.put_many("telemetry", [(telemetry(i), NOW) for i in range(50)])
        depth = ob.depth()["telemetry"]
        assert depth.size_bytes <= budget
        kept = all_seqs(ob, "telemetry")
        assert len(kept) == depth.rows
        counters = ob.counters()["telemetry"]
        assert counters["written"] == 1000
        assert counters["dropped_by_policy"] == 1000 - len(kept)
        assert kept[-50:] == written[-50:]  # the newest batch is always whole
        if ob.config.telemetry_policy == "drop_oldest":
            assert kept == written[-len(kept):]
        else:  # thinned history: some old rows survive, with holes between them
            assert kept[0] < written[-len(kept)]

    def test_event_and_health_drop_oldest(self, make_outbox: MakeOutbox) -> None:
        ob = make_outbox(event_budget_bytes=2_000, health_budget_bytes=2_000)
        events = [ob.put("event", event(i), NOW) for i in range(60)]
        ob.put_many("health", [(health(i), NOW) for i in range(200)])
        kept = all_seqs(ob, "event")
        assert kept == events[-len(kept):] and 0 < len(kept) < 60
        assert ob.depth()["health"].size_bytes <= 2_000
        assert ob.counters()["event"]["dropped_by_policy"] == 60 - len(kept)

    def test_alerts_are_never_evicted_by_budget_or_ttl(self, make_outbox: MakeOutbox) -> None:
        ob = make_outbox(alert_budget_bytes=1_000, telemetry_ttl_s=60.0)
        alerts = [ob.put("alert", alert(i), NOW - 10**7) for i in range(50)]
        ob.put_many("telemetry", [(telemetry(i), NOW - 120) for i in range(5)])
        ob.put_many("telemetry", [(telemetry(i), NOW) for i in range(3)])
        ob.put("event", event(), NOW - 40 * 86_400)
        assert ob.expire(now=NOW + 10) == 6
        assert all_seqs(ob, "alert") == alerts
        assert ob.depth()["telemetry"].rows == 3 and ob.depth()["event"].rows == 0
        counters = ob.counters()
        assert counters["telemetry"]["expired"] == 5 and counters["event"]["expired"] == 1
        assert counters["alert"]["dropped_by_policy"] == counters["alert"]["expired"] == 0

    def test_expiry_walks_a_long_backlog_in_chunks(self, make_outbox: MakeOutbox) -> None:
        ob = make_outbox(telemetry_ttl_s=3600.0)
        for b in range(5):  # 5,000 expired rows: more than one EXPIRE_CHUNK
            ob.put_many("telemetry", [(telemetry(i), NOW - 7200 + b) for i in range(1000)])
        fresh = ob.put_many("telemetry", [(telemetry(i), NOW) for i in range(10)])
        assert ob.expire(now=NOW) == 5000
        assert all_seqs(ob, "telemetry") == fresh
        assert ob.expire(now=NOW) == 0

    @pytest.mark.parametrize("kind, body, ts", [
        ("alarm", alert(), NOW),                       # unknown kind
        ("alert", {"incident": "x"}, NOW),             # missing fields
        ("telemetry", {**telemetry(), "zone": "Q"}, NOW),
        ("event", event(), float("nan")),
        ("telemetry", telemetry(pad=300_000), NOW),     # over max_record_bytes
    ])
    def test_bad_records_are_refused_with_message_error(
            self, make_outbox: MakeOutbox, kind: str, body: dict[str, Any], ts: float) -> None:
        ob = make_outbox()
        with pytest.raises(MessageError):
            ob.put(kind, body, ts)
        with pytest.raises(MessageError):
            ob.put_many("telemetry", [(telemetry(), NOW), (body, ts)])
        assert sum(d.rows for d in ob.depth().values()) == 0

    def test_garbage_file_is_moved_aside_and_reported(
            self, make_outbox: MakeOutbox, tmp_path: Path) -> None:
        path = tmp_path / "outbox.db"
        path.write_bytes(b"this is not an sqlite file at all " * 200)
        ob = make_outbox()
        aside = list(tmp_path.glob("outbox.db.corrupt-*"))
        assert aside == ob.recovered and len(aside) == 1
        assert aside[0].read_bytes().startswith(b"this is not an sqlite file")
        assert ob.corrupt_recovered == 1
        seq = ob.put("alert", alert(), NOW)
        assert seq > int(NOW * 1e6)  # above any seq the lost file could have sent
        ob.close()
        assert make_outbox().corrupt_recovered == 1  # persists in the fresh file

    def test_damaged_pages_are_detected_on_open(
            self, make_outbox: MakeOutbox, tmp_path: Path) -> None:
        ob = make_outbox()
        seqs = ob.put_many("telemetry", [(telemetry(i, pad=500), NOW) for i in range(400)])
        ob.close()
        path = tmp_path / "outbox.db"
        data = bytearray(path.read_bytes())
        page = 4096
        for at in range(2 * page, len(data) - page, 3 * page):  # wreck every third page
            data[at + 8: at + page] = os.urandom(page - 8)
        path.write_bytes(bytes(data))
        ob2 = make_outbox()
        assert len(ob2.recovered) == 1 and ob2.corrupt_recovered == 1
        assert ob2.put("alert", alert(), NOW) > seqs[-1]

    def test_corruption_found_while_running_replaces_the_file(
            self, make_outbox: MakeOutbox, tmp_path: Path) -> None:
        ob = make_outbox()
        seqs: list[int] = []
        for _ in range(12):  # more than SQLite's page cache, so reads hit the file
            seqs += ob.put_many("telemetry", [(telemetry(i, pad=1000), NOW) for i in range(500)])
        ob.close()
        ob = make_outbox(check_on_open=False)
        path = tmp_path / "outbox.db"
        size = path.stat().st_size
        with open(path, "r+b") as f:
            for at in range(2 * 4096, size - 4096, 3 * 4096):
                f.seek(at + 8)
                f.write(os.urandom(4088))
        with pytest.raises(OutboxError, match="corrupt"):
            ob.pending("telemetry", 10**6)
        assert len(ob.recovered) == 1 and ob.recovered[0].exists()
        assert ob.corrupt_recovered == 1 and ob.depth()["telemetry"].rows == 0
        assert ob.ack(seqs[:10]) == 0  # old row ids can never hit a row of the new file
        assert ob.put("alert", alert(), NOW) > seqs[-1]

    def test_full_file_gives_up_oldest_telemetry_never_alerts(
            self, make_outbox: MakeOutbox) -> None:
        ob = make_outbox(max_file_bytes=400 * 1024)
        written: list[int] = []
        for i in range(60):  # ~750 kB of telemetry into a 400 kB file
            written += ob.put_many("telemetry", [(telemetry(i, pad=400), NOW)] * 20)
        kept = all_seqs(ob, "telemetry")
        assert kept == written[-len(kept):] and len(kept) < len(written)
        assert ob.counters()["telemetry"]["dropped_by_policy"] == len(written) - len(kept)
        big = {**alert(), "explanation": {"note": "y" * 2000}}  # one 4 kB page each
        seqs: list[int] = []
        with pytest.raises(OutboxError, match="full"):  # refused only once no telemetry
            for _ in range(1000):                       # is left to give up
                seqs.append(ob.put("alert", big, NOW))
        assert ob.depth()["telemetry"].rows == 0
        assert len(seqs) > 60  # telemetry's room went to alerts
        assert all_seqs(ob, "alert") == seqs  # no alert was ever given up


WRITER = """
import sys, time
from agent.outbox import Outbox
ob = Outbox(sys.argv[1], boot_id="killed")
body = {"incident": "i", "status": "raised", "severity": "alarm", "channel": 0,
        "anomaly_score": 3.0, "threshold": 2.0, "fault": "ball", "zone": "C",
        "explanation": {}, "model": {}}
tel = {"channel": 0, "window_ts": 1.0, "anomaly_score": 0.1, "fault": "normal",
       "fault_probability": 0.9, "rms_g": 0.2, "velocity_rms_mm_s": 1.1, "zone": "A"}
while True:
    print("A", ob.put("alert", body, time.time()), flush=True)
    seqs = ob.put_many("telemetry", [(tel, time.time())] * 250)
    print("T", seqs[0], seqs[-1], flush=True)
"""


def test_records_acknowledged_to_a_writer_killed_with_sigkill_survive(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while len(lines) < 120 and time.monotonic() < deadline:
        lines.append(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    lines += proc.stdout.read().splitlines()  # whatever it printed before dying
    alerts = [int(ln.split()[1]) for ln in lines if ln.startswith("A ")]
    batches = [(int(ln.split()[1]), int(ln.split()[2])) for ln in lines if ln.startswith("T ")]
    assert len(alerts) >= 50 and len(batches) >= 50
    ob = Outbox(path, boot_id="after")
    try:
        stored_alerts = {rid for rid, _ in ob.pending("alert", 10**6)}
        stored_tel = {rid for rid, _ in ob.pending("telemetry", 10**7)}
        assert set(alerts) <= stored_alerts
        for first, last in batches:
            assert set(range(first, last + 1)) <= stored_tel
        # a batch is one transaction: never half a batch on disk
        assert len(stored_tel) % 250 == 0
        assert len(stored_alerts) - len(alerts) in (0, 1)
        assert ob.counters()["alert"]["written"] == len(stored_alerts)
    finally:
        ob.close()


class OutboxMachine(RuleBasedStateMachine):
    """Random puts, acks and reopens against a plain model, with a small telemetry budget:
    alerts pending are exactly those written and not acked; telemetry pending is a subset
    of the model (the rest was dropped by policy, and counted); seqs only ever grow; every
    record written is pending, acked, dropped or expired."""

    BUDGET = 20_000  # about 60 telemetry records
    POLICY = "downsample"

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-machine-"))
        self.ob = self._open()
        self.model: dict[str, dict[int, Any]] = {k: {} for k in ("alert", "telemetry")}
        self.last_seq = 0
        self.boots = 0

    def _open(self) -> Outbox:
        config = OutboxConfig(telemetry_budget_bytes=self.BUDGET, alert_budget_bytes=2_000,
                              telemetry_policy=self.POLICY)  # type: ignore[arg-type]
        return Outbox(self.dir / "o.db", config, boot_id=f"b{getattr(self, 'boots', 0)}")

    def _wrote(self, kind: str, seqs: list[int], bodies: list[dict[str, Any]]) -> None:
        assert seqs and seqs[0] > self.last_seq and seqs == sorted(set(seqs))
        self.last_seq = seqs[-1]
        self.model[kind].update(zip(seqs, bodies, strict=True))

    @rule(i=st.integers(0, 1000))
    def put_alert(self, i: int) -> None:
        self._wrote("alert", [self.ob.put("alert", alert(i), NOW + i)], [alert(i)])

    @rule(n=st.integers(1, 40), start=st.integers(0, 1000))
    def put_telemetry(self, n: int, start: int) -> None:
        bodies = [telemetry(start + i) for i in range(n)]
        seqs = self.ob.put_many("telemetry", [(b, NOW) for b in bodies])
        self._wrote("telemetry", seqs, bodies)
        assert all_seqs(self.ob, "telemetry")[-n:] == seqs  # the newest batch is whole

    @rule(data=st.data())
    def ack_some(self, data: st.DataObject) -> None:
        ids = [rid for kind in ("alert", "telemetry") for rid in all_seqs(self.ob, kind)]
        chosen = data.draw(st.lists(st.sampled_from(ids), unique=True) if ids else st.just([]))
        assert self.ob.ack(chosen) == len(chosen)
        for kind in self.model:
            for rid in chosen:
                self.model[kind].pop(rid, None)

    @rule()
    def reopen(self) -> None:
        self.ob.close()
        self.boots += 1
        self.ob = self._open()

    @invariant()
    def pending_matches_model(self) -> None:
        alerts = self.ob.pending("alert", 10**6)
        assert [(rid, rec.body) for rid, rec in alerts] == sorted(self.model["alert"].items())
        tel = self.ob.pending("telemetry", 10**6)
        assert all(self.model["telemetry"][rid] == rec.body for rid, rec in tel)
        assert self.ob.depth()["telemetry"].rows == len(tel)
        assert self.ob.depth()["telemetry"].size_bytes <= self.BUDGET

    @invariant()
    def every_record_is_accounted_for(self) -> None:
        depth = self.ob.depth()
        for kind, c in self.ob.counters().items():
            assert c["written"] == (depth[kind].rows + c["acked"] + c["dropped_by_policy"]
                                    + c["expired"]), kind
        assert self.ob.counters()["alert"]["dropped_by_policy"] == 0

    def teardown(self) -> None:
        self.ob.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class DropOldestMachine(OutboxMachine):
    POLICY = "drop_oldest"


TestOutboxMachine = OutboxMachine.TestCase
TestOutboxMachine.settings = settings(max_examples=10, stateful_step_count=12, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
TestDropOldestMachine = DropOldestMachine.TestCase
TestDropOldestMachine.settings = TestOutboxMachine.settings
