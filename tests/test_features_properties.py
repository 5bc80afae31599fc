"""Property tests of the feature engine (hypothesis)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from agent.features import DEFAULT_SPEC, Baseline, FeatureSpec, bearing, extract, resample
from foreshock.errors import ConfigError

SPEC = DEFAULT_SPEC
FS = SPEC.sample_rate_hz
N = SPEC.window_samples
NAMES = SPEC.feature_names
BANDS = [i for i, n in enumerate(NAMES) if n.startswith(("band_", "order_")) and "rms" in n]
FAST = settings(max_examples=25, deadline=None)


def noise(seed: int, n: int = 1, scale: float = 1.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal((n, N))).astype(np.float32)


def col(feats: np.ndarray, name: str) -> np.ndarray:
    return feats[:, NAMES.index(name)]


@FAST
@given(seed=st.integers(0, 2**32 - 1), offset=st.floats(-20, 20), rpm=st.floats(0, 6000))
def test_dc_offset_leaves_every_feature_unchanged(seed: int, offset: float, rpm: float) -> None:
    x = noise(seed)
    a = extract(SPEC, x, rpm)
    b = extract(SPEC, x + np.float32(offset), rpm)
    np.testing.assert_allclose(b[:, BANDS], a[:, BANDS], rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(col(b, "rms_g"), col(a, "rms_g"), rtol=1e-3)


@FAST
@given(seed=st.integers(0, 2**32 - 1), k=st.floats(-1e3, 1e3).filter(lambda v: abs(v) > 1e-3))
def test_scaling_scales_levels_and_keeps_shape(seed: int, k: float) -> None:
    x = noise(seed)
    a = extract(SPEC, x, 1800.0)
    b = extract(SPEC, x * np.float32(k), 1800.0)
    np.testing.assert_allclose(col(b, "rms_g"), abs(k) * col(a, "rms_g"), rtol=1e-4)
    np.testing.assert_allclose(col(b, "vel_rms_mm_s"), abs(k) * col(a, "vel_rms_mm_s"), rtol=1e-3)
    np.testing.assert_allclose(b[:, BANDS], abs(k) * a[:, BANDS], rtol=1e-3, atol=1e-9)
    for name in ("kurtosis", "crest_factor", "shape_factor", "spectral_centroid_hz",
                 "env_bpfo_snr", "env_bpfi_harm_snr"):
        np.testing.assert_allclose(col(b, name), col(a, name), rtol=1e-3, err_msg=name)


@FAST
@given(freq_hz=st.floats(15.0, 6000.0), amp=st.floats(0.01, 50.0), phase=st.floats(0, 6.3))
def test_pure_tone_peaks_in_its_band(freq_hz: float, amp: float, phase: float) -> None:
    edges = SPEC.log_band_edges_hz()
    assume(np.min(np.abs(edges - freq_hz)) > 4 * SPEC.bin_hz)
    t = np.arange(N) / FS
    x = (amp * np.sin(2 * np.pi * freq_hz * t + phase)).astype(np.float32)[None, :]
    feats = extract(SPEC, x, 0.0)
    bands = feats[0, [i for i, n in enumerate(NAMES) if n.startswith("band_")]]
    expected = int(np.searchsorted(edges, freq_hz) - 1)
    assert int(np.argmax(bands)) == expected
    assert bands[expected] ** 2 > 0.95 * np.sum(bands**2)
    assert col(feats, "rms_g")[0] == np.float32(amp / np.sqrt(2)) or \
        abs(col(feats, "rms_g")[0] / (amp / np.sqrt(2)) - 1) < 0.01


def impulse_train(rate_hz: float, resonance_hz: float, seed: int, noise_g: float
                  ) -> np.ndarray:
    """Decaying resonance struck at ``rate_hz`` plus Gaussian noise, one window."""
    t = np.arange(N) / FS
    ring = np.exp(-t[:200] * 800.0) * np.sin(2 * np.pi * resonance_hz * t[:200])
    pulses = np.zeros(N)
    first = np.random.default_rng(seed).uniform(0, 1.0 / rate_hz)
    hits = np.arange(first, N / FS, 1.0 / rate_hz)
    pulses[np.rint(hits * FS).astype(int) % N] = 1.0
    x = np.convolve(pulses, ring)[:N] + noise_g * np.random.default_rng(seed).standard_normal(N)
    return x.astype(np.float32)[None, :]


def bpfo_stands_out(feats: np.ndarray) -> None:
    assert col(feats, "env_bpfo_snr")[0] > 3.0
    harm = {f: col(feats, f"env_{f}_harm_snr")[0] for f in ("bpfo", "bpfi", "2bsf")}
    assert max(harm, key=lambda f: harm[f]) == "bpfo", harm


@FAST
@given(rate_hz=st.floats(40.0, 250.0), resonance_hz=st.floats(1500.0, 5000.0),
       seed=st.integers(0, 2**32 - 1))
@example(rate_hz=247.906, resonance_hz=3023.0, seed=21645760)   # off-resonance band choice
def test_impulse_train_at_bpfo_shows_in_envelope(rate_hz: float, resonance_hz: float,
                                                  seed: int) -> None:
    """The envelope spectrum of a band over the resonance shows the impact rate (band fixed
    on the resonance: the band choice is the next test's claim)."""
    spec = dataclasses.replace(SPEC, envelope_band_hz=(resonance_hz - 800.0,
                                                       resonance_hz + 800.0))
    rpm = 60.0 * rate_hz / bearing(SPEC.bearing).orders()["bpfo"]
    bpfo_stands_out(extract(spec, impulse_train(rate_hz, resonance_hz, seed, 0.2), rpm))


@FAST
@given(rate_hz=st.floats(40.0, 100.0), resonance_hz=st.floats(1500.0, 5000.0),
       seed=st.integers(0, 2**32 - 1))
def test_slow_impact_train_shows_in_the_kurtogram_band(rate_hz: float, resonance_hz: float,
                                                       seed: int) -> None:
    """With the default (kurtogram) band choice the impact rate shows too, up to 100
    impacts/s.

    A candidate band's envelope is sampled every 1.25 ms (800 Hz wide), about the ring's
    decay time, so from ~100 impacts/s (a period under 8 samples) the rings fill the
    resonant candidate and its kurtosis falls below the significance threshold; the choice
    then falls back to the most energetic candidate unless a noise-only candidate passes the
    threshold by chance, and the band misses the resonance (in 10,000 random cases at
    100-250/s: 84 misses, 22 SNRs under 3, e.g. rate 247.906 Hz, resonance 3023 Hz, seed
    21645760: 2.85). Below 100/s the resonant candidate's kurtosis wins (1 miss in 20,000
    cases, still with SNR 8: each impact's onset is broadband) and the lowest SNR was 5.5.
    """
    rpm = 60.0 * rate_hz / bearing(SPEC.bearing).orders()["bpfo"]
    bpfo_stands_out(extract(SPEC, impulse_train(rate_hz, resonance_hz, seed, 0.2), rpm))


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6),
       rpms=st.lists(st.floats(0, 5000), min_size=6, max_size=6))
