"""FEMTO run-to-failure evaluation (models.eval_life): candidate anomaly heads, channels
and policies chosen on training bearings, decisions as the device makes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.eval_life import (
    DEFAULT_GRID,
    ROBUSTNESS_SCALES,
    PolicyGrid,
    anomaly_heads,
    choose_design,
    femto_series,
    main,
    model_outcome,
    score_peaks,
    view,
)
from models.policy import Policy
from models.train import (
    ANOMALY_FEATURES,
    INPUT_FEATURES,
    LEARNED_SHARE,
    TrainConfig,
    anomaly_weights,
    fit_detector,
    prior_anomaly_weights,
)

N = 400  # windows of 10 s: 3990 s of life, commissioning the first 60


def bearing(streams: dict[tuple[float, str], np.ndarray]) -> dict:
    t = np.arange(N) * 10.0
    first = next(iter(streams.values()))
    return {"name": "b", "t_s": t, "scores": first, "streams": streams, "rms": first,
            "commission": t < 600.0, "life_s": float(t[-1])}


def test_anomaly_weight_share() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1, (400, len(INPUT_FEATURES))).astype(np.float32)
    faulty = np.arange(400) >= 200
    z[faulty, INPUT_FEATURES.index("rms_g")] += 4.0
    prior = prior_anomaly_weights()
    assert np.array_equal(anomaly_weights(z, faulty, share=0.0), prior)
    assert np.array_equal(anomaly_weights(z, faulty), anomaly_weights(z, faulty,
                                                                      share=LEARNED_SHARE))
    learned = anomaly_weights(z, faulty, share=1.0)
    assert learned.sum() == pytest.approx(1.0) and (learned >= 0).all()
    assert learned.argmax() == INPUT_FEATURES.index("rms_g")
    assert learned.max() > 2 * prior.max()
    half = anomaly_weights(z, faulty, share=0.5)
    assert np.allclose(half, (prior + learned) / 2, atol=1e-6)
    assert {INPUT_FEATURES[i] for i in np.flatnonzero(prior)} == set(ANOMALY_FEATURES)
    with pytest.raises(ValueError, match="share"):
        anomaly_weights(z, faulty, share=1.5)


def test_streams_alert_on_the_first_incident_with_the_deciders_strict_rule() -> None:
    h = np.full(N, 0.5, np.float32)
    v = np.full(N, 0.5, np.float32)
    h[300:] = 5.0   # 3000 s
    v[250:] = 5.0   # 2500 s: the vertical stream raises first
    s = bearing({(0.0, "horizontal"): h, (0.0, "vertical"): v})
    policy = Policy(floor=1.0, quantile=0.99, factor=1.0, margin=0.0, k=3, n=5)
    both = model_outcome(view(s, 0.0, ("horizontal", "vertical")), policy)
    assert both["first_alert_s"] == 2520.0 and both["threshold"] == [1.0, 1.0]
    assert model_outcome(view(s, 0.0, ("horizontal",)), policy)["first_alert_s"] == 3020.0
    at_threshold = np.full(N, 0.5, np.float32)
    at_threshold[300:] = 1.0  # equal to the threshold: the Decider needs score > threshold
    flat = bearing({(0.0, "horizontal"): at_threshold})
    assert model_outcome(flat, policy)["first_alert_s"] is None


def test_score_peaks() -> None:
    s = np.zeros(N, np.float32)
    s[100] = 9.0        # a one-window spike in the first half is not held 3 of 5
    s[120:123] = 2.0    # held three windows
    s[300:305] = 4.0    # clean-warning window
    s[-5:] = 8.0        # last 10 minutes: not part of the warning window
    peaks = score_peaks(bearing({(0.0, "horizontal"): s}), 3, 5)
    assert peaks == {"first_half": 2.0, "warning_window": 4.0}


def test_the_head_and_channels_that_warn_cleanly_on_training_bearings_are_chosen() -> None:
    """Head 0.3 has a first-half excursion on every training bearing, head 0 rises only
    late; the vertical channel has an early run-in excursion. The chosen design is head 0,
    horizontal only, and its policy still warns cleanly with thresholds 15 % off."""
    rng = np.random.default_rng(1)
    train = []
    for i in range(5):
        quiet = np.abs(rng.normal(0.6, 0.15, N)).astype(np.float32)
        late = quiet.copy()
        late[280 + 5 * i:] += 5.0
        noisy = late.copy()
        noisy[90:140] += 6.0
        run_in = quiet.copy()
        run_in[70:120] += 8.0
        train.append(bearing({(0.3, "horizontal"): noisy, (0.3, "vertical"): run_in,
                              (0.0, "horizontal"): late, (0.0, "vertical"): run_in}))
    (share, channels), policy, score = choose_design(train, {0.3: 1.0, 0.0: 1.0})
    assert (share, channels) == (0.0, ("horizontal",))
    assert score == (5, 5, 5)
    for c in (1.0, *ROBUSTNESS_SCALES):
        assert all(model_outcome(view(s, share, channels), policy, c)["clean_warning"]
                   for s in train)


def test_the_policy_is_chosen_from_the_grid_given() -> None:
    """A late rise of 2.5 over quiet scores of about 0.6: the default grid finds a clean
    warning on every training bearing; a grid whose only rule sets the threshold at 6
    (factor 1, margin 6) cannot alert, and is what is chosen when it is the only one."""
    rng = np.random.default_rng(2)
    train = []
    for i in range(5):
        s = np.abs(rng.normal(0.6, 0.1, N)).astype(np.float32)
        s[280 + 5 * i:] += 2.5
        train.append(bearing({(0.0, "horizontal"): s, (0.0, "vertical"): s}))
    _, policy, score = choose_design(train, {0.0: 1.0})
    assert score == (5, 5, 5)
    assert (policy.quantile, policy.factor, policy.margin) in {
        (q, f, m) for q in DEFAULT_GRID.quantiles for f in DEFAULT_GRID.factors
        for m in DEFAULT_GRID.margins}
    deaf = PolicyGrid(quantiles=(0.5,), factors=(1.0,), margins=(6.0,), kofn=((6, 10),))
    _, policy, score = choose_design(train, {0.0: 1.0}, deaf)
    assert (policy.quantile, policy.factor, policy.margin, policy.k, policy.n) == (
        0.5, 1.0, 6.0, 6, 10)
    assert score == (0, 5, 0)


def test_cli_without_femto_data_is_a_one_line_error(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data-dir", str(tmp_path), "--part", "femto"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no FEMTO .npz" in err


def test_femto_bearing_through_every_candidate_head(shared_data: Path) -> None:
    """A real FEMTO bearing scored by each candidate head's int8 file on both channels;
    the shipped share's head is exactly the shipped detector's anomaly head."""
    from agent.features import DEFAULT_SPEC
    from models.simdata import random_machines
    from models.trainsets import sim_sets

    sets = sim_sets(random_machines(6, seed=321), DEFAULT_SPEC, seconds=3.0, seed=321)
    heads = anomaly_heads(sets, seed=0, shares=(LEARNED_SHARE, 0.0))
    try:
        s = femto_series(shared_data / "femto" / "Bearing3_1.npz", heads)
    finally:
        for h in heads:
            h.runners.close()
    assert heads[1].floor > 0 and heads[0].floor > 0
    assert set(s["streams"]) == {(sh, ch) for sh in (LEARNED_SHARE, 0.0)
                                 for ch in ("horizontal", "vertical")}
    n = len(s["t_s"])
    assert s["commission"].sum() == 61 and s["life_s"] == 5140.0  # 0 .. 600 s, as the agent
    for scores in s["streams"].values():
        assert scores.shape == (n,) and np.isfinite(scores).all() and (scores >= 0).all()
    assert not np.allclose(s["streams"][(0.0, "horizontal")],
                           s["streams"][(0.0, "vertical")])
    assert np.array_equal(s["scores"], s["streams"][(LEARNED_SHARE, "horizontal")])
    assert np.array_equal(heads[0].w_anomaly, fit_detector(sets, TrainConfig(seed=0)).w_anomaly)
    assert np.array_equal(heads[1].w_anomaly, prior_anomaly_weights())


def test_evaluation_decides_as_the_agents_decider(shared_data: Path) -> None:
    """The FEMTO figures are the device's: the agent's Decider, fed the same bearing's
    features window by window with the same detector file, floor, adapt rule and k-of-n,
    commissions on the same windows, sets the same threshold and raises at the same time."""
    from agent.config import DecisionConfig
    from agent.decision import Decider, Observation
    from agent.features import DEFAULT_SPEC, SNAPSHOT_SPEC
    from models.datasets import load
    from models.simdata import random_machines
    from models.train import features_of
    from models.trainsets import sim_sets

    sets = sim_sets(random_machines(6, seed=321), DEFAULT_SPEC, seconds=3.0, seed=321)
    heads = anomaly_heads(sets, seed=0, shares=(0.0,))
    head = heads[0]
    path = shared_data / "femto" / "Bearing3_1.npz"
    policy = Policy(head.floor, quantile=0.5, factor=2.0, margin=0.5, k=3, n=5)
    cols = np.asarray(SNAPSHOT_SPEC.index(list(INPUT_FEATURES)))

    def score_fn(base: Any, values: np.ndarray) -> np.ndarray:
        z = base.z(values)[:, cols].astype(np.float32)
        return head.runners.int8(z)[0]

    try:
        series = femto_series(path, heads)
        ours = model_outcome(view(series, 0.0, ("horizontal",)), policy)
        feats, t = features_of(load(path), SNAPSHOT_SPEC, "horizontal")
        d = Decider(DecisionConfig(commission_s=600.0, k=3, n=5), SNAPSHOT_SPEC.feature_names,
                    score_fn=score_fn, model={"name": "femto", "version": "0.0.1"},
                    floor=head.floor, adapt={"quantile": 0.5, "factor": 2.0, "margin": 0.5})
        raised, commissioned = None, None
        for i in range(len(t)):
            if d.baseline("s") is None:
                commissioned = d.commission("s", feats[i], float(t[i])) or commissioned
                continue
            a = float(score_fn(d.baseline("s"), feats[i:i + 1])[0])
            body = d.decide("s", Observation(0, float(t[i]), feats[i], None, a, "normal", 0.0))
            if body is not None and body["status"] == "raised" and raised is None:
                raised = float(t[i])
    finally:
        head.runners.close()
    assert commissioned is not None
    assert commissioned["detail"]["windows"] == int(series["commission"].sum())
    assert raised is not None and ours["first_alert_s"] == raised
    assert ours["threshold"] == pytest.approx(d.threshold("s"), abs=1e-3)


def test_a_chosen_policy_is_a_bundle_thresholds_table_the_agent_reads() -> None:
    from agent.inference import LoadedBundle

    policy = Policy(3.52, quantile=0.5, factor=6.0, margin=0.5, k=3, n=5)
    table = policy.bundle_thresholds()
    loaded = LoadedBundle(manifest=None, detector=None, input_features=(),
                          labels=(), thresholds=table, feature_spec={})
    assert loaded.anomaly_floor == 3.52
    assert loaded.adapt == {"quantile": 0.5, "factor": 6.0, "margin": 0.5}
    assert table["debounce"] == {"k": 3, "n": 5}
