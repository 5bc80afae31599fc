"""Operating-state baselines: learning, guarded adaptation, audit log, persistence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import evaluate_learning_module, run_cli

from agent.baselines import DAY_S, LearningConfig, StateBank
from agent.features import DEFAULT_SPEC
from foreshock.errors import ConfigError

NAMES = DEFAULT_SPEC.feature_names
F = len(NAMES)
RMS = NAMES.index("rms_g")


def rows(rng: np.random.Generator, n: int, rms: float = 1.0) -> np.ndarray:
    x = (1.0 + 0.05 * rng.standard_normal((n, F))).astype(np.float32)
    x[:, RMS] = rms * (1.0 + 0.05 * rng.standard_normal(n))
    return x


def ready_bank(tmp_path: Path | None = None, **kw: object) -> tuple[StateBank, np.ndarray]:
    rng = np.random.default_rng(1)
    bank = StateBank(LearningConfig(min_state_windows=16, **kw), NAMES,  # type: ignore[arg-type]
                     state_dir=tmp_path)
    z, ready, states, events = bank.zscore("dev/0", rows(rng, 20), 1800.0, np.arange(20.0))
    assert not ready[:16].any() and ready[16:].all()
    assert events and events[0]["detail"]["state"] == states[0]
    return bank, z


def test_new_state_learns_without_scoring_and_reports_in_status() -> None:
    bank, _ = ready_bank()
    rng = np.random.default_rng(2)
    assert bank.state_of(1800.0) != bank.state_of(600.0) and bank.state_of(0.0) == "s?"
    z, ready, states, _ = bank.zscore("dev/0", rows(rng, 5, rms=3.0), 600.0, np.arange(5.0))
    assert not ready.any() and not z.any()
    st = bank.status()
    assert st["learning_states"] == 1
    assert st["streams"]["dev/0"][states[0]] == {"status": "learning", "learned_windows": 5,
                                                 "adapted": 0}
    # a window back in the ready state is scored against its own baseline
    z, ready, _, _ = bank.zscore("dev/0", rows(rng, 1, rms=1.0), 1800.0, 100.0)
    assert ready.all() and abs(float(z[0, RMS])) < 5


def test_load_proxy_bins_and_config_errors() -> None:
    cfg = LearningConfig(load_feature="order_1x_g", load_edges=(0.5, 2.0))
    bank = StateBank(cfg, NAMES)
    x = np.ones(F, np.float32)
    x[NAMES.index("order_1x_g")] = 3.0
    assert bank.state_of(1000.0, x).endswith("l2")
    with pytest.raises(ConfigError):
        LearningConfig(speed_edges_rpm=(10.0, 5.0))
    with pytest.raises(ConfigError):
        LearningConfig(load_feature="order_1x_g")
    assert StateBank(LearningConfig(load_edges=(1.0,)), NAMES).state_of(1000.0, x, 2.0)[-2:] \
        == "l1"
    with pytest.raises(ConfigError):
        LearningConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError):
        StateBank(LearningConfig(load_feature="nope", load_edges=(1.0,)), NAMES)


def test_adaptation_is_guarded_by_margin_incident_and_daily_rate() -> None:
    bank, _ = ready_bank(max_updates_per_day=10)
    rng = np.random.default_rng(3)
    state = bank.state_of(1800.0)
    x = rows(rng, 1)[0]
    assert not bank.adapt("dev/0", state, x, 100.0, anomaly=0.9, threshold=1.0,
                          incident_open=False)  # not healthy with margin
    assert not bank.adapt("dev/0", state, x, 100.0, 0.1, 1.0, incident_open=True)
    # one hour's share (1 of 10) per data hour, the day's budget at most
    moved = [bank.adapt("dev/0", state, x, 200.0 + i, 0.1, 1.0, False) for i in range(30)]
    assert sum(moved) == 1
    moved = [bank.adapt("dev/0", state, x, h * 3600.0 + 1, 0.1, 1.0, False)
             for h in range(1, 24)]
    assert sum(moved) == 9
    c = bank.counters
    assert c["refused_margin"] == 1 and c["refused_incident"] == 1 and c["refused_rate"] == 43
    # next data day: a fresh budget
    assert bank.adapt("dev/0", state, x, DAY_S + 5.0, 0.1, 1.0, False)


def test_settling_followed_down_but_growing_fault_outruns_the_baseline() -> None:
    bank, _ = ready_bank(max_updates_per_day=400)
    rng = np.random.default_rng(4)
    state = bank.state_of(1800.0)
    start = bank.baseline("dev/0", state)
    assert start is not None
    # run-in: RMS settles to 0.7 of its commissioning level (6 sd) within two days
    for i in range(800):
        x = rows(rng, 1, rms=0.7)[0]
        bank.adapt("dev/0", state, x, i * 200.0, 0.1, 1.0, False)
    settled = bank.baseline("dev/0", state)
    assert settled is not None and settled.median[RMS] < 0.8 * start.median[RMS]
    # a fault growing 10 % a day for a week; adaptation allowed whenever "healthy"
    zs = []
    for day in range(2, 9):
        level = 0.7 * (1.0 + 0.1 * day)
        for i in range(400):
            x = rows(rng, 1, rms=level)[0]
            base = bank.baseline("dev/0", state)
            assert base is not None
            z = float(base.z(x)[RMS])
            bank.adapt("dev/0", state, x, day * DAY_S + i * 200.0, max(z, 0) / 6, 1.0, False)
        zs.append(z)
    assert zs[-1] > 6.0 and zs[-1] > zs[0]


def test_rebaseline_persistence_and_audit(tmp_path: Path) -> None:
    bank, _ = ready_bank(tmp_path)
    rng = np.random.default_rng(5)
    state = bank.state_of(1800.0)
    for i in range(5):
        bank.adapt("dev/0", state, rows(rng, 1)[0], 100.0 + i, 0.1, 1.0, False)
    path = bank.save()
    again = StateBank(LearningConfig(min_state_windows=16), NAMES, state_dir=tmp_path)
    assert again.load()
    a, b = again.baseline("dev/0", state), bank.baseline("dev/0", state)
    assert a is not None and b is not None and np.allclose(a.median, b.median)
    assert again.rebaseline(None, who="operator:ana", why="bearing replaced", at_s=500.0) == 1
    assert again.baseline("dev/0", state) is None
    log = again.audit.read()
    changes = [r["change"] for r in log]
    assert changes == ["fitted", "adapted", "reset"]
    assert log[-1]["who"] == "operator:ana" and log[-1]["why"] == "bearing replaced"
    with open(tmp_path / "baselines.audit.jsonl", "a") as fh:
        fh.write('{"torn')
    assert len(again.audit.read()) == 3
    assert json.loads(path.read_text())["schema"] == "foreshock.baselines/1"
    path.write_text("{not json")
    with pytest.raises(ConfigError):
        again.load()


def test_cli_rebaseline_resets_saved_states_and_records_who(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bank, _ = ready_bank(tmp_path)
    bank.save()
    code, out, _ = run_cli(["agent", "rebaseline", "--state-dir", str(tmp_path), "--stream",
                            "dev/0", "--who", "ana", "--why", "bearing replaced"], capsys)
    assert code == 0 and "reset 1 baseline state" in out
    again = StateBank(LearningConfig(), NAMES, state_dir=tmp_path)
    assert again.load() and again.baseline("dev/0", bank.state_of(1800.0)) is None
    assert again.audit.read()[-1] == {"ts": again.audit.read()[-1]["ts"], "who": "ana",
                                      "why": "bearing replaced", "stream": "dev/0",
                                      "state": bank.state_of(1800.0), "change": "reset"}
    code, _, err = run_cli(["agent", "rebaseline", "--state-dir", str(tmp_path / "none")],
                           capsys)
    assert code == 2 and "no saved baselines" in err


def test_small_fleet_states_cut_false_alerts_and_adaptation_keeps_lead_time() -> None:
    """The evaluation's fleet at CI scale: speed/load changes and growing faults."""
    ev = evaluate_learning_module()
    runner, floor = ev.bundle(ev.SHIPPED)
    fleet = ev.speed_load(runner, floor, 2, 3, 4, 3.0)
    single = fleet["single baseline"]["false_alerts_per_machine_week"]
    per_state = fleet["per-state baselines"]["false_alerts_per_machine_week"]
    assert single > 0 and per_state < single
    grow = ev.growing_week(runner, floor, 2, 3, 4, 3.0)
    off, on = grow["adaptation off"], grow["adaptation on"]
    assert on["detected"] == off["detected"] == 2
    assert on["mean_lead_h"] >= 0.9 * off["mean_lead_h"]
    assert on["false_alerts_before_onset"] == 0