def test_batched_equals_one_by_one(seed: int, n: int, rpms: list[float]) -> None:
    x = noise(seed, n)
    x[:, ::97] += 3.0                                  # impulsive, so the envelope matters
    rpm = np.array(rpms[:n])
    batch = extract(SPEC, x, rpm)
    for i in range(n):
        np.testing.assert_allclose(batch[i], extract(SPEC, x[i:i + 1], rpm[i])[0],
                                   rtol=2e-4, atol=2e-5)


@FAST
@given(seed=st.integers(0, 2**32 - 1), ratio=st.sampled_from([(12000, 12800), (25600, 12800),
                                                              (48000, 12800), (8000, 12800)]))
def test_resample_round_trip_of_band_limited_signal(seed: int, ratio: tuple[int, int]) -> None:
    a, b = ratio
    n = 2 * a // 10                                   # 0.2 s, integral in both rates
    rng = np.random.default_rng(seed)
    spectrum = np.zeros(n // 2 + 1, complex)
    top = int(0.4 * min(a, b) * n / a)                # below both Nyquist frequencies
    spectrum[1:top] = rng.standard_normal(top - 1) + 1j * rng.standard_normal(top - 1)
    x = np.fft.irfft(spectrum, n).astype(np.float32)
    back = resample(resample(x, a, b), b, a)
    np.testing.assert_allclose(back, x, atol=1e-4 * float(np.abs(x).max()))


@FAST
@given(seed=st.integers(0, 2**32 - 1), shift=st.floats(-100, 100),
       scale=st.floats(0.01, 100))
def test_baseline_z_is_affine_invariant(seed: int, shift: float, scale: float) -> None:
    values = np.random.default_rng(seed).normal(5.0, 1.0, size=(50, 3))
    base = Baseline.fit(values, ["a", "b", "c"], rel_floor=0.0, abs_floor=1e-12)
    moved = Baseline.fit(values * scale + shift, ["a", "b", "c"], rel_floor=0.0,
                         abs_floor=1e-12)
    probe = values[:5] + 0.5
    np.testing.assert_allclose(moved.z(probe * scale + shift), base.z(probe), atol=1e-3)


SPEC_FIELDS = [f.name for f in dataclasses.fields(FeatureSpec)]
ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-10**7, 10**7),
                      st.floats(allow_nan=True), st.text(max_size=8),
                      st.lists(st.floats(-1e4, 1e4), max_size=3),
                      st.lists(st.lists(st.floats(-100, 100), max_size=3), max_size=3))


@settings(max_examples=200, deadline=None)
@given(changes=st.dictionaries(st.sampled_from([*SPEC_FIELDS, "bogus"]), ANY_VALUE,
                               max_size=3))
def test_spec_from_dict_gives_a_spec_or_a_config_error(changes: dict[str, Any]) -> None:
    data = {**SPEC.to_dict(), **changes}
    try:
        spec = FeatureSpec.from_dict(data)
    except ConfigError as exc:
        assert str(exc)
        return
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
