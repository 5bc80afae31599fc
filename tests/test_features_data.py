"""Feature engine on real bearing data (CWRU, FEMTO) from ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from agent.features import DEFAULT_SPEC, SNAPSHOT_SPEC, FeatureSpec, extract, resample

SPEC = DEFAULT_SPEC


def cwru_windows(path: Path, spec: FeatureSpec) -> tuple[np.ndarray, float]:
    mat = scipy.io.loadmat(str(path))
    signal = np.ravel(next(v for k, v in mat.items() if k.endswith("_DE_time")))
    rpm_keys = [k for k in mat if k.endswith("RPM")]
    rpm = float(np.ravel(mat[rpm_keys[0]])[0]) if rpm_keys else 1797.0
    rate_hz = 48000.0 if path.name.startswith("normal") else 12000.0
    x = resample(signal, rate_hz, spec.sample_rate_hz)
    n = spec.window_samples
    starts = range(0, x.size - n + 1, spec.hop_samples)
    return np.stack([x[s:s + n] for s in starts]), rpm


def family_scores(path: Path) -> np.ndarray:
    windows, rpm = cwru_windows(path, SPEC)
    feats = extract(SPEC, windows, rpm)
    return feats[:, SPEC.index(["env_bpfo_harm_snr", "env_bpfi_harm_snr",
                                "env_2bsf_harm_snr"])]


@pytest.mark.parametrize(("record", "family"), [
    ("12k_Drive_End_IR007_0_105.mat", 1),
    ("12k_Drive_End_IR021_1_210.mat", 1),
    ("12k_Drive_End_OR007@6_0_130.mat", 0),
    ("12k_Drive_End_OR021@6_1_235.mat", 0),
])
def test_cwru_race_faults_show_their_defect_family(shared_data: Path, record: str,
                                                   family: int) -> None:
    scores = family_scores(shared_data / "cwru" / record)
    hits = np.mean(np.argmax(scores, axis=1) == family)
    assert hits > 0.9, f"{record}: labelled family strongest on {hits:.0%} of windows"


def test_cwru_fault_stands_out_against_the_healthy_record(shared_data: Path) -> None:
    healthy = family_scores(shared_data / "cwru" / "normal_0_97.mat")
    faulty = family_scores(shared_data / "cwru" / "12k_Drive_End_IR007_0_105.mat")
    assert np.median(faulty[:, 1]) > 2 * np.percentile(healthy[:, 1], 95)


def test_cwru_48k_healthy_record_resamples_to_a_sane_level(shared_data: Path) -> None:
    windows, rpm = cwru_windows(shared_data / "cwru" / "normal_0_97.mat", SPEC)
    feats = extract(SPEC, windows, rpm)
    assert np.isfinite(feats).all()
    vel = feats[:, SPEC.feature_names.index("vel_rms_mm_s")]
    assert 0.01 < np.median(vel) < 10.0         # a healthy motor: ISO zone A/B territory


def test_femto_snapshots_fill_the_snapshot_spec(shared_data: Path) -> None:
    data = np.load(shared_data / "femto" / "Bearing1_1.npz")
    acc_g = data["acc_mg"][:, :, 0].astype(np.float32) / 1000.0
    assert acc_g.shape[1] == SNAPSHOT_SPEC.window_samples
    assert float(data["sample_rate_hz"]) == SNAPSHOT_SPEC.sample_rate_hz
    early = extract(SNAPSHOT_SPEC, acc_g[100:200], 1800.0)
    late = extract(SNAPSHOT_SPEC, acc_g[-100:], 1800.0)
    assert np.isfinite(early).all() and np.isfinite(late).all()
    rms = SNAPSHOT_SPEC.feature_names.index("rms_g")
    assert np.median(late[:, rms]) > 2 * np.median(early[:, rms])
