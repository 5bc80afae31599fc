"""A model switch keeps each machine's healthy baseline (docs/learning.md, "Model switch").

Real parts: the shipped default bundle (onnxruntime) as the running model, a second real
signed bundle (``test_inference.build_bundle``: another ONNX detector on another scale),
the real Agent with its SQLite outbox and state dir, and the operating-state bank's files.
The machine's vibration jumps (a fault) after commissioning; the switch happens while the
incident is open.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_agent_service import frames
from test_inference import build_bundle
from test_ota import offer_to, run_until

from agent.baselines import AUDIT_FILE, BANK_FILE
from agent.config import AgentConfig
from agent.decision import REFERENCE_ROWS
from agent.features import SNAPSHOT_SPEC
from agent.pipeline import Pipeline, WindowResult
from agent.service import Agent
from agent.sources import ReplaySource
from foreshock import bundle as fsbundle
from foreshock import messages, topics

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "bundles" / "foreshock-default" / "0.1.1"
SHIPPED_KEY = ROOT / "models" / "bundles" / "foreshock-dev.pub"
KEY = ("node1", 0)


def config(state: Path, **decision: float) -> AgentConfig:
    return AgentConfig.for_device("pump-s", "plant1", "", state,
                                  model={"bundle": str(SHIPPED),
                                         "trusted_keys": [str(SHIPPED_KEY)]},
                                  decision={"commission_s": 4.0, **decision})


def run(agent: Agent, until: Any = None, limit: int = 3000) -> None:
    for _ in range(limit):
        if (until is not None and until()) or (agent.source.exhausted and not agent.queue):
            return
        agent.step(0.0)


def records(agent: Agent, kind: str) -> list[dict[str, Any]]:
    return [r.body for _, r in agent.outbox.pending(kind, 100_000)]


def model_events(agent: Agent) -> list[dict[str, Any]]:
    return [e["detail"] for e in records(agent, "event")
            if e["type"] == "model" and e["detail"]["status"] == "loaded"]


def commissioned_by(agent: Agent, model: str) -> list[dict[str, Any]]:
    return [e for e in records(agent, "event") if e["detail"].get("status") == "commissioned"
            and e["detail"]["model"]["name"] == model]


def audit(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / AUDIT_FILE).read_text().splitlines()]


def rule(pipeline: Pipeline, rows: np.ndarray, base: Any) -> float:
    """The commissioning rule of ``pipeline``'s bundle, computed here from its parts."""
    b = pipeline.bundle
    assert b is not None and b.adapt is not None
    z = base.z(rows)[:, pipeline.input_index].astype(np.float32)
    scores = np.asarray(pipeline.detector.score(z).anomaly, np.float64)
    own = np.quantile(scores[np.isfinite(scores)], b.adapt["quantile"]) * b.adapt["factor"] \
        + b.adapt["margin"]
    return float(max(b.anomaly_floor, own))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_bundle(tmp_path_factory.mktemp("tiny"))


