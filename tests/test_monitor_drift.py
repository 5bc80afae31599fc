"""Drift monitor: training statistics, PSI / KS figures, quiet on training data, fires on shift."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from agent.monitor import DriftConfig, DriftMonitor, Monitor, training_stats
from agent.monitor.drift import N_BINS, bin_index, ks_grid, psi
from foreshock.errors import BundleError, DataError
from foreshock.messages import dumps, validate_record

NAMES = ["rms_z", "kurtosis_z", "bpfo_z", "bpfi_z", "band_3_z", "zeros_z"]


def sample(rng: np.random.Generator, n: int, shift: dict[int, float] | None = None
           ) -> np.ndarray:
    """Features of mixed shapes: normal, skewed, uniform, heavy-tailed, tied values."""
    x = np.column_stack([
        rng.standard_normal(n), rng.lognormal(0.0, 0.5, n), rng.uniform(-2, 2, n),
        rng.standard_t(4, n), rng.gamma(2.0, 1.0, n),
        np.where(rng.random(n) < 0.5, 0.0, rng.exponential(1.0, n)),
    ])
    for col, sd in (shift or {}).items():
        x[:, col] += sd * x[:, col].std()
    return x.astype(np.float32)


def scores_of(x: np.ndarray) -> np.ndarray:
    return np.abs(x[:, 0]) + 0.1 * x[:, 3]


def reference(seed: int = 0) -> dict[str, Any]:
    x = sample(np.random.default_rng(seed), 20_000)
    stats = training_stats(x, NAMES)
    stats.update(training_stats(scores_of(x)[:, None], ["anomaly_score"]))
    return stats


STATS = reference()


def feed(mon: DriftMonitor, x: np.ndarray, alerts: np.ndarray | None = None,
         batch: int = 64) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    a = np.zeros(len(x), bool) if alerts is None else alerts
    for s in range(0, len(x), batch):
        events += mon.update(x[s:s + batch], scores_of(x[s:s + batch]), a[s:s + batch],
                             at_s=1.7e9 + s)
    return events


def test_training_stats_shape_is_json_and_handles_ties() -> None:
    stats = reference()
    json.dumps(stats)
    for name in [*NAMES, "anomaly_score"]:
        entry = stats[name]
        assert set(entry) == {"mean", "std", "n", "quantiles", "hist"}
        assert len(entry["quantiles"]) == N_BINS + 1 and len(entry["hist"]) == N_BINS
        assert np.all(np.diff(entry["quantiles"]) >= 0)
        assert sum(entry["hist"]) == pytest.approx(1.0)
    zeros = stats["zeros_z"]
    assert zeros["quantiles"][:6] == [0.0] * 6
    zero_bin = int(bin_index(np.zeros(1), np.asarray(zeros["quantiles"]))[0])
    assert zeros["hist"][:zero_bin] == [0.0] * zero_bin
    assert zeros["hist"][zero_bin] == pytest.approx(0.6, abs=0.02)


def test_training_stats_rejects_bad_input() -> None:
    with pytest.raises(DataError, match="shape"):
        training_stats(np.zeros((5, 2)), ["a"])
    with pytest.raises(DataError, match="'b'"):
        training_stats(np.column_stack([np.arange(50.0), np.full(50, np.nan)]), ["a", "b"])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31), st.integers(50, 600), st.floats(-1.0, 1.0))
def test_ks_grid_is_a_lower_bound_of_the_exact_ks(seed: int, n: int, shift: float) -> None:
    rng = np.random.default_rng(seed)
    train, live = rng.standard_normal(2000), rng.standard_normal(n) + shift
    entry = training_stats(train[:, None], ["x"])["x"]
    edges, hist = np.asarray(entry["quantiles"]), np.asarray(entry["hist"])
    frac = np.bincount(bin_index(live, edges), minlength=N_BINS) / n
    exact = sps.ks_2samp(live, train).statistic
    assert ks_grid(frac, hist) <= exact + 1e-9
    assert psi(frac, hist) >= 0.0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quiet_on_the_training_distribution(seed: int) -> None:
    mon = DriftMonitor(reference(), NAMES)
    assert feed(mon, sample(np.random.default_rng(seed), 4000)) == []
    assert mon.drifting == ()
    assert mon.counters["drift_evaluations"] >= 50
    assert mon.snapshot()["max_psi"] < DriftConfig().psi_off


def test_fires_on_shift_with_the_moved_features_then_clears() -> None:
    mon = DriftMonitor(reference(), NAMES)
    rng = np.random.default_rng(7)
    assert feed(mon, sample(rng, 1000)) == []
    events = feed(mon, sample(rng, 1500, shift={2: 1.0, 4: 1.5}))
    assert events, "no drift event on a 1-1.5 sd shift"
    first = events[0]["detail"]
    assert first["state"] == "started"
    moved = {f["name"] for e in events for f in e["detail"]["features"]}
    assert moved == {"bpfo_z", "band_3_z"}
    for f in first["features"]:
        assert f["psi"] >= DriftConfig().psi_on or f["ks"] >= DriftConfig().ks_on
    assert len(events) <= 2, "drift flapped while the shift held"
    cleared = feed(mon, sample(rng, 2000))
    assert [e["detail"]["state"] for e in cleared] == ["cleared"]
    for body in events + cleared:
        validate_record("event", {"seq": 0, "ts": 1.0, "body": json.loads(json.dumps(body))})


def test_score_and_alert_rate_drift() -> None:
    mon = DriftMonitor(reference(), NAMES)
    rng = np.random.default_rng(8)
    x = sample(rng, 1500)
    alerts = rng.random(1500) < 0.2
    events = []
    for s in range(0, 1500, 50):
        chunk = x[s:s + 50]
        events += mon.update(chunk, scores_of(chunk) + 1.0, alerts[s:s + 50])
    assert set(mon.drifting) == {"anomaly_score", "alert_rate"}
    assert events[0]["detail"]["alert_rate"]["rate"] >= 0.05


def test_unknown_features_are_ignored_and_nan_is_tolerated() -> None:
    names = [*NAMES, "not_in_training"]
    mon = DriftMonitor(reference(), names)
    assert mon.unwatched == ("not_in_training",)
    x = np.column_stack([sample(np.random.default_rng(9), 1000), np.full(1000, np.nan)])
    x[::7, 1] = np.nan
    assert feed(mon, x.astype(np.float32)) == []


def test_malformed_stats_raise_bundle_error() -> None:
    good = reference()
    for bad in ({"rms_z": {"mean": 0}}, {"rms_z": {**good["rms_z"], "hist": [1.0]}},
                {"rms_z": {**good["rms_z"], "quantiles": good["rms_z"]["quantiles"][::-1]}}):
        with pytest.raises(BundleError, match="rms_z"):
            DriftMonitor(bad, NAMES)


def test_monitor_facade_drift_from_manifest() -> None:
    mon = Monitor(drift=DriftMonitor.from_manifest({"training_stats": reference()}, NAMES))
    assert DriftMonitor.from_manifest({}, NAMES) is None
    x = sample(np.random.default_rng(10), 600, shift={0: 2.0})
    events = mon.update_drift(x, scores_of(x), np.zeros(600, bool), at_s=5.0)
    assert events and "rms_z" in {f["name"] for f in events[0]["detail"]["features"]}
    assert events[0]["detail"]["window_ts"] == 5.0
    assert mon.health_body(1.0)["drift"]["drifting"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=6, max_size=6),
       st.integers(1, 300))
def test_arbitrary_live_values_never_crash(row: list[float], n: int) -> None:
    mon = DriftMonitor(STATS, NAMES, DriftConfig(window=100, min_windows=20, every=10))
    x = np.tile(np.asarray(row, dtype=np.float64), (n, 1))
    events = mon.update(x, x[:, 0], np.ones(n, bool))
    for body in events:
        validate_record("event", {"seq": 0, "ts": 1.0, "body": json.loads(dumps(body))})
    mon.snapshot()

