"""Feature engine: geometry, spec contract, extraction behaviour, resampling, baseline."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from agent.features import (
    BEARINGS,
    DEFAULT_SPEC,
    SNAPSHOT_SPEC,
    Baseline,
    FeatureSpec,
    bearing,
    extract,
    iso_zone,
    resample,
    spectra,
)
from foreshock.errors import ConfigError, DataError

FS = DEFAULT_SPEC.sample_rate_hz
N = DEFAULT_SPEC.window_samples


def col(spec: FeatureSpec, feats: np.ndarray, name: str) -> np.ndarray:
    return feats[:, spec.feature_names.index(name)]


def test_skf6205_matches_published_cwru_orders() -> None:
    orders = bearing("SKF-6205").orders()
    assert orders["bpfi"] == pytest.approx(5.4152, abs=5e-4)
    assert orders["bpfo"] == pytest.approx(3.5848, abs=5e-4)
    assert orders["ftf"] == pytest.approx(0.39828, abs=5e-4)
    assert orders["bsf"] == pytest.approx(2.357, abs=1e-3)


def test_skf6203_matches_published_cwru_orders() -> None:
    orders = bearing("SKF-6203").orders()
    assert orders["bpfi"] == pytest.approx(4.9469, abs=5e-4)
    assert orders["bpfo"] == pytest.approx(3.0530, abs=5e-4)
    assert orders["ftf"] == pytest.approx(0.3817, abs=5e-4)
    assert orders["bsf"] == pytest.approx(1.9937, abs=1e-3)


def test_unknown_bearing_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="SKF-6205"):
        bearing("nope")
    assert {"SKF-6205", "SKF-6203", "FEMTO"} <= set(BEARINGS)


def test_iso_zone_boundaries() -> None:
    assert iso_zone(0.5, "group2-rigid") == "A"
    assert iso_zone(1.4, "group2-rigid") == "B"
    assert iso_zone(3.0, "group2-rigid") == "C"
    assert iso_zone(9.0, "group2-rigid") == "D"
    assert iso_zone(9.0, "group1-flexible") == "C"
    with pytest.raises(ConfigError, match="machine_class"):
        iso_zone(1.0, "group9")


def test_spec_round_trip_and_stable_hash() -> None:
    for spec in (DEFAULT_SPEC, SNAPSHOT_SPEC):
        again = FeatureSpec.from_dict(spec.to_dict())
        assert again == spec and again.hash == spec.hash
        assert again.feature_names == spec.feature_names
    assert DEFAULT_SPEC.hash != SNAPSHOT_SPEC.hash
    other_machine = dataclasses.replace(DEFAULT_SPEC, bearing="SKF-6203", nominal_rpm=1500.0)
    assert other_machine.hash == DEFAULT_SPEC.hash
    assert dataclasses.replace(DEFAULT_SPEC, n_log_bands=6).hash != DEFAULT_SPEC.hash


@pytest.mark.parametrize(("key", "value"), [
    ("window_samples", 7), ("overlap", 1.0), ("bearing", "nope"), ("sample_rate_hz", "fast"),
    ("machine_class", "x"), ("velocity_band_hz", [10.0, 1e6]), ("colour", "red"),
])
def test_spec_from_dict_names_the_bad_key(key: str, value: object) -> None:
    data = DEFAULT_SPEC.to_dict()
    data[key] = value
    with pytest.raises(ConfigError, match=key if key != "bearing" else "bearing"):
        FeatureSpec.from_dict(data)


def test_extract_shape_dtype_and_finite() -> None:
    rng = np.random.default_rng(1)
    windows = rng.standard_normal((5, N)).astype(np.float32)
    for rpm in (1797.0, 0.0, np.array([0, 1800, 1750, -3, np.nan])):
        feats = extract(DEFAULT_SPEC, windows, rpm)
        assert feats.shape == (5, len(DEFAULT_SPEC.feature_names))
        assert feats.dtype == np.float32
        assert np.isfinite(feats).all()


def test_unknown_rpm_gives_documented_neutral_values() -> None:
    windows = np.random.default_rng(2).standard_normal((2, N)).astype(np.float32)
    feats = extract(DEFAULT_SPEC, windows, 0.0)
    for name in DEFAULT_SPEC.feature_names:
        if name.startswith("env_") and name.endswith("_snr"):
            assert np.all(col(DEFAULT_SPEC, feats, name) == 1.0), name
        if name.startswith("order_"):
            assert np.all(col(DEFAULT_SPEC, feats, name) == 0.0), name


def test_zero_window_is_finite() -> None:
    feats = extract(DEFAULT_SPEC, np.zeros((1, N), np.float32), 1800.0)
    assert np.isfinite(feats).all()
    assert col(DEFAULT_SPEC, feats, "rms_g")[0] == 0.0


def test_wrong_window_length_is_a_data_error() -> None:
    with pytest.raises(DataError, match=str(N)):
        extract(DEFAULT_SPEC, np.zeros((2, 100), np.float32), 0.0)


def test_velocity_of_a_known_tone() -> None:
    # 1 g peak at 100 Hz -> velocity amplitude g / (2 pi f) m/s; RMS = that / sqrt 2
    t = np.arange(N) / FS
    f_hz = 100.0
    window = np.sin(2 * np.pi * f_hz * t).astype(np.float32)[None, :]
    vel = col(DEFAULT_SPEC, extract(DEFAULT_SPEC, window, 0.0), "vel_rms_mm_s")[0]
    expected = 9.80665 / (2 * np.pi * f_hz) / np.sqrt(2) * 1000.0
    assert vel == pytest.approx(expected, rel=0.02)


def test_order_amplitude_of_a_1x_tone() -> None:
    t = np.arange(N) / FS
    window = (0.3 * np.sin(2 * np.pi * 30.0 * t)).astype(np.float32)[None, :]
    feats = extract(DEFAULT_SPEC, window, 1800.0)
    assert col(DEFAULT_SPEC, feats, "order_1x_g")[0] == pytest.approx(0.3, rel=0.2)
    assert col(DEFAULT_SPEC, feats, "order_2x_g")[0] < 0.01


def test_resample_keeps_a_tone_and_length() -> None:
    fs_in, fs_out = 12000.0, 12800.0
    t = np.arange(12000) / fs_in
    x = np.sin(2 * np.pi * 250.0 * t).astype(np.float32)
    y = resample(x, fs_in, fs_out)
    assert y.dtype == np.float32 and y.shape == (12800,)
    t_out = np.arange(12800) / fs_out
    np.testing.assert_allclose(y, np.sin(2 * np.pi * 250.0 * t_out), atol=1e-3)
    with pytest.raises(DataError):
        resample(x, 0.0, 1.0)


def test_baseline_robust_z_and_round_trip() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(10.0, 2.0, size=(400, 2))
    values[:, 1] = 5.0                                   # constant feature
    values[:20, 0] = 1000.0                              # run-in outliers
    base = Baseline.fit(values, ["a", "b"])
    assert base.median[0] == pytest.approx(10.0, abs=0.5)
    assert base.scale[0] == pytest.approx(2.0, rel=0.2)
    z = base.z(np.array([[14.0, 5.0], [6.0, 5.01]]))
    assert z[0, 0] == pytest.approx(2.0, abs=0.5) and z[1, 0] < 0
    assert abs(z[1, 1]) < 1.0                            # floor: 0.2 % change is not news
    again = Baseline.from_dict(base.to_dict())
    np.testing.assert_array_equal(again.z(values), base.z(values))
    with pytest.raises(ConfigError, match="scale"):
        Baseline.from_dict({**base.to_dict(), "scale": [1.0]})


def test_fixed_envelope_band_is_used_and_finds_the_defect() -> None:
    spec = dataclasses.replace(DEFAULT_SPEC, envelope_band_hz=(2400.0, 4000.0))
    t = np.arange(N) / FS
    rpm = 1800.0
    period = 1.0 / (bearing("SKF-6205").orders()["bpfi"] * rpm / 60.0)
    phase = np.mod(t, period)
    x = np.exp(-phase * 700.0) * np.sin(2 * np.pi * 3200.0 * phase)
    x += 0.3 * np.sin(2 * np.pi * 7000.0 / 2 * t)              # strong tone outside the band
    feats = extract(spec, x.astype(np.float32)[None, :], rpm)
    assert col(spec, feats, "env_band_center_hz")[0] == pytest.approx(3200.0, abs=2 * spec.bin_hz)
    assert col(spec, feats, "env_bpfi_harm_snr")[0] > 3 * col(spec, feats, "env_bpfo_harm_snr")[0]


def test_snapshot_spec_sees_an_impulse_train_in_a_tenth_of_a_second() -> None:
    spec = SNAPSHOT_SPEC
    t = np.arange(spec.window_samples) / spec.sample_rate_hz
    rpm = 1800.0
    period = 1.0 / (bearing(spec.bearing).orders()["bpfo"] * rpm / 60.0)
    phase = np.mod(t, period)
    x = np.exp(-phase * 1500.0) * np.sin(2 * np.pi * 6000.0 * phase)
    x += 0.1 * np.random.default_rng(5).standard_normal(t.size)
    feats = extract(spec, x.astype(np.float32)[None, :], rpm)
    assert col(spec, feats, "env_bpfo_snr")[0] > 3.0


def test_feature_engine_keeps_scipy_signal_off_the_device() -> None:
    code = ("import sys, agent.features; "
            "sys.exit(1 if 'scipy.signal' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_iso_zone_rejects_non_finite_velocity() -> None:
    with pytest.raises(ConfigError, match="velocity_mm_s"):
        iso_zone(float("nan"), "group2-rigid")


def test_custom_defect_orders_are_machine_fields() -> None:
    custom = dataclasses.replace(DEFAULT_SPEC, defect_orders=(4.4, 6.6, 2.1, 0.41))
    assert custom.hash == DEFAULT_SPEC.hash
    assert custom.orders() == {"bpfo": 4.4, "bpfi": 6.6, "bsf": 2.1, "ftf": 0.41}
    assert DEFAULT_SPEC.orders() == bearing("SKF-6205").orders()
    assert FeatureSpec.from_dict(custom.to_dict()) == custom
    assert "defect_orders" not in DEFAULT_SPEC.to_dict()      # older readers keep working
    for bad in ([4.4, 6.6, 2.1], [4.4, 6.6, 2.1, 0.0], [4.4, 6.6, 2.1, float("nan")],
                [4.4, "x", 2.1, 0.4]):
        with pytest.raises(ConfigError, match="defect_orders"):
            FeatureSpec.from_dict({**DEFAULT_SPEC.to_dict(), "defect_orders": bad})


def test_impulse_train_at_a_custom_bpfo_shows_only_with_custom_orders() -> None:
    """4.4 x shaft speed is no family of the SKF-6205: the catalogue spec sees no BPFO peak,
    the same spec carrying the custom orders does."""
    rpm = 1800.0
    rate_hz = 4.4 * rpm / 60.0
    t = np.arange(N) / FS
    phase = np.mod(t, 1.0 / rate_hz)
    x = np.exp(-phase * 900.0) * np.sin(2 * np.pi * 3000.0 * phase)
    x += 0.1 * np.random.default_rng(7).standard_normal(N)
    windows = x.astype(np.float32)[None, :]
    custom = dataclasses.replace(DEFAULT_SPEC, defect_orders=(4.4, 6.6, 2.1, 0.41))
    with_orders = col(custom, extract(custom, windows, rpm), "env_bpfo_snr")[0]
    catalogue = col(DEFAULT_SPEC, extract(DEFAULT_SPEC, windows, rpm), "env_bpfo_snr")[0]
    assert with_orders > 10.0
    assert catalogue < 3.0


def test_results_never_alias_the_scratch_arrays() -> None:
    """extract reuses per-thread scratch arrays; a result must survive the next call."""
    rng = np.random.default_rng(11)
    first_in, second_in = rng.standard_normal((2, 3, N)).astype(np.float32)
    first = extract(DEFAULT_SPEC, first_in, 1797.0)
    kept = first.copy()
    extract(DEFAULT_SPEC, second_in, 1500.0)
    extract(DEFAULT_SPEC, second_in[:1], 0.0)                  # smaller batch, same buffers
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(extract(DEFAULT_SPEC, first_in, 1797.0), kept)


def test_concurrent_threads_give_the_serial_results() -> None:
    rng = np.random.default_rng(12)
    batches = [rng.standard_normal((4, N)).astype(np.float32) * (i + 1) for i in range(6)]
    rpms = [1200.0 + 100.0 * i for i in range(6)]
    serial = [extract(DEFAULT_SPEC, b, r) for b, r in zip(batches, rpms, strict=True)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        for _ in range(3):
            threaded = list(pool.map(lambda b, r: extract(DEFAULT_SPEC, b, r), batches, rpms))
            for got, want in zip(threaded, serial, strict=True):
                np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bins", [1, 2, 177, 512, 513])
def test_hann_power_fast_path_equals_the_three_tap_definition(bins: int) -> None:
    """The flat, prefix-only float32 path computes exactly hann_spectrum then power."""
    rng = np.random.default_rng(13)
    env = rng.standard_normal((5, 1024)).astype(np.float32)
    spec = np.fft.rfft(env, axis=1).astype(np.complex64)
    want = spectra.power(spectra.hann_spectrum(spec))[:, :bins]
    np.testing.assert_array_equal(spectra.hann_power(spec, bins), want)