def speed_frames(start_seq: int, count: int, rpm: float, seed: int) -> list[Any]:
    """Frames of a healthy machine at ``rpm`` (shaft line and broadband noise)."""
    from foreshock.wire import Frame

    fs, n = 12_800.0, 1024
    rng = np.random.default_rng(seed)
    out = []
    for seq in range(start_seq, start_seq + count):
        t = (seq * n + np.arange(n)) / fs
        x = (0.2 * rpm / 1800 * np.sin(2 * np.pi * rpm / 60 * t)
             + 0.05 * rpm / 1800 * rng.standard_normal(n))
        out.append(Frame.from_samples("node1", 0, seq, 1_700_000_000_000_000
                                      + round(seq * n / fs * 1e6), fs, x, rpm=rpm))
    return out


def test_running_agent_learns_states_saves_restores_and_rebaselines(tmp_path: Path) -> None:
    """The service with a state dir: a new speed learns (no alert), baselines saved, a
    restarted agent resumes without commissioning, a rebaseline command is audited."""
    import threading

    from agent.config import AgentConfig
    from agent.service import Agent
    from agent.sources import ReplaySource

    cfg = AgentConfig.for_device("node1", "plant1", "", tmp_path,
                                 decision={"commission_s": 5.0})
    fast = speed_frames(0, 150, 1800.0, 1)             # ~12 s: commissioning, then scored
    slow = speed_frames(150, 150, 1000.0, 2)           # another speed bin and level
    agent = Agent(cfg, ReplaySource(fast + slow))
    agent.run(threading.Event())
    assert agent.counters["alerts"] == 0
    states = agent.pipeline.streams()["node1/0"]["states"]
    assert {s["status"] for s in states.values()} == {"ready"} and len(states) == 2
    assert (tmp_path / "baselines.json").is_file()
    results: list[Any] = []
    again = Agent(cfg, ReplaySource(speed_frames(300, 20, 1800.0, 3)),
                  on_result=results.append)
    again.run(threading.Event())
    assert results and not any(r.commissioning for r in results)
    again._command("rebaseline", {"issued_by": "ops", "why": "bearing replaced"})
    again.close()
    log = StateBank(LearningConfig(), NAMES, state_dir=tmp_path).audit.read()
    assert [r["change"] for r in log].count("fitted") == 2
    resets = [r for r in log if r["change"] == "reset"]
    assert len(resets) == 2 and resets[0]["who"] == "command:ops"
    assert resets[0]["why"] == "bearing replaced"


