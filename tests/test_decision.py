"""Decider: commissioning, learned threshold, k-of-n, one incident per episode, explanation."""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.config import DecisionConfig
from agent.decision import Decider, Observation
from agent.features import DEFAULT_SPEC, Baseline
from foreshock.messages import validate_record

NAMES = DEFAULT_SPEC.feature_names
F = len(NAMES)


def score_fn(baseline: Baseline, values: np.ndarray) -> np.ndarray:
    z = baseline.z(values)
    return np.sqrt(np.mean(z * z, axis=1)).astype(np.float32)


def make(**kw: Any) -> Decider:
    cfg = DecisionConfig(commission_s=10.0, k=3, n=5, update_interval_s=100.0, **kw)
    return Decider(cfg, NAMES, score_fn=score_fn, model={"name": "t", "version": "1.0.0"},
                   orders={"bpfo": 3.5848, "bpfi": 5.4152, "bsf": 2.357, "ftf": 0.39828})


def feats(rng: np.random.Generator, level: float = 0.0) -> np.ndarray:
    x = (1.0 + 0.05 * rng.standard_normal(F)).astype(np.float32)
    x[NAMES.index("env_bpfo_snr")] = 1.0 + level * 10
    x[NAMES.index("vel_rms_mm_s")] = 1.0 + level * 4
    return x


def commission(d: Decider, rng: np.random.Generator) -> float:
    t = 0.0
    while d.baseline("k") is None:
        event = d.commission("k", feats(rng), t)
        t += 0.5
    assert event is not None and event["detail"]["threshold_source"] in ("commissioning", "config")
    return t


def obs(d: Decider, x: np.ndarray, t: float) -> Observation:
    z = d.baseline("k").z(x[None])[0]
    return Observation(0, t, x, z, float(score_fn(d.baseline("k"), x[None])[0]),
                       "outer_race", 0.9, 1797.0)


def test_no_alert_while_commissioning_and_threshold_learned() -> None:
    rng = np.random.default_rng(0)
    d = make()
    assert d.decide("k", obs_stub(0.0)) is None
    t = commission(d, rng)
    assert t >= 10.0 and d.threshold("k") > 0
    alerts = [d.decide("k", obs(d, feats(rng), t + i)) for i in range(200)]
    assert not any(alerts)


def obs_stub(t: float) -> Observation:
    x = np.ones(F, np.float32)
    return Observation(0, t, x, None, 99.0, "normal", 1.0)


def test_one_incident_per_episode_with_k_of_n_and_hysteresis() -> None:
    rng = np.random.default_rng(1)
    d = make()
    t = commission(d, rng)
    out = []
    for _i in range(2):     # two bad windows in five: not enough for k=3
        out.append(d.decide("k", obs(d, feats(rng, 1.0), t)))
        t += 1
    out += [d.decide("k", obs(d, feats(rng), t + j)) for j in range(5)]
    t += 5
    assert not any(out)
    statuses = []
    raised: dict = {}
    for _ in range(30):
        body = d.decide("k", obs(d, feats(rng, 1.0), t))
        t += 1
        if body:
            statuses.append(body["status"])
            validate_record("alert", {"seq": 1, "ts": t, "body": body})
            raised = body if body["status"] == "raised" else raised
    assert statuses == ["raised"]
    e = raised["explanation"]
    assert e["defect"]["name"] == "bpfo"
    assert abs(e["defect"]["hz"] - 3.5848 * 1797 / 60) < 0.1
    assert e["top_features"][0]["z"] > 3 and e["zone"] in "ABCD"
    assert set(e["features_z"]) == set(NAMES)
    assert abs(e["features_z"][e["top_features"][0]["name"]] - e["top_features"][0]["z"]) <= 0.01
    assert "vs threshold" in e["summary"] and raised["model"]["version"] == "1.0.0"
    cleared = [d.decide("k", obs(d, feats(rng), t + j)) for j in range(10)]
    assert [b["status"] for b in cleared if b] == ["cleared"]
    assert next(b for b in cleared if b)["incident"] == raised["incident"]


def test_update_on_severity_change_and_periodically() -> None:
    rng = np.random.default_rng(2)
    d = make(threshold=2.0)
    t = commission(d, rng)
    bodies = []
    x = feats(rng)
    z = d.baseline("k").z(x[None])[0]
    for i in range(400):
        score = 2.5 if i < 200 else 10.0
        body = d.decide("k", Observation(0, t + i, x, z, score, "ball", 0.8, 1797.0))
        if body:
            bodies.append((i, body["status"], body["severity"]))
    assert bodies[0] == (2, "raised", "warning")
    assert (200, "updated", "critical") in bodies
    periodic = [b for b in bodies if b[1] == "updated" and b[0] != 200]
    assert [b[0] for b in periodic] == [102, 300]


