"""Issue 10's closed loop on real parts: false alarms -> operator labels -> retrained bundle
-> staged rollout -> fewer false alarms, faults still detected.

Real mosquitto, the real gateway, three real agents fed by simulated nodes in accelerated
real time (``scripts/evaluate_learning.py``'s ``rollout_loop``, whose figures go into
docs/evaluation.md). Two machines are healthy but get a louder neighbour after
commissioning (a benign disturbance: broadband noise x2.5), one grows a bearing fault. The
gateway stores their alerts; an operator labels them (stored, and sent to the devices as
signed ``cmd/feedback``), plus the fleet's earlier labelled alerts, rendered as in
tests/test_retrain.py; ``models.retrain`` builds a signed candidate
from the gateway store, judged on held-back feedback and on known faults;
``gateway.deploy`` rolls it out canary first; every window the agents score is counted per
model version, so the alert rates before and after are measured on the same running agents.
The fault stays on from before the rollout to the end: the faulty machine's incident goes on
across the switch (same id, raised once, never cleared, alerting on the new model) and its
healthy baseline is kept (no commissioning on the new model; docs/learning.md "Model switch").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_retrain import evaluation

from agent.features import DEFAULT_SPEC
from foreshock import bundle as fb
from models.build_default import DefaultBuild, training_sets
from models.retrain import next_version


def test_labelled_false_alarms_retrain_roll_out_and_stop(mosquitto: Any, tmp_path: Path
                                                        ) -> None:
    ev = evaluation()
    sets = training_sets(DefaultBuild(reduced=True, sim_seconds=3.0), DEFAULT_SPEC,
                         tmp_path / "no-data")[0]
    r = ev.rollout_loop(mosquitto.url, tmp_path, sets)
    kinds = ev.LOOP_KINDS
    before = r["before"]
    assert before["bench-0"] > 0.5 and before["bench-1"] > 0.5, before   # false alarms
    assert before["bench-2"] > 0.5, before
    assert set(r["labelled"].values()) == set(kinds)
    res = r["retrain"]
    assert res.accepted, (res.reason, res.current, res.candidate, res.evidence)
    evidence = res.evidence
    assert evidence["candidate"]["fault_machines_detected"] >= \
        evidence["current"]["fault_machines_detected"]
    assert evidence["candidate"]["floor"] <= 1.5 * evidence["current"]["floor"]
    new = r["new"]
    assert new == next_version(r["old"]) and fb.parse_semver(new) > fb.parse_semver(r["old"])
    # canary first, then everyone
    assert r["rollout"] == "complete" and r["rollout_summary"] == {"active": 3}, r
    canary = [s for state, s in r["progress"] if state == "canary"]
    assert canary and all(sum(s.values()) == 1 for s in canary)
    assert r["running"] == dict.fromkeys(kinds, new)
    # the same machines, still disturbed, the bearing faulty throughout, on the new model
    after = r["after"]
    print(f"alert rates before {before} after {after}; fault {r['fault']}")
    assert after["bench-0"] < before["bench-0"] and after["bench-1"] < before["bench-1"]
    assert after["bench-2"] > 0.5, after
    # the faulty machine's incident continues across the switch on its healthy baseline
    f = r["fault"]
    assert r["confirmed_on_device"]                   # the signed label reached the device
    assert f["incident"] is not None and f["incident_after"] == f["incident"], f
    assert f["incidents_seen"] == [f["incident"]], f  # one incident, raised once, never cleared
    assert f["raised"] == 1 and f["cleared"] == 0, f
    assert f["records_on_new"] > 0 and f["stored_on_new"] > 0, f   # still alerting, stored
    assert f["stored_incidents"] == [f["incident"]], f
    assert f["stored_raised"] == 1 and f["stored_cleared"] == 0, f
    assert f["switch_baseline"] == "kept" and f["switch_incident"] == f["incident"], f
    assert f["commissioning_windows_after"] == 0 and f["commissioned_events"] == 1, f
    assert f["baseline_kept"] and f["state_baselines_kept"], f
