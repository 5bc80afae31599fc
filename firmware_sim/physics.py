"""Signal physics of a rotating machine, generated block by block (vectorised numpy).

Per vibration channel, in g, float32, at any sample rate up to 51.2 kHz:

- shaft tones: 1x imbalance, 2x (and 1x, 3x) misalignment, 0.5x and 1x..8x looseness
  harmonics, following a slowly varying shaft speed;
- rolling-element bearing defects, the accepted model (McFadden & Smith; Randall & Antoni):
  an impulse train at the geometric defect frequency (BPFO, BPFI, 2xBSF in shaft orders),
  with random jitter of the spacing (slip, 1-2 % by default) and of the amplitudes (both
  per fault), each impulse ringing a decaying structural resonance of a few kHz;
  inner-race impulses amplitude-modulated at shaft speed (the defect passes through the
  load zone once per turn), ball impulses modulated at FTF (the cage carries the ball
  through the load zone);
- gear mesh tone with shaft-rate sidebands, broadband noise;
- a temperature channel that rises with fault severity.

Fault severity follows :class:`DegradationPath`: 0 before onset, then a noisy
exponential-like climb reaching exactly 1 (failure) at end of life.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import numpy.typing as npt

from firmware_sim.scenario import BEARING_FAULTS, FaultSpec, LifeSpec, MachineSpec

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
PATH_POINTS = 1024
MAX_POST_FAILURE_SEVERITY = 3.0
RING_DECAY = 1e-3  # the resonance kernel is cut where its envelope falls below this


class DegradationPath:
    """Severity of one fault over life time: a noisy exponential reaching 1 at end of life.

    ``s(u) = (exp(k u + b(u)) - 1) / (exp(k) - 1)`` for the life fraction ``u`` since onset,
    where ``b`` is a Brownian bridge (0 at both ends), made monotone and kept below 1 until
    ``u = 1``. Past end of life the severity keeps growing, capped at 3.
    """

    def __init__(self, fault: FaultSpec, life: LifeSpec, rng: np.random.Generator) -> None:
        self.fault = fault
        self.life_s = life.life_s
        self.onset_s = fault.onset_frac * life.life_s
        steps = rng.standard_normal(PATH_POINTS) * fault.path_noise / math.sqrt(PATH_POINTS)
        walk = np.concatenate([[0.0], np.cumsum(steps)])
        u = np.linspace(0.0, 1.0, PATH_POINTS + 1)
        bridge = walk - u * walk[-1]
        k = fault.growth_rate
        raw = np.expm1(k * u + bridge) / math.expm1(k)
        raw = np.maximum.accumulate(np.clip(raw, 0.0, None))
        self._u = u
        self._s = np.minimum(raw, 0.995 * u + 1e-9)
        self._s[-1] = 1.0

    def severity(self, life_time_s: float) -> float:
        if self.fault.growth == "constant":
            return self.fault.severity
        u = (life_time_s - self.onset_s) / (self.life_s - self.onset_s)
        if u <= 0.0:
            return 0.0
        if u >= 1.0:
            k = self.fault.growth_rate
            return min(math.expm1(k * u) / math.expm1(k), MAX_POST_FAILURE_SEVERITY)
        return float(np.interp(u, self._u, self._s))


def resonance_kernel(sample_rate_hz: float, resonance_hz: float,
                     damping: float) -> tuple[F64, float, float]:
    """One structural mode: ``(kernels, decay_per_s, damped_rad_s)``.

    ``kernels[0]`` is the impulse response ``exp(-a t) sin(w t)`` (peak 1) and ``kernels[1]``
    its quadrature ``exp(-a t) cos(w t)`` on the same scale: together they place an impact
    at any sub-sample time exactly, since ``h(t + d) = exp(-a d) (cos(w d) h_s + sin(w d) h_c)``.
    """
    # A node sampling too slowly for the resonance sees it through its anti-alias filter:
    # keep the mode below 0.4 fs so impacts still ring instead of aliasing.
    resonance_hz = min(resonance_hz, 0.4 * sample_rate_hz)
    decay_per_s = damping * 2 * math.pi * resonance_hz
    length = max(8, math.ceil(-math.log(RING_DECAY) / decay_per_s * sample_rate_hz))
    t = np.arange(length) / sample_rate_hz
    damped = 2 * math.pi * resonance_hz * math.sqrt(max(1.0 - damping**2, 1e-6))
    env = np.exp(-decay_per_s * t)
    kernels = np.stack([env * np.sin(damped * t), env * np.cos(damped * t)])
    return kernels / float(np.max(np.abs(kernels[0]))), decay_per_s, damped


class VibrationModel:
    """Stateful generator of one vibration channel; each call continues the signal."""

    def __init__(self, machine: MachineSpec, orders: dict[str, float],
                 faults: list[tuple[FaultSpec, DegradationPath]],
                 rng: np.random.Generator, rpm_scale: float = 1.0) -> None:
        self.machine = machine
        self.orders = orders
        self.faults = faults
        self.rng = rng
        self.f0_hz = machine.rpm / 60.0 * rpm_scale
        self.speed_phase = float(rng.uniform(0, 2 * math.pi))
        self.tone_phases = rng.uniform(0, 2 * math.pi, size=8)
        self.t_s = 0.0
        self.shaft_cycles = 0.0
        self.next_impulse: dict[str, float] = {f.kind: float(rng.uniform(0, 1)) / orders_of(
            f.kind, orders) for f, _ in faults if f.kind in BEARING_FAULTS}
        self._tail = np.zeros(0)
        self._kernel_key: tuple[float, int] = (0.0, 0)
        self._kernel_fft: npt.NDArray[np.complex128] = np.zeros((2, 0), np.complex128)
        self._kernels: F64 = np.zeros((2, 0))
        self._mode_rate, self._decay, self._damped = 0.0, 0.0, 0.0

    def block(self, n: int, sample_rate_hz: float, life_time_s: float) -> tuple[F32, float]:
        """The next ``n`` samples at ``sample_rate_hz``; returns (samples g, mean rpm)."""
        m = self.machine
        dur_s = n / sample_rate_hz
        # The speed wanders slowly (period >> a frame): linear within one frame.
        f0, f1 = (self.f0_hz * (1.0 + m.speed_variation * math.sin(
            2 * math.pi * t / m.speed_period_s + self.speed_phase))
            for t in (self.t_s, self.t_s + dur_s))
        f_hz = np.linspace(f0, f1, n, endpoint=False)
        cycles = self.shaft_cycles + np.cumsum(f_hz) / sample_rate_hz
        severities: dict[str, float] = {
            f.kind: path.severity(life_time_s) for f, path in self.faults}
        x = self._shaft(cycles, severities)
        if self.next_impulse:
            x += self._bearing(cycles, severities, sample_rate_hz)
        worst = max((s for k, s in severities.items() if k in BEARING_FAULTS), default=0.0)
        noise_g = m.noise_g * (1.0 + 0.5 * min(worst, 2.0))
        x += noise_g * self.rng.standard_normal(n)
        self.t_s += dur_s
        self.shaft_cycles = float(cycles[-1])
        return x.astype(np.float32), (f0 + f1) * 30.0

    def _shaft(self, cycles: F64, sev: dict[str, float]) -> F64:
        """Shaft harmonics as one polynomial in ``z = exp(i w)`` (one complex exp a frame)."""
        m, ph = self.machine, np.exp(1j * self.tone_phases)
        fault_g = {f.kind: f.peak_g * sev[f.kind] for f, _ in self.faults}
        imb = m.imbalance_g + fault_g.get("imbalance", 0.0)
        mis = m.misalignment_g + fault_g.get("misalignment", 0.0)
        loose = m.looseness_g + fault_g.get("looseness", 0.0)
        coef = np.zeros(9, np.complex128)  # coef[k] multiplies z**k
        coef[1] = imb * ph[0] + 0.4 * mis * ph[2]
        coef[2] = mis * ph[1]
        coef[3] = 0.3 * mis * ph[3]
        if loose > 0:
            for k in range(1, 9):
                coef[k] += loose / math.sqrt(k) * ph[(k + 4) % 8]
        w = 2 * math.pi * cycles
        z = np.exp(1j * w)
        top = int(np.flatnonzero(coef)[-1]) if coef.any() else 0
        acc = np.full(w.size, coef[top])
        for k in range(top - 1, -1, -1):  # Horner
            acc = acc * z + coef[k]
        x = acc.imag.copy()
        if loose > 0:
            x += loose * 0.5 * np.sin(0.5 * w + self.tone_phases[4])
        gear = m.gear_mesh_g + fault_g.get("gear", 0.0)
        if m.gear_teeth and gear > 0:
            x += gear * np.sin(m.gear_teeth * w + self.tone_phases[5]) * (
                1.0 + 0.3 * np.sin(w + self.tone_phases[6]))
        return x

    def _bearing(self, cycles: F64, sev: dict[str, float], sample_rate_hz: float) -> F64:
        n = cycles.size
        impulses = np.zeros((2, n))  # weights of the in-phase and quadrature kernels
        decay, damped = self._mode(sample_rate_hz)
        for fault, _ in self.faults:
            if fault.kind not in BEARING_FAULTS:
                continue
            amp = fault.peak_g * sev[fault.kind]
            pos, phase_at = self._impulse_positions(fault, cycles)
            if amp <= 0 or pos.size == 0:
                continue
            spread = fault.amplitude_spread * self.rng.standard_normal(pos.size)
            gain = amp * np.maximum(1.0 + spread, 0.0)
            gain *= self._modulation(fault, phase_at)
            # Exact sub-sample timing: start the ring at the next sample, advanced by d.
            at = np.ceil(pos).astype(np.intp)
            d_s = (at - pos) / sample_rate_hz
            gain *= np.exp(-decay * d_s)
            np.add.at(impulses[0], at, gain * np.cos(damped * d_s))
            np.add.at(impulses[1], at, gain * np.sin(damped * d_s))
        return self._ring(impulses, sample_rate_hz)

    def _impulse_positions(self, fault: FaultSpec, cycles: F64) -> tuple[F64, F64]:
        """Fractional sample positions of this block's impacts and the shaft cycle of each.

        Impacts sit on a grid of ``1 / order`` shaft cycles, each displaced at random
        (slip) so that the spacing varies by ``jitter`` (relative standard deviation) while
        the mean rate stays locked to the geometric defect frequency.
        """
        spacing = 1.0 / orders_of(fault.kind, self.orders)  # shaft cycles between impacts
        start, end = self.next_impulse[fault.kind], float(cycles[-1])
        if start > end:
            return np.zeros(0), np.zeros(0)
        grid = start + spacing * np.arange(int((end - start) / spacing) + 1)
        self.next_impulse[fault.kind] = float(grid[-1] + spacing)
        slip = fault.jitter / math.sqrt(2.0) * self.rng.standard_normal(grid.size)
        at = grid + spacing * slip
        return np.interp(at, cycles, np.arange(cycles.size, dtype=np.float64)), at

    def _modulation(self, fault: FaultSpec, cycles_at: F64) -> F64:
        depth = fault.modulation
        if fault.kind == "inner_race":  # defect rotates through the load zone each turn
            return 1.0 - depth + depth * 0.5 * (1.0 + np.cos(2 * math.pi * cycles_at))
        if fault.kind == "ball":  # the cage carries the ball through the load zone
            ftf = self.orders["ftf"]
            return 1.0 - depth + depth * 0.5 * (1.0 + np.cos(2 * math.pi * ftf * cycles_at))
        return np.ones_like(cycles_at)

    def _mode(self, sample_rate_hz: float) -> tuple[float, float]:
        m = self.machine
        if sample_rate_hz != self._mode_rate:
            self._kernels, self._decay, self._damped = resonance_kernel(
                sample_rate_hz, m.resonance_hz, m.resonance_damping)
            self._mode_rate = sample_rate_hz
        return self._decay, self._damped

    def _ring(self, impulses: F64, sample_rate_hz: float) -> F64:
        """Convolve the impulses with the resonance (overlap-add, state across blocks)."""
        n = impulses.shape[1]
        length = self._kernels.shape[1]
        key = (sample_rate_hz, n)
        if key != self._kernel_key:
            nfft = 1 << math.ceil(math.log2(n + length))
            self._kernel_fft = np.fft.rfft(self._kernels, nfft, axis=-1)
            self._kernel_key = key
            if self._tail.size != length - 1:
                self._tail = np.zeros(length - 1)
        if not impulses.any() and not self._tail.any():
            return impulses[0]
        nfft = 2 * (self._kernel_fft.shape[1] - 1)
        spec = (np.fft.rfft(impulses, nfft, axis=-1) * self._kernel_fft).sum(axis=0)
        y = np.fft.irfft(spec, nfft)[: n + length - 1]
        y[: self._tail.size] += self._tail
        self._tail = y[n:].copy()
        return y[:n]


def orders_of(kind: str, orders: dict[str, float]) -> float:
    """Impact rate of a bearing fault kind in shaft orders (a ball strikes both races)."""
    return {"outer_race": orders["bpfo"], "inner_race": orders["bpfi"],
            "ball": 2.0 * orders["bsf"]}[kind]


class TemperatureModel:
    """Bearing housing temperature (degrees C): rises with the worst fault severity."""

    def __init__(self, machine: MachineSpec, rng: np.random.Generator) -> None:
        self.machine = machine
        self.rng = rng
        self.t_s = 0.0

    def block(self, n: int, sample_rate_hz: float, severity: float) -> F32:
        m = self.machine
        t = self.t_s + np.arange(n) / sample_rate_hz
        self.t_s += n / sample_rate_hz
        drift = 0.5 * np.sin(2 * math.pi * t / 600.0)
        rise = m.temperature_rise_c * min(severity, MAX_POST_FAILURE_SEVERITY)
        return (m.temperature_c + rise + drift + 0.05 * self.rng.standard_normal(n)).astype(
            np.float32)