def test_fixed_threshold_and_rebaseline() -> None:
    rng = np.random.default_rng(3)
    d = make(threshold=7.0)
    commission(d, rng)
    assert d.threshold("k") == 7.0
    d.rebaseline("k")
    assert d.baseline("k") is None


def test_decide_batch_matches_window_by_window() -> None:
    """The vectorised k-of-n path gives the same incident records as decide() per window,
    whatever the batch boundaries and score sequence (raise, update, clear, raise again)."""
    rng = np.random.default_rng(7)
    levels = np.concatenate([np.zeros(30), np.full(25, 3.0), np.zeros(40), np.full(12, 4.0),
                             rng.choice([0.0, 3.0], 60), np.zeros(20)])
    one, many = make(), make()
    t0 = commission(one, np.random.default_rng(1))
    commission(many, np.random.default_rng(1))
    rows = [feats(rng, lv) for lv in levels]
    observations = [obs(one, x, t0 + 0.5 * i) for i, x in enumerate(rows)]
    expected = [(i, b) for i, o in enumerate(observations)
                if (b := one.decide("k", o)) is not None]
    got: list[tuple[int, dict]] = []
    start = 0
    for size in rng.integers(1, 40, size=100):
        chunk = observations[start:start + int(size)]
        if not chunk:
            break
        anomaly = np.array([o.anomaly for o in chunk])
        got += [(start + i, b) for i, b in many.decide_batch(
            "k", anomaly, lambda i, c=chunk: c[i])]   # type: ignore[misc]
        start += len(chunk)
    assert [(i, b["status"], b["severity"]) for i, b in got] == \
        [(i, b["status"], b["severity"]) for i, b in expected]
    assert {b["status"] for _, b in expected} >= {"raised", "cleared"}
    assert len([b for _, b in expected if b["status"] == "raised"]) >= 2


def test_reference_is_thinned_and_a_switch_carries_the_incident_on_the_new_scale() -> None:
    """Commissioning keeps at most REFERENCE_ROWS evenly spaced windows; another decider
    (a switched model scoring on twice the scale) takes the stream over: same baseline,
    same incident (updated, never raised again), threshold from its own rule on the
    reference; without a reference it falls back to its floor."""
    from agent.decision import REFERENCE_ROWS

    rng = np.random.default_rng(7)
    d = make()
    values = []
    t = 0.0
    while d.baseline("k") is None:
        values.append(feats(rng))
        d.commission("k", values[-1], t)
        t += 0.02                                  # 501 windows in 10 s
    rows, base = d.reference("k")
    assert len(values) > REFERENCE_ROWS and rows.shape == (REFERENCE_ROWS, F)
    np.testing.assert_array_equal(rows[0], values[0])
    np.testing.assert_array_equal(rows[-1], values[-1])
    assert base is d.baseline("k")
    for i in range(5):
        d.decide("k", obs(d, feats(rng, level=1.0), t + i))
    incident = d.stream("k").incident
    assert incident is not None

    def double(baseline: Baseline, x: np.ndarray) -> np.ndarray:
        return 2 * score_fn(baseline, x)

    cfg = DecisionConfig(commission_s=10.0, k=3, n=5, update_interval_s=100.0)
    new = Decider(cfg, NAMES, score_fn=double, model={"name": "t2", "version": "2.0.0"},
                  floor=0.01, adapt={"quantile": 0.9, "factor": 1.2, "margin": 0.1})
    threshold, source = new.rethreshold(d.reference("k"))
    scores = 2 * score_fn(base, rows).astype(np.float64)
    assert source == "reference"
    assert threshold == float(np.quantile(scores, 0.9) * 1.2 + 0.1)
    new.carry("k", d.stream("k"), threshold)
    s = new.stream("k")
    assert s.baseline is d.baseline("k") and s.reference is d.reference("k")
    assert s.incident is not None and s.incident.id == incident.id
    assert list(s.recent) == list(d.stream("k").recent)
    statuses = []
    for i in range(5, 40):
        x = feats(rng, level=1.0 if i < 20 else 0.0)
        o = obs(d, x, t + i)
        body = new.decide("k", Observation(0, o.at_s, x, o.z, 2 * o.anomaly, o.fault,
                                           o.fault_probability, o.rpm))
        if body is not None:
            assert body["incident"] == incident.id and body["model"]["name"] == "t2"
            statuses.append(body["status"])
    assert "raised" not in statuses and statuses[-1] == "cleared"
    assert new.rethreshold(None) == (0.01, "no_reference")