def test_femto_adaptation_neither_noisier_nor_later(shared_data: Path) -> None:
    """Real run-in and run-to-failure bearings, leave one bearing out (a reduced grid): the
    setting of the held-out bearing is chosen on the other five; adaptation on adds no
    false alert and loses no lead time."""
    ev = evaluate_learning_module()
    runner, floor = ev.bundle(ev.SHIPPED)
    full = ev.femto_settings()
    grid = {"off": full["off"][:2], "on": full["on"][:2]}
    rows = ev.femto(runner, floor, shared_data / "femto", settings=grid)
    assert len(rows) == 6
    by = {r["bearing"]: r for r in rows}
    row = by["Bearing3_1"]
    assert row["lead_min_off"] is not None and row["lead_min_on"] is not None
    assert row["first_half_on"] <= row["first_half_off"]
    assert row["lead_min_on"] >= 0.9 * row["lead_min_off"]
    for mode in ("off", "on"):    # what is chosen is what wins on the other bearings
        assert row[f"setting_{mode}"] in {name for name, _ in grid[mode]}
    summary = ev.femto_summary(rows)
    assert summary["on"]["false_alerts"] <= summary["off"]["false_alerts"]
    assert summary["on"]["detected"] >= summary["off"]["detected"]


def test_reference_and_model_saved_with_thresholds_and_older_files_load(tmp_path: Path) -> None:
    """The commissioning reference (windows and baseline) and the model the thresholds are
    for are saved atomically with the bank; a file written without them (older agents)
    loads with no reference; a malformed reference is dropped and counted, the rest kept."""
    from agent.features import Baseline

    bank, _ = ready_bank(tmp_path)
    rng = np.random.default_rng(3)
    ref = rows(rng, 30)
    base = Baseline.fit(ref, NAMES)
    bank.thresholds["dev/0"] = 4.0
    bank.set_reference("dev/0", (ref, base))
    bank.model = {"name": "m", "version": "1.0.0"}
    bank.set_threshold("dev/0", 5.0, who="model switch", why="test", at_s=1.0,
                       threshold_source="reference")
    bank.save()
    again = StateBank(LearningConfig(), NAMES, state_dir=tmp_path)
    assert again.load() and again.model == {"name": "m", "version": "1.0.0"}
    got = again.reference("dev/0")
    assert got is not None and again.thresholds == {"dev/0": 5.0}
    np.testing.assert_array_equal(got[0], ref)
    np.testing.assert_array_equal(got[1].median, base.median)
    np.testing.assert_array_equal(got[1].scale, base.scale)
    change = [r for r in again.audit.read() if r["change"] == "threshold"]
    assert change == [{"ts": 1.0, "who": "model switch", "why": "test", "stream": "dev/0",
                       "state": "*", "change": "threshold", "old_threshold": 4.0,
                       "threshold": 5.0, "threshold_source": "reference"}]

    path = tmp_path / "baselines.json"
    data = json.loads(path.read_text())
    old = {k: data[k] for k in ("schema", "names", "thresholds", "streams")}
    path.write_text(json.dumps(old))
    older = StateBank(LearningConfig(), NAMES, state_dir=tmp_path)
    assert older.load() and older.references == {} and older.model is None
    assert older.thresholds == {"dev/0": 5.0} and older.streams["dev/0"]

    data["references"]["dev/0"]["count"] = 31           # not the rows stored
    path.write_text(json.dumps(data))
    bad = StateBank(LearningConfig(), NAMES, state_dir=tmp_path)
    assert bad.load() and bad.references == {} and bad.counters["references_dropped"] == 1
    assert bad.thresholds == {"dev/0": 5.0} and bad.streams["dev/0"]
    again.rebaseline("dev/0", who="op", why="test", at_s=2.0)   # forgets the reference too
    assert "dev/0" not in again.thresholds and again.reference("dev/0") is None


