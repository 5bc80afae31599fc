"""Golden values per feature-spec version: an unintended change to any formula fails here.

When a formula changes on purpose, bump ``FeatureSpec.version`` (which changes the hash),
regenerate these values and say why in the commit message.
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.features import DEFAULT_SPEC, SNAPSHOT_SPEC, FeatureSpec, extract

DEFAULT_HASH = "ce5e0bc26eb4ae6e"
SNAPSHOT_HASH = "5adc189a0a0cd15a"


def golden_signal(spec: FeatureSpec) -> np.ndarray:
    """Deterministic window (no RNG): 1x and 2x tones, a resonance struck at BPFO of the
    spec's bearing at 1797 rpm, and a broadband chirp."""
    t = np.arange(spec.window_samples) / spec.sample_rate_hz
    shaft_hz = 1797.0 / 60.0
    x = 0.3 * np.sin(2 * np.pi * shaft_hz * t) + 0.1 * np.sin(2 * np.pi * 2 * shaft_hz * t + 1)
    x += 0.05 * np.sin(2 * np.pi * (200.0 * t + 0.5 * 9000.0 * t**2 / t[-1]))
    period = 1.0 / (3.5848 * shaft_hz)
    phase = np.mod(t, period)
    x += np.exp(-phase * 900.0) * np.sin(2 * np.pi * 3100.0 * phase)
    return (x + 0.2).astype(np.float32)[None, :]

# golden_signal(spec) at 1797 rpm, spec version 1
DEFAULT_V1: dict[str, float] = {
    'rms_g': 0.2834833,
    'peak_g': 1.189496,
    'p2p_g': 2.360164,
    'crest_factor': 4.195999,
    'kurtosis': 3.820108,
    'skewness': -0.1323866,
    'shape_factor': 1.239159,
    'impulse_factor': 5.199512,
    'clearance_factor': 5.959369,
    'vel_rms_mm_s': 11.52803,
    'spectral_centroid_hz': 1208.923,
    'spectral_kurtosis': 1.854132,
    'band_10_22hz_rms_g': 0.04658508,
    'band_22_50hz_rms_g': 0.2033667,
    'band_50_113hz_rms_g': 0.06839095,
    'band_113_253hz_rms_g': 0.01098864,
    'band_253_567hz_rms_g': 0.01611102,
    'band_567_1272hz_rms_g': 0.02285523,
    'band_1272_2854hz_rms_g': 0.07305305,
    'band_2854_6400hz_rms_g': 0.1587683,
    'order_0.5_1.5x_rms_g': 0.2077297,
    'order_1.5_2.5x_rms_g': 0.06793962,
    'order_2.5_3.5x_rms_g': 0.008682285,
    'order_3.5_6.5x_rms_g': 0.009705852,
    'order_6.5_12.5x_rms_g': 0.01293107,
    'order_12.5_25.5x_rms_g': 0.01775767,
    'order_1x_g': 0.2680084,
    'order_2x_g': 0.09819557,
    'order_3x_g': 0.0002699516,
    'env_band_center_hz': 1300,
    'env_band_kurtosis': 5.620494,
    'env_bpfo_snr': 46.14805,
    'env_bpfo_h2_snr': 51.27533,
    'env_bpfo_h3_snr': 63.08002,
    'env_bpfo_harm_snr': 53.50113,
    'env_bpfi_snr': 1.815408,
    'env_bpfi_h2_snr': 63.08002,
    'env_bpfi_h3_snr': 2.084887,
    'env_bpfi_harm_snr': 22.32677,
    'env_2bsf_snr': 0.4170336,
    'env_2bsf_h2_snr': 2.435007,
    'env_2bsf_h3_snr': 56.05907,
    'env_2bsf_harm_snr': 19.63704,
    'env_ftf_snr': 1.625641,
    'env_ftf_h2_snr': 5.061486,
    'env_ftf_h3_snr': 0.8415084,
    'env_ftf_harm_snr': 2.509545,
    'env_bpfi_sb_snr': 5.565683,
}