def test_switch_with_an_open_incident_keeps_the_healthy_baseline_and_the_incident(
        tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    seen: list[WindowResult] = []
    agent = Agent(config(tmp_path, update_interval_s=5.0), ReplaySource(frames(700, 150)),
                  on_result=seen.append)
    try:
        decider = agent.pipeline.decider
        run(agent, lambda: decider.stream(KEY).incident is not None)
        s = decider.stream(KEY)
        assert s.incident is not None and agent.model_info["version"] == "0.1.1"
        incident, healthy = s.incident.id, s.baseline.median.copy()
        rows, base = s.reference
        assert rows.shape[0] <= REFERENCE_ROWS
        bank = agent.learning
        assert bank is not None
        state = next(iter(bank.streams["node1/0"]))
        bank_healthy = list(bank.streams["node1/0"][state].median)
        old_threshold = s.threshold

        assert agent.replace_model(tiny[0], [tiny[1]])
        new = agent.pipeline
        assert agent.model_info == {"name": "tiny", "version": "1.2.3"}
        assert new.learning is bank                     # attached before the new model runs
        # (b) the threshold is the new model's commissioning rule on the reference windows
        expected = rule(new, rows, base)
        assert new.decider.threshold(KEY) == pytest.approx(expected, rel=1e-6)
        assert expected != pytest.approx(old_threshold, rel=1e-3)
        assert bank.thresholds["node1/0"] == pytest.approx(expected, rel=1e-6)
        event = model_events(agent)[-1]
        assert event["baselines"] == "kept"
        assert event["streams"]["node1/0"]["threshold_source"] == "reference"
        assert event["streams"]["node1/0"]["incident"] == incident
        seen.clear()
        run(agent)                                      # the fault goes on
        alerts = records(agent, "alert")
    finally:
        agent.close()

    after = agent.pipeline.decider.stream(KEY)
    # the baseline is the healthy one, not the faulty windows' (no commissioning again)
    np.testing.assert_array_equal(after.baseline.median, healthy)
    assert list(bank.streams["node1/0"][state].median) == bank_healthy
    assert seen and not any(r.commissioning for r in seen)
    assert all(r.anomaly > r.threshold == pytest.approx(expected) for r in seen)
    assert after.incident is not None and after.incident.id == incident
    assert {a["incident"] for a in alerts} == {incident}
    assert [a["status"] for a in alerts].count("raised") == 1
    later = [a for a in alerts if a["model"]["name"] == "tiny"]
    assert later and all(a["status"] == "updated" for a in later)
    # (4) the threshold change is audited
    change = [r for r in audit(tmp_path) if r["change"] == "threshold"]
    assert len(change) == 1 and change[0]["who"] == "model switch"
    assert change[0]["old_threshold"] == pytest.approx(old_threshold)
    assert change[0]["threshold"] == pytest.approx(expected)
    assert change[0]["previous_model"]["version"] == "0.1.1"
    assert change[0]["model"] == {"name": "tiny", "version": "1.2.3"}


def commissioned(state: Path) -> tuple[np.ndarray, Any, float]:
    """Run a healthy machine through commissioning; returns its reference and threshold."""
    agent = Agent(config(state), ReplaySource(frames(80, 10_000)))
    try:
        run(agent)
        s = agent.pipeline.decider.stream(KEY)
        assert s.baseline is not None and s.reference is not None
        return s.reference[0], s.reference[1], s.threshold
    finally:
        agent.close()


def test_restart_then_switch_uses_the_saved_reference(tmp_path: Path,
                                                      tiny: tuple[Path, Path]) -> None:
    rows, base, threshold = commissioned(tmp_path)
    saved = json.loads((tmp_path / BANK_FILE).read_text())
    ref = saved["references"]["node1/0"]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(ref["rows_f32"]), "<f4")
                                  .reshape(ref["count"], -1), rows)
    assert saved["model"] == {"name": "foreshock-default", "version": "0.1.1"}

    agent = Agent(config(tmp_path), ReplaySource(frames(40, 10_000, seed=1)))
    try:
        assert agent.learning is not None and agent.learning.thresholds["node1/0"] == threshold
        assert agent.replace_model(tiny[0], [tiny[1]])
        expected = rule(agent.pipeline, rows, base)
        assert agent.learning.thresholds["node1/0"] == pytest.approx(expected, rel=1e-6)
        assert model_events(agent)[-1]["streams"]["node1/0"]["threshold_source"] == "reference"
        run(agent)
        s = agent.pipeline.decider.stream(KEY)
        assert s.baseline is not None and s.threshold == pytest.approx(expected, rel=1e-6)
        assert not commissioned_by(agent, "tiny")
    finally:
        agent.close()
    again = json.loads((tmp_path / BANK_FILE).read_text())
    assert again["model"] == {"name": "tiny", "version": "1.2.3"}
    assert again["thresholds"]["node1/0"] == pytest.approx(expected, rel=1e-6)


