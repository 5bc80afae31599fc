"""A simulated sensor node: physics in, binary frames out, with its own frame encoder.

The encoder here is written from ``docs/protocol.md`` independently of
``foreshock.wire.encode`` (only the constants are shared), so a test that decodes what this
node sends checks the agent's decoder against the spec rather than against itself.

    node = SimNode(Scenario.load("outer-race-growing"), "pump-01", seed=7)
    source = NodeSource(node, realtime=True, speed=1.0)   # an agent Source
"""

from __future__ import annotations

import dataclasses
import logging
import math
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from firmware_sim.physics import DegradationPath, TemperatureModel, VibrationModel
from firmware_sim.scenario import FAULT_LABELS, Scenario, SensorFaultSpec
from firmware_sim.sensor_faults import SensorFaults
from foreshock.errors import ConfigError, FrameError
from foreshock.wire import MAGIC, Frame, decode

__all__ = ["NodeHealth", "NodeSource", "Scenario", "SimNode", "encode_frame", "fleet"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
FORMAT_CODES = {"int16": 0, "float32": 1}
VIBRATION, TEMPERATURE = 0, 1
CHUNK_S = 0.2  # physics runs in blocks of this many stream seconds (>= one frame)


def encode_frame(device_id: str, channel: int, seq: int, timestamp_us: int,
                 sample_rate_hz: float, samples: npt.NDArray[np.int16] | npt.NDArray[np.float32],
                 rpm: float = 0.0, scale: float = 1.0) -> bytes:
    """Encode one frame as docs/protocol.md specifies (little-endian, CRC-32 trailer).

    ``samples`` is int16 (sample_format 0, ``scale`` g per LSB) or float32 (format 1).
    """
    fmt = 0 if samples.dtype == np.int16 else 1
    dev = device_id.encode("ascii")
    body = b"".join((
        MAGIC,
        bytes((PROTOCOL_VERSION, fmt, channel, len(dev))),
        (seq % 2**32).to_bytes(4, "little"),
        timestamp_us.to_bytes(8, "little"),
        struct.pack("<fff", sample_rate_hz, rpm, scale),
        len(samples).to_bytes(2, "little"),
        dev,
        samples.astype("<i2" if fmt == 0 else "<f4").tobytes(),
    ))
    return body + zlib.crc32(body).to_bytes(4, "little")


@dataclass(frozen=True)
class NodeHealth:
    """Ground truth of a node at its current stream time."""

    stream_time_s: float
    life_time_s: float
    severity: float  # worst fault severity; 1.0 = failure
    failed: bool
    label: str  # "normal" until a fault has started
    failure_at_s: float | None  # stream seconds from start to failure; None = never


class SimNode:
    """One channel of one simulated sensor node. ``next_frame_bytes()`` gives its next frame.

    Channel 0 is the vibration accelerometer (g), channel 1 the temperature (degrees C).
    Nodes with the same scenario, device id and seed share the same machine and degradation
    path whatever their channel.
    """

    def __init__(self, scenario: Scenario, device_id: str, seed: int | None = None,
                 channel: int = 0, *, start_time_s: float | None = None,
                 rpm_scale: float = 1.0, life_scale: float = 1.0, faulty: bool = True) -> None:
        if channel not in (VIBRATION, TEMPERATURE):
            raise ConfigError(f"channel {channel} is not simulated; use 0 (vibration) "
                              "or 1 (temperature)")
        _check_finite_link_faults(scenario.sensor_faults)
        self.scenario = scenario
        self.device_id = device_id
        self.channel = channel
        self.seed = scenario.seed if seed is None else seed
        base = [self.seed, zlib.crc32(device_id.encode())]
        machine_rng = np.random.default_rng(np.random.SeedSequence(base))
        signal_rng = np.random.default_rng(np.random.SeedSequence([*base, 1, channel]))
        self.life = dataclasses.replace(
            scenario.life, life_s=scenario.life.life_s * life_scale,
            start_s=min(scenario.life.start_s, scenario.life.life_s * life_scale))
        fault_specs = scenario.faults if faulty else ()
        self.paths = [(f, DegradationPath(f, self.life, machine_rng)) for f in fault_specs]
        self.vibration = VibrationModel(scenario.machine, scenario.bearing.orders(), self.paths,
                                        signal_rng, rpm_scale)
        self.temperature = TemperatureModel(scenario.machine, signal_rng)
        self.faults = SensorFaults(scenario.sensor_faults, signal_rng)
        self.rpm_scale = rpm_scale
        self.start_us = int((time.time() if start_time_s is None else start_time_s) * 1e6)
        if channel == VIBRATION:
            self.nominal_rate_hz = scenario.sample_rate_hz
            self.frame_samples = scenario.frame_samples
        else:
            self.nominal_rate_hz = scenario.temperature_rate_hz
            self.frame_samples = max(1, round(scenario.temperature_rate_hz))
        self.scale = (scenario.full_scale_g / 32767.0
                      if scenario.sample_format == "int16" and channel == VIBRATION else 1.0)
        self.stream_time_s = 0.0
        self.samples_done = 0
        self.seq = 0
        self._out: deque[tuple[bytes, float]] = deque()
        self._held: tuple[bytes, float] | None = None
        self._chunk: npt.NDArray[np.float32] = np.zeros(0, np.float32)
        self._chunk_rpm = 0.0

    # ----------------------------------------------------------------- ground truth
    @property
    def failure_at_s(self) -> float | None:
        """Stream seconds from node start until failure (severity 1); None if it never fails."""
        growing = any(f.growth == "exponential" for f, _ in self.paths)
        return self.life.failure_stream_s if growing else None

    @property
    def failure_at_us(self) -> int | None:
        """Failure moment on the node's frame clock (µs since the Unix epoch)."""
        at = self.failure_at_s
        return None if at is None else self.start_us + int(at * 1e6)

    @property
    def life_time_s(self) -> float:
        return self.life.start_s + self.stream_time_s * self.life.time_acceleration

    def severity(self) -> float:
        life_t = self.life_time_s
        return max((p.severity(life_t) for _, p in self.paths), default=0.0)

    @property
    def health(self) -> NodeHealth:
        sev = self.severity()
        label = next((FAULT_LABELS.get(f.kind, "normal") for f, p in self.paths
                      if p.severity(self.life_time_s) > 0), "normal")
        at = self.failure_at_s
        return NodeHealth(self.stream_time_s, self.life_time_s, sev,
                          at is not None and self.stream_time_s >= at, label, at)

    @property
    def done(self) -> bool:
        """True once the scenario's ``duration_s`` of stream has been produced."""
        return 0 < self.scenario.duration_s <= self.stream_time_s + 1e-9

    # ----------------------------------------------------------------- frames
    def next_frame_bytes(self) -> bytes:
        """The next frame this node puts on the wire (frames lost to faults are skipped)."""
        return self.next_frame()[0]

    def next_frame(self) -> tuple[bytes, float]:
        """The next frame and the stream time (s) at which the node sends it."""
        while not self._out:
            self._produce()
        return self._out.popleft()

    def _produce(self) -> None:
        t0 = self.stream_time_s
        fate = self.faults.fate(t0)
        n = self.frame_samples
        actual_rate = self.nominal_rate_hz * (1.0 + self.faults.clock_error(t0))
        samples, rpm = self._samples(n, actual_rate)
        timestamp_us = self.start_us + round(self.samples_done / self.nominal_rate_hz * 1e6)
        self.stream_time_s += n / actual_rate
        self.samples_done += n
        if fate.reset_seq:
            self.seq = 0
        seq, self.seq = self.seq, (self.seq + 1) % 2**32
        if not fate.send:
            return
        data = encode_frame(self.device_id, self.channel, seq, timestamp_us,
                            self.nominal_rate_hz * (1.0 + fate.rate_error), samples, rpm,
                            self.scale)
        if fate.corrupt:
            data = self.faults.corrupt(data)
        item = (data, self.stream_time_s)
        if fate.hold and self._held is None:
            self._held = item
            return
        self._out.append(item)
        if fate.duplicate:
            self._out.append(item)
        if self._held is not None:
            self._out.append((self._held[0], self.stream_time_s))
            self._held = None

    def _samples(self, n: int, rate_hz: float) -> tuple[npt.NDArray[np.int16] | npt.NDArray[
            np.float32], float]:
        if self.channel == TEMPERATURE:
            return self.temperature.block(n, rate_hz, self.severity()), 0.0
        x, rpm = self._physics(n, rate_hz)
        x = self.faults.apply_samples(x, self.stream_time_s, rate_hz)
        tach = self.scenario.machine.tach_noise
        rpm *= 1.0 + tach * float(self.vibration.rng.standard_normal())
        if self.scale != 1.0:
            q = np.clip(np.round(x / np.float32(self.scale)), -32768, 32767)
            return q.astype(np.int16), rpm
        return x, rpm


    def _physics(self, n: int, rate_hz: float) -> tuple[npt.NDArray[np.float32], float]:
        """``n`` vibration samples, generated in chunks of ``CHUNK_S`` to amortise overhead."""
        if self._chunk.size < n:
            size = max(n, round(CHUNK_S * rate_hz))
            x, self._chunk_rpm = self.vibration.block(size, rate_hz, self.life_time_s)
            self._chunk = np.concatenate([self._chunk, x])
        out, self._chunk = self._chunk[:n], self._chunk[n:]
        return out, self._chunk_rpm


def _check_finite_link_faults(specs: tuple[SensorFaultSpec, ...]) -> None:
    for spec in specs:
        silent = spec.kind == "disconnect" or (spec.kind == "dropout" and spec.rate >= 1.0)
        if silent and not math.isfinite(spec.duration_s):
            raise ConfigError(f"sensor_faults[{spec.kind}] silences the node for ever; "
                              "give it a finite duration_s")


def fleet(scenario: Scenario, devices: int | None = None, *, seed: int | None = None,
          channel: int = 0, start_time_s: float | None = None) -> list[SimNode]:
    """The nodes of a scenario's fleet: ids ``<prefix>-NNN``, spread speeds and lives.

    The first ``faulty_fraction`` of the nodes carry the scenario's faults; the rest are
    healthy machines of the same kind.
    """
    spec = scenario.fleet
    count = spec.devices if devices is None else devices
    base_seed = scenario.seed if seed is None else seed
    rng = np.random.default_rng(np.random.SeedSequence([base_seed, 0xF1EE7]))
    rpm_k = 1.0 + spec.rpm_spread * rng.uniform(-1, 1, count)
    life_k = 1.0 + spec.life_spread * rng.uniform(-1, 1, count)
    faulty = math.ceil(spec.faulty_fraction * count)
    start = time.time() if start_time_s is None else start_time_s
    return [SimNode(scenario, f"{spec.device_prefix}-{i:03d}", base_seed + i, channel,
                    start_time_s=start, rpm_scale=float(rpm_k[i]),
                    life_scale=float(life_k[i]), faulty=i < faulty)
            for i in range(count)]


class NodeSource:
    """A simulated node as an agent ``Source``: decodes the node's own bytes with
    ``foreshock.wire.decode`` and, when ``realtime``, paces frames to the wall clock x speed.
    """

    def __init__(self, node: SimNode, realtime: bool = True, speed: float = 1.0,
                 batch: int = 64) -> None:
        if not speed > 0:
            raise ConfigError(f"speed {speed!r} must be > 0")
        self.node = node
        self.realtime = realtime
        self.speed = speed
        self.batch = batch
        self.stats: dict[str, int] = {"frames": 0, "bad_frames": 0, "dropped_bytes": 0}
        self._next: tuple[bytes, float] | None = None
        self._t0: float | None = None
        self._closed = False

    def read(self, timeout_s: float) -> list[Frame]:
        if self.exhausted:
            return []
        if self._t0 is None:
            self._t0 = time.monotonic()
        frames: list[Frame] = []
        deadline = time.monotonic() + max(0.0, timeout_s)
        while len(frames) < self.batch and not self.exhausted:
            if self._next is None:
                self._next = self.node.next_frame()
            data, due_s = self._next
            if self.realtime:
                wait_s = due_s / self.speed - (time.monotonic() - self._t0)
                if wait_s > 0:
                    if frames:
                        break
                    remaining_s = deadline - time.monotonic()
                    if wait_s > remaining_s:
                        time.sleep(max(0.0, remaining_s))
                        break
                    time.sleep(wait_s)
            self._next = None
            self._decode(data, frames)
        return frames

    def _decode(self, data: bytes, out: list[Frame]) -> None:
        try:
            out.append(decode(data))
            self.stats["frames"] += 1
        except FrameError:
            self.stats["bad_frames"] += 1
            self.stats["dropped_bytes"] += len(data)

    @property
    def exhausted(self) -> bool:
        return self._closed or (self._next is None and self.node.done)

    def close(self) -> None:
        self._closed = True