# golden_signal(spec) at 1800 rpm, spec version 1
SNAPSHOT_V1: dict[str, float] = {
    'rms_g': 0.2858805,
    'peak_g': 1.223953,
    'p2p_g': 2.343824,
    'crest_factor': 4.281344,
    'kurtosis': 3.753307,
    'skewness': -0.1135936,
    'shape_factor': 1.227791,
    'impulse_factor': 5.256595,
    'clearance_factor': 5.985953,
    'vel_rms_mm_s': 11.19166,
    'spectral_centroid_hz': 1217.209,
    'spectral_kurtosis': 3.442215,
    'band_10_24hz_rms_g': 0.001190035,
    'band_24_60hz_rms_g': 0.2121228,
    'band_60_146hz_rms_g': 0.0716811,
    'band_146_358hz_rms_g': 0.01225345,
    'band_358_875hz_rms_g': 0.01964951,
    'band_875_2140hz_rms_g': 0.03830416,
    'band_2140_5234hz_rms_g': 0.1697767,
    'band_5234_12800hz_rms_g': 0.02764742,
    'order_0.5_1.5x_rms_g': 0.2121254,
    'order_1.5_2.5x_rms_g': 0.07116077,
    'order_2.5_3.5x_rms_g': 0.001826861,
    'order_3.5_6.5x_rms_g': 0.008855143,
    'order_6.5_12.5x_rms_g': 0.0121285,
    'order_12.5_25.5x_rms_g': 0.01775193,
    'order_1x_g': 0.3000137,
    'order_2x_g': 0.09990435,
    'order_3x_g': 0.007699945,
    'env_band_center_hz': 11200,
    'env_band_kurtosis': 27.94285,
    'env_bpfo_snr': 1.618153,
    'env_bpfo_h2_snr': 2.065118,
    'env_bpfo_h3_snr': 3.030477,
    'env_bpfo_harm_snr': 2.237916,
    'env_bpfi_snr': 2.90507,
    'env_bpfi_h2_snr': 3.057336,
    'env_bpfi_h3_snr': 3.593021,
    'env_bpfi_harm_snr': 3.185143,
    'env_2bsf_snr': 2.90507,
    'env_2bsf_h2_snr': 3.057336,
    'env_2bsf_h3_snr': 2.690925,
    'env_2bsf_harm_snr': 2.884444,
    'env_ftf_snr': 1,
    'env_ftf_h2_snr': 2.127048,
    'env_ftf_h3_snr': 2.536244,
    'env_ftf_harm_snr': 1.887764,
    'env_bpfi_sb_snr': 1.141273,
}


@pytest.mark.parametrize(("spec", "rpm", "golden", "spec_hash"), [
    (DEFAULT_SPEC, 1797.0, DEFAULT_V1, DEFAULT_HASH),
    (SNAPSHOT_SPEC, 1800.0, SNAPSHOT_V1, SNAPSHOT_HASH),
], ids=["default", "snapshot"])
def test_golden_values(spec: FeatureSpec, rpm: float, golden: dict[str, float],
                       spec_hash: str) -> None:
    assert spec.version == 1
    assert spec.hash == spec_hash
    assert spec.feature_names == tuple(golden)
    feats = extract(spec, golden_signal(spec), rpm)[0]
    expected = np.array(list(golden.values()), dtype=np.float64)
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-6,
                               err_msg=", ".join(spec.feature_names))


def test_golden_signal_reads_as_an_outer_race_defect() -> None:
    """The pinned values mean what they should: BPFO family on top for the 6205 spec."""
    assert DEFAULT_V1["env_bpfo_harm_snr"] > 2 * DEFAULT_V1["env_bpfi_harm_snr"]
    assert DEFAULT_V1["env_bpfo_snr"] > 10.0
    assert DEFAULT_V1["order_1x_g"] == pytest.approx(0.3, rel=0.15)