def test_old_bank_without_reference_keeps_the_baseline_at_the_bundle_floor(
        tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    commissioned(tmp_path)
    path = tmp_path / BANK_FILE
    data = json.loads(path.read_text())
    old = {k: data[k] for k in ("schema", "names", "thresholds", "streams")}  # older writer
    path.write_text(json.dumps(old))

    agent = Agent(config(tmp_path), ReplaySource(frames(40, 10_000, seed=2)))
    try:
        assert agent.learning is not None and agent.learning.references == {}
        assert agent.learning.model is None
        assert agent.replace_model(tiny[0], [tiny[1]])
        floor = agent.pipeline.decider.floor
        assert floor == 0.5
        event = model_events(agent)[-1]["streams"]["node1/0"]
        assert event["threshold_source"] == "no_reference" and event["threshold"] == floor
        run(agent)
        s = agent.pipeline.decider.stream(KEY)
        assert s.baseline is not None and s.threshold == floor     # kept, not commissioned
        assert not commissioned_by(agent, "tiny")
    finally:
        agent.close()
    change = [r for r in audit(tmp_path) if r["change"] == "threshold"]
    assert change[-1]["threshold_source"] == "no_reference" and change[-1]["threshold"] == floor


def test_another_feature_spec_commissions_again_and_says_so(tmp_path: Path) -> None:
    other, pub = build_bundle(tmp_path / "snap", spec=SNAPSHOT_SPEC)
    commissioned(tmp_path / "state")
    bank_file = (tmp_path / "state" / BANK_FILE).read_bytes()
    agent = Agent(config(tmp_path / "state"), ReplaySource(frames(40, 10_000, seed=3)))
    try:
        run(agent, lambda: agent.counters["windows_processed"] > 0)
        healthy = agent.learning
        assert agent.replace_model(other, [pub])
        assert agent.pipeline.spec.hash == SNAPSHOT_SPEC.hash
        event = model_events(agent)[-1]
        assert event["baselines"] == "commissioning: feature spec changed"
        assert event["streams"]["node1/0"]["reason"] == "feature spec changed"
        health = agent.pipeline.streams()["node1/0"]
        assert health["commissioning"] and health["commission_reason"] == "feature spec changed"
        # the healthy operating-state baselines are parked, not attached to the new features
        assert agent.learning is None and agent.pipeline.learning is None
        assert healthy is not None and healthy.streams["node1/0"]
    finally:
        agent.close()
    saved = json.loads((tmp_path / "state" / BANK_FILE).read_text())
    assert saved["streams"] == json.loads(bank_file)["streams"]
    assert [r for r in audit(tmp_path / "state") if r["change"] == "commissioning"
            and r["why"] == "feature spec changed"]


def test_a_rebaseline_under_another_spec_also_resets_the_parked_baselines(
        tmp_path: Path) -> None:
    """The operator asked to forget the machine's baselines: switching back to the spec
    they were learned on must not resume them."""
    other, pub = build_bundle(tmp_path / "snap", spec=SNAPSHOT_SPEC)
    commissioned(tmp_path / "state")
    agent = Agent(config(tmp_path / "state"), ReplaySource(frames(40, 10_000, seed=4)))
    try:
        run(agent, lambda: agent.counters["windows_processed"] > 0)
        parked = agent.learning
        assert parked is not None
        ready = [n for n, sb in parked.streams["node1/0"].items() if sb.status == "ready"]
        assert ready and "node1/0" in parked.thresholds
        assert agent.replace_model(other, [pub])
        agent._command("rebaseline", {"channel": 0, "issued_by": "op", "why": "bearing swap"})
        assert agent.replace_model(SHIPPED, [SHIPPED_KEY])       # back to the first spec
        assert agent.learning is parked
        assert all(sb.status == "learning" for sb in parked.streams["node1/0"].values())
        assert "node1/0" not in parked.thresholds
    finally:
        agent.close()
    saved = json.loads((tmp_path / "state" / BANK_FILE).read_text())
    assert all(sb["status"] == "learning" for sb in saved["streams"]["node1/0"].values())
    assert [r for r in audit(tmp_path / "state") if r["change"] == "reset"
            and r["why"] == "bearing swap" and r["stream"] == "node1/0"]


def test_a_configured_model_changed_between_runs_gets_thresholds_on_its_scale(
        tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    rows, base, threshold = commissioned(tmp_path)
    cfg = AgentConfig.for_device("pump-s", "plant1", "", tmp_path,
                                 model={"bundle": str(tiny[0]), "trusted_keys": [str(tiny[1])]},
                                 decision={"commission_s": 4.0})
    agent = Agent(cfg, ReplaySource(frames(40, 10_000, seed=4)))
    try:
        assert agent.learning is not None and agent.learning.model == agent.model_info
        expected = rule(agent.pipeline, rows, base)
        assert agent.learning.thresholds["node1/0"] == pytest.approx(expected, rel=1e-6)
        assert expected != pytest.approx(threshold, rel=1e-3)
        run(agent)
        assert agent.pipeline.decider.threshold(KEY) == pytest.approx(expected, rel=1e-6)
        assert not commissioned_by(agent, "tiny")
    finally:
        agent.close()


def test_ota_promote_and_rollback_continue_the_open_incident(tmp_path: Path) -> None:
    """Through the real OTA receiver: a re-versioned, re-signed copy of the shipped bundle
    is promoted while the machine's incident is open, then rolled back by a signed command;
    the incident is the same one throughout, raised once, and the baseline the healthy one."""
    key = fsbundle.generate_signing_key()
    path = tmp_path / "0.2.0"
    shutil.copytree(SHIPPED, path)
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    fsbundle.write_manifest(path, {**manifest, "version": "0.2.0"})
    fsbundle.sign(path, key)
    keys = {"pem": fsbundle.public_key_pem(key.public_key()), "bundles": {"0.2.0": path}}
    pem = tmp_path / "site.pub"
    pem.write_bytes(keys["pem"])
    cfg = AgentConfig.for_device("pump-o", "plant1", "", tmp_path / "state",
                                 model={"trusted_keys": [str(pem)]},
                                 decision={"commission_s": 4.0, "update_interval_s": 5.0})
    agent = Agent(cfg, ReplaySource(frames(900, 150)))
    try:
        decider = agent.pipeline.decider
        assert run_until(agent, lambda: decider.stream(KEY).incident is not None)
        s = decider.stream(KEY)
        incident, healthy, threshold = s.incident.id, s.baseline.median.copy(), s.threshold
        offer_to(agent, keys, "0.2.0", "r-1")
        assert run_until(agent, lambda: agent.model_info["version"] == "0.2.0")
        promoted = agent.pipeline.decider.stream(KEY)
        assert promoted.incident is not None and promoted.incident.id == incident
        # same detector and rule on the same (all kept) commissioning windows: same threshold
        assert promoted.threshold == pytest.approx(threshold, rel=1e-6)
        run_until(agent, lambda: agent.counters["windows_processed"] > 300)
        rollback = messages.command_message("rollback", {"rollout_id": "r-1"},
                                            issued_by="ops", ts=time.time(),
                                            command_id="rb-1", key=key)
        agent._on_command(topics.command("plant1", "pump-o", "rollback"), rollback)
        assert run_until(agent, lambda: agent.model_info["version"] == "0.1.1")
        run_until(agent, lambda: False)
        after = agent.pipeline.decider.stream(KEY)
        alerts = records(agent, "alert")
        switches = model_events(agent)
    finally:
        agent.close()
    assert agent.counters["bad_commands"] == 0
    assert [e["running"]["version"] for e in switches] == ["0.2.0", "0.1.1"]
    assert all(e["streams"]["node1/0"]["incident"] == incident for e in switches)
    np.testing.assert_array_equal(after.baseline.median, healthy)
    assert after.incident is not None and after.incident.id == incident
    assert {a["incident"] for a in alerts} == {incident}
    assert [a["status"] for a in alerts].count("raised") == 1
    assert {a["model"]["version"] for a in alerts} == {"0.1.1", "0.2.0"}


def test_the_twin_of_the_running_model_keeps_every_threshold(tmp_path: Path) -> None:
    """A re-versioned copy of the shipped bundle (same detector, same rule) re-derives the
    same threshold from the reference as from the same rows at commissioning."""
    twin = tmp_path / "twin"
    shutil.copytree(SHIPPED, twin)
    rows, base, _ = commissioned(tmp_path / "state")
    agent = Agent(config(tmp_path / "state"), ReplaySource([]))
    try:
        assert agent.replace_model(twin, [SHIPPED_KEY])     # same name and version: kept
        assert model_events(agent)[-1]["streams"] == {}
        assert agent.learning is not None
        assert agent.learning.thresholds["node1/0"] == pytest.approx(
            rule(agent.pipeline, rows, base))
    finally:
        agent.close()
