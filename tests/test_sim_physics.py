"""Simulator physics: envelope spectra at the geometric defect frequencies, shaft tones,
degradation paths. The envelope is computed here with numpy/scipy, not with agent.features.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import scipy.signal

from firmware_sim.node import SimNode
from firmware_sim.physics import DegradationPath
from firmware_sim.scenario import FaultSpec, LifeSpec, Scenario
from foreshock.wire import decode

FS_HZ = 12_000.0
RPM = 1797.0
SHAFT_HZ = RPM / 60.0


def simulate(faults: list[dict[str, object]], seconds: float = 8.0,
             **machine: float) -> tuple[npt.NDArray[np.float64], dict[str, float]]:
    scenario = Scenario.from_dict({"name": "t", "sample_rate_hz": FS_HZ, "frame_samples": 4096,
                                   "machine": {"rpm": RPM, **machine}, "faults": faults})
    node = SimNode(scenario, "phys-1", seed=11, start_time_s=0.0)
    frames = [decode(node.next_frame_bytes()) for _ in range(int(seconds * FS_HZ / 4096))]
    x = np.concatenate([f.samples for f in frames]).astype(np.float64)
    return x, scenario.bearing.orders()


def envelope_spectrum(x: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64],
                                                            npt.NDArray[np.float64]]:
    sos = scipy.signal.butter(4, [1500.0, 5000.0], btype="bandpass", fs=FS_HZ, output="sos")
    env = np.abs(scipy.signal.hilbert(scipy.signal.sosfiltfilt(sos, x)))
    spec = np.abs(np.fft.rfft((env - env.mean()) * np.hanning(env.size)))
    return np.fft.rfftfreq(env.size, 1 / FS_HZ).astype(np.float64), spec.astype(np.float64)


def peak_hz(freqs: npt.NDArray[np.float64], spec: npt.NDArray[np.float64], lo: float,
            hi: float) -> float:
    band = (freqs >= lo) & (freqs <= hi)
    return float(freqs[band][np.argmax(spec[band])])


def level(freqs: npt.NDArray[np.float64], spec: npt.NDArray[np.float64], f_hz: float) -> float:
    near = np.abs(freqs - f_hz) <= 0.01 * f_hz
    return float(spec[near].max())


def floor(freqs: npt.NDArray[np.float64], spec: npt.NDArray[np.float64]) -> float:
    return float(np.median(spec[(freqs >= 5) & (freqs <= 500)]))


def test_outer_race_envelope_peaks_at_bpfo() -> None:
    x, orders = simulate([{"kind": "outer_race"}])
    freqs, spec = envelope_spectrum(x)
    bpfo = orders["bpfo"] * SHAFT_HZ
    assert abs(peak_hz(freqs, spec, 20, 500) - bpfo) <= 0.01 * bpfo
    assert level(freqs, spec, 2 * bpfo) > 10 * floor(freqs, spec)  # harmonics too


def test_inner_race_envelope_peaks_at_bpfi_with_shaft_sidebands() -> None:
    x, orders = simulate([{"kind": "inner_race"}])
    freqs, spec = envelope_spectrum(x)
    bpfi = orders["bpfi"] * SHAFT_HZ
    assert abs(peak_hz(freqs, spec, 60, 500) - bpfi) <= 0.01 * bpfi
    noise = floor(freqs, spec)
    for side in (bpfi - SHAFT_HZ, bpfi + SHAFT_HZ):
        assert level(freqs, spec, side) > 10 * noise, f"no sideband at {side:.1f} Hz"
    assert level(freqs, spec, SHAFT_HZ) > 10 * noise  # the modulation itself


def test_ball_envelope_peaks_at_twice_bsf_with_ftf_sidebands() -> None:
    x, orders = simulate([{"kind": "ball"}])
    freqs, spec = envelope_spectrum(x)
    two_bsf, ftf = 2 * orders["bsf"] * SHAFT_HZ, orders["ftf"] * SHAFT_HZ
    assert abs(peak_hz(freqs, spec, 40, 500) - two_bsf) <= 0.01 * two_bsf
    noise = floor(freqs, spec)
    for side in (two_bsf - ftf, two_bsf + ftf):
        assert level(freqs, spec, side) > 5 * noise, f"no FTF sideband at {side:.1f} Hz"


def test_healthy_envelope_has_no_bearing_lines() -> None:
    x, orders = simulate([])
    freqs, spec = envelope_spectrum(x)
    noise = floor(freqs, spec)
    for order in ("bpfo", "bpfi"):
        assert level(freqs, spec, orders[order] * SHAFT_HZ) < 5 * noise


@pytest.mark.parametrize("kind, harmonic", [("imbalance", 1), ("misalignment", 2)])
def test_shaft_faults_raise_their_harmonic(kind: str, harmonic: int) -> None:
    base, _ = simulate([], seconds=4.0)
    faulty, _ = simulate([{"kind": kind, "amplitude_g": 0.5}], seconds=4.0)
    freqs = np.fft.rfftfreq(base.size, 1 / FS_HZ).astype(np.float64)

    def line(x: npt.NDArray[np.float64]) -> float:
        spec = np.abs(np.fft.rfft(x * np.hanning(x.size))) * 4 / x.size
        return level(freqs, spec, harmonic * SHAFT_HZ)

    assert line(faulty) > 5 * line(base)
    assert line(faulty) == pytest.approx(0.5, rel=0.3)


def test_bearing_fault_raises_kurtosis_not_just_rms() -> None:
    healthy, _ = simulate([], seconds=4.0)
    faulty, _ = simulate([{"kind": "outer_race"}], seconds=4.0)

    def kurt(x: npt.NDArray[np.float64]) -> float:
        x = x - x.mean()
        return float(np.mean(x**4) / np.mean(x**2) ** 2)

    assert kurt(healthy) == pytest.approx(3.0, abs=0.4)
    assert kurt(faulty) > 4.5


def test_degradation_path_is_monotone_noisy_and_fails_at_end_of_life() -> None:
    life = LifeSpec(life_s=1000.0)
    fault = FaultSpec("outer_race", growth="exponential", onset_frac=0.2, path_noise=0.5)
    paths = [DegradationPath(fault, life, np.random.default_rng(s)) for s in range(5)]
    t = np.linspace(0, 1000, 501)
    curves = np.array([[p.severity(v) for v in t] for p in paths])
    assert np.all(curves[:, t <= 200] == 0.0)
    assert np.all(np.diff(curves, axis=1) >= 0)
    assert np.all(curves[:, t < 1000] < 1.0) and np.all(curves[:, -1] == 1.0)
    mid = curves[:, np.searchsorted(t, 600)]  # half of the life after onset
    assert mid.std() > 0.005  # seeds give different paths
    assert np.all(mid < 0.3)  # exponential-like: most growth near the end
    assert paths[0].severity(1200.0) > 1.0


def test_amplitude_spread_varies_impacts_and_keeps_the_line() -> None:
    """amplitude_spread: impacts differ more from one another (a broader peak distribution,
    lower line-to-floor ratio), yet the defect line stays; bad values are refused."""
    from foreshock.errors import ConfigError

    def peaks(spread: float) -> tuple[npt.NDArray[np.float64], float]:
        x, orders = simulate([{"kind": "outer_race", "amplitude_spread": spread}],
                             noise_g=0.001)
        bpfo = orders["bpfo"] * SHAFT_HZ
        n = int(FS_HZ / bpfo)
        per_impact = np.abs(x[: x.size // n * n].reshape(-1, n)).max(axis=1)
        freqs, spec = envelope_spectrum(x)
        return per_impact, level(freqs, spec, bpfo) / floor(freqs, spec)

    steady, line_steady = peaks(0.0)
    varied, line_varied = peaks(0.6)
    cv = lambda p: float(np.std(p) / np.mean(p))  # noqa: E731
    assert cv(varied) > 3 * cv(steady)
    assert line_varied > 5 and line_varied < line_steady
    with pytest.raises(ConfigError, match="amplitude_spread"):
        FaultSpec(kind="ball", amplitude_spread=1.5)