def test_adapt_batch_is_adapt_per_window_in_turn() -> None:
    """The batched path moves the baselines, counts and audits exactly as one adapt call
    per window in window order: two streams, two states each, incidents, windows outside
    the margin, non-finite rows, hour budgets running out, days closing mid-batch, and
    windows out of time order."""
    rng = np.random.default_rng(7)
    cfg = LearningConfig(min_state_windows=16, max_updates_per_day=48)
    banks = [StateBank(cfg, NAMES), StateBank(cfg, NAMES)]
    for bank in banks:
        for key in ("dev/0", "dev/1"):
            for rpm in (1800.0, 600.0):
                bank.zscore(key, rows(np.random.default_rng(3), 16), rpm, np.arange(16.0))
    states = [banks[0].state_of(1800.0), banks[0].state_of(600.0)]
    t = 0.0
    for b in range(16):     # batches of 64 spanning hours and days, then four in one hour
        n = 64
        keys = [f"dev/{k}" for k in rng.integers(0, 2, n)]
        st = [states[k] for k in rng.integers(0, 2, n)]
        x = rows(rng, n, rms=1.0 + 0.3 * float(rng.standard_normal()))
        x[rng.random(n) < 0.05] = np.nan
        if b <= 12:
            t += float(rng.uniform(0.3, 0.6)) * DAY_S
        if b == 12:
            t = t // 3600.0 * 3600.0 + 100.0
        ts = t + rng.uniform(0, 0.4 * DAY_S if b < 12 else 600.0, n)
        ts = ts if b % 3 == 2 else np.sort(ts)      # in order, or now and then not
        anomaly = rng.uniform(0, 1, n)
        anomaly[rng.random(n) < 0.05] = np.nan
        incident = rng.random(n) < 0.1
        moved = [banks[0].adapt(keys[i], st[i], x[i], float(ts[i]), float(anomaly[i]), 1.0,
                                bool(incident[i])) for i in range(n)]
        assert banks[1].adapt_batch(keys, st, x, ts, anomaly, np.ones(n), incident) \
            == sum(moved)
    one, two = banks
    assert one.counters == two.counters and one.counters["adapted"] > 0
    assert one.counters["refused_rate"] > 0 and one.counters["refused_margin"] > 0
    assert one.audit.records == two.audit.records
    assert any(r["change"] == "adapted" for r in one.audit.records)
    for key in ("dev/0", "dev/1"):
        for state in states:
            assert one.get(key, state) == two.get(key, state)
            a, b = one.baseline(key, state), two.baseline(key, state)
            assert a is not None and b is not None
            assert np.array_equal(a.median, b.median) and np.array_equal(a.scale, b.scale)


def test_states_of_is_state_of_per_row() -> None:
    bank = StateBank(LearningConfig(load_feature="rms_g", load_edges=(0.5, 1.5)), NAMES)
    x = rows(np.random.default_rng(2), 6)
    x[1, RMS], x[2, RMS] = np.nan, 2.0
    rpm = np.array([1800.0, 0.0, np.nan, -5.0, 600.0, np.inf])
    assert bank.states_of(rpm, x) == [bank.state_of(float(r), row)
                                      for r, row in zip(rpm, x, strict=True)]
    assert bank.states_of(rpm, x, 1.0) == [bank.state_of(float(r), row, 1.0)
                                           for r, row in zip(rpm, x, strict=True)]


def test_baseline_is_rebuilt_when_its_state_changes() -> None:
    bank, _ = ready_bank()
    x = rows(np.random.default_rng(4), 1, rms=1.5)[0]
    state = bank.state_of(1800.0)
    first = bank.baseline("dev/0", state)
    assert first is bank.baseline("dev/0", state)           # unchanged: the same object
    assert bank.adapt("dev/0", state, x, 100.0, 0.1, 1.0, False)
    moved = bank.baseline("dev/0", state)
    assert moved is not first and moved is not None and first is not None
    assert not np.array_equal(moved.median, first.median)
    bank.rebaseline("dev/0", state, who="test", why="test", at_s=200.0)
    assert bank.baseline("dev/0", state) is None
