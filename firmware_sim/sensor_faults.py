"""Sensor and link faults applied by a simulated node.

Sample-level faults change a frame's values (clipping, flatline, spikes, DC drift, a drifting
sampling clock); frame-level faults change which frames leave the node and how (dropout,
disconnect/reconnect, reordering, duplicates, corrupted bytes, a wrong sample rate in the
header). Every decision is drawn from the node's seeded generator, so a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from firmware_sim.scenario import SensorFaultSpec

F32 = npt.NDArray[np.float32]


@dataclass
class FrameFate:
    """What happens to one frame on its way out of the node."""

    send: bool = True
    duplicate: bool = False
    hold: bool = False  # send after the next frame (out of order)
    corrupt: bool = False
    reset_seq: bool = False  # first frame after a reconnect that restarts the sequence
    rate_error: float = 0.0  # relative error of the sample rate written in the header


class SensorFaults:
    """Applies the scenario's sensor faults to one node's frames."""

    def __init__(self, specs: tuple[SensorFaultSpec, ...], rng: np.random.Generator) -> None:
        self.specs = specs
        self.rng = rng
        self._held: float | None = None  # flatline value
        self._disconnected = False

    def clock_error(self, t_s: float) -> float:
        """Relative error of the node's real sampling clock at ``t_s`` (clock_drift)."""
        err = 0.0
        for spec in self.specs:
            if spec.kind == "clock_drift" and spec.active(t_s):
                span = spec.duration_s if np.isfinite(spec.duration_s) else 600.0
                err += spec.value * min(1.0, (t_s - spec.start_s) / span)
        return err

    def apply_samples(self, x: F32, t_s: float, sample_rate_hz: float) -> F32:
        """Apply the active sample-level faults to the frame starting at stream ``t_s``."""
        flat = False
        for spec in self.specs:
            if not spec.active(t_s):
                continue
            if spec.kind == "clipping":
                x = np.clip(x, -spec.value, spec.value)
            elif spec.kind == "flatline":
                flat = True
                if self._held is None:
                    self._held = float(x[0])
                x = np.full_like(x, self._held)
            elif spec.kind == "spikes":
                x = self._spikes(x, spec, sample_rate_hz)
            elif spec.kind == "dc_drift":
                t = t_s + np.arange(x.size) / sample_rate_hz - spec.start_s
                x = x + (spec.value * t).astype(np.float32)
        if not flat:
            self._held = None
        return x.astype(np.float32, copy=False)

    def _spikes(self, x: F32, spec: SensorFaultSpec, sample_rate_hz: float) -> F32:
        count = int(self.rng.poisson(spec.rate * x.size / sample_rate_hz))
        if count == 0:
            return x
        x = x.copy()
        pos = self.rng.integers(0, x.size, count)
        x[pos] += (spec.value * self.rng.choice([-1.0, 1.0], count)).astype(np.float32)
        return x

    def fate(self, t_s: float) -> FrameFate:
        """Decide what happens to the frame starting at stream ``t_s``."""
        fate = FrameFate()
        connected = True
        for spec in self.specs:
            if not spec.active(t_s):
                continue
            kind = spec.kind
            if kind == "disconnect":
                connected = False
                fate.reset_seq = fate.reset_seq or spec.reset_seq
            elif kind == "dropout" and self.rng.random() < spec.rate:
                fate.send = False
            elif kind == "duplicate" and self.rng.random() < spec.rate:
                fate.duplicate = True
            elif kind == "reorder" and self.rng.random() < spec.rate:
                fate.hold = True
            elif kind == "corrupt" and self.rng.random() < spec.rate:
                fate.corrupt = True
            elif kind == "rate_error":
                fate.rate_error += spec.value
        if not connected:
            fate.send = False
            self._disconnected = True
            return fate
        if self._disconnected:  # reconnecting
            self._disconnected = False
            fate.reset_seq = any(s.kind == "disconnect" and s.reset_seq for s in self.specs)
        else:
            fate.reset_seq = False
        return fate

    def corrupt(self, data: bytes) -> bytes:
        """Flip one random bit of one random byte."""
        buf = bytearray(data)
        i = int(self.rng.integers(0, len(buf)))
        buf[i] ^= 1 << int(self.rng.integers(0, 8))
        return bytes(buf)
