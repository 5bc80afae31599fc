"""The evaluation's scoring rules (models.evaluate, models.eval_life, models.metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from models.eval_life import choose_policy, model_outcome, outcome, rms_rule
from models.evaluate import Tested, summarise
from models.metrics import UNKNOWN, confusion, decide, device_decision


def series(scores: np.ndarray, rms: np.ndarray | None = None) -> dict:
    t = np.arange(len(scores)) * 10.0
    return {"name": "b", "t_s": t, "scores": scores.astype(np.float32),
            "rms": scores if rms is None else rms, "commission": t < 600.0,
            "life_s": float(t[-1])}


def test_outcome_first_half_and_clean_warning() -> None:
    n = 400  # 3990 s of life
    quiet = np.zeros(n)
    late = quiet.copy()
    late[300:] = 1  # alert at 3000 s: second half, 990 s before the end
    o = outcome(series(late), late.astype(bool), 3, 5)
    assert o["first_alert_s"] == 3020.0 and not o["first_half_alert"] and o["clean_warning"]
    early = quiet.copy()
    early[100:] = 1
    o = outcome(series(early), early.astype(bool), 3, 5)
    assert o["first_half_alert"] and not o["clean_warning"]
    last = quiet.copy()
    last[-20:] = 1  # under 10 minutes before the end
    o = outcome(series(last), last.astype(bool), 3, 5)
    assert o["alert_before_failure"] and not o["clean_warning"]
    assert outcome(series(quiet), quiet.astype(bool), 3, 5)["first_alert_s"] is None


def test_commissioning_windows_never_alert() -> None:
    s = np.zeros(200)
    s[:60] = 9.0  # inside the first 10 minutes
    assert outcome(series(s), s > 1, 3, 5)["first_alert_s"] is None


def test_rms_rule_and_policy_choice() -> None:
    rng = np.random.default_rng(0)
    rms = 1.0 + 0.01 * rng.standard_normal(400)
    rms[350:] += 1.0
    o = rms_rule(series(np.zeros(400), rms))
    assert o["first_alert_s"] == pytest.approx(3520.0)
    scores = np.abs(rng.normal(0.5, 0.1, 400))
    scores[320:] = 5.0
    train = [series(scores)] * 3
    policy = choose_policy(train, floor=1.0)
    assert all(model_outcome(s, policy)["clean_warning"] for s in train)


def test_decisions_and_summary() -> None:
    a = np.array([0.1, 5.0, 5.0], np.float32)
    p = np.array([[0.9, 0.05, 0.05, 0, 0, 0], [0.1, 0.8, 0.1, 0, 0, 0],
                  [0.2, 0.3, 0.3, 0.2, 0, 0]], np.float32)
    assert decide(a, p, 1.0).tolist() == [0, 1, 1]
    assert device_decision(a, p, 1.0).tolist() == [0, 1, UNKNOWN]
    tested = [Tested("f1", 1, np.array([1, 1, 0]), np.zeros(3, bool)),
              Tested("f2", 2, np.array([1, 1, 2]), np.zeros(3, bool)),
              Tested("n", 0, np.array([0, 0, 0]), np.array([False, True, False]))]
    r = summarise(tested)
    assert r["files"] == 3 and r["files_right"] == 2
    assert r["normal_alert_windows"] == 1
    assert r["wrong_files"] == ["f2: outer_race -> inner_race"]
    assert confusion(np.array([0, 1]), np.array([0, 2]))[1][2] == 1


def test_report_rewrite_keeps_the_learning_block(tmp_path) -> None:
    """write_report regenerates everything except the block scripts/evaluate_learning.py
    owns, which stays byte for byte (and a report without one gets none)."""
    import json

    from models.evaluate import RESULTS, SUMMARY
    from models.report import write_report

    results = json.loads(RESULTS.read_text())
    headline = json.loads(SUMMARY.read_text())["headline"]
    block = ("<!-- BEGIN learning -->\n## Continuous learning\n\n| a | b |\n|---|---|\n"
             "| 1 | 2 |\n<!-- END learning -->")
    doc = tmp_path / "evaluation.md"
    doc.write_text("# Evaluation\n\nold text\n\n" + block + "\n\ntrailing old text\n")
    write_report(doc, results, headline)
    text = doc.read_text()
    assert text.count(block) == 1
    assert "old text" not in text and "## Targets" in text
    write_report(doc, results, headline)  # idempotent: still exactly one block
    assert doc.read_text() == text
    fresh = tmp_path / "fresh.md"
    write_report(fresh, results, headline)
    assert "BEGIN learning" not in fresh.read_text()
