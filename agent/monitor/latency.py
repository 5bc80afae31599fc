"""Per-stage latency and throughput: bounded reservoirs of durations, counters, gauges.

``StageTimer.record(stage, seconds)`` is pure (the caller measured the duration);
``with timer.measure(stage):`` measures with ``time.perf_counter`` for the service loop.
Each stage keeps its last ``capacity`` durations in a ring (memory is bounded however long
the agent runs) plus a lifetime count, sum and max. A batch of n windows timed together
(``record(stage, seconds, count=n)``) fills n ring entries of ``seconds / n`` with one slice
write, so the percentiles weigh every window alike. ``stats()`` gives p50/p90/p99 over the
ring, computed with ``numpy.percentile`` (linear interpolation) only when asked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from foreshock.errors import ConfigError

STAGES = ("source", "window", "quality", "features", "inference", "decision", "outbox", "link")
PERCENTILES = (50.0, 90.0, 99.0)


class _Ring:
    def __init__(self, capacity: int) -> None:
        self.values = np.zeros(capacity, dtype=np.float64)
        self.head = 0
        self.filled = 0
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0

    def add(self, seconds_each: float, count: int = 1) -> None:
        """``count`` durations of ``seconds_each``: at most two slice writes into the ring."""
        cap = self.values.size
        k = min(count, cap)
        end = self.head + k
        if end <= cap:
            self.values[self.head:end] = seconds_each
        else:
            self.values[self.head:] = seconds_each
            self.values[:end - cap] = seconds_each
        self.head = end % cap
        self.filled = min(cap, self.filled + k)
        self.count += count
        self.total_s += seconds_each * count
        self.max_s = max(self.max_s, seconds_each)

    def recent(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        return self.values[:self.filled]


class StageTimer:
    """Durations per pipeline stage (``STAGES`` plus any other name a caller uses)."""

    def __init__(self, capacity: int = 1024, *, max_stages: int = 32) -> None:
        if capacity < 1:
            raise ConfigError(f"monitor.latency_capacity = {capacity!r} must be >= 1")
        self.capacity = capacity
        self.max_stages = max_stages
        self._rings: dict[str, _Ring] = {s: _Ring(capacity) for s in STAGES}
        self.dropped = 0

    def record(self, stage: str, seconds: float, count: int = 1) -> None:
        """Add one duration, or ``count`` windows that took ``seconds`` in total: ``count``
        entries of ``seconds / count`` each (one slice write, whatever ``count``), so the
        percentiles are per window however the service batches.

        Negative or non-finite durations, and counts below 1, are counted in ``dropped``
        and ignored.
        """
        if not (math.isfinite(seconds) and seconds >= 0 and count >= 1):
            self.dropped += 1
            return
        ring = self._rings.get(stage)
        if ring is None:
            if len(self._rings) >= self.max_stages:
                self.dropped += 1
                return
            ring = self._rings[stage] = _Ring(self.capacity)
        ring.add(seconds / count, int(count))

    @contextmanager
    def measure(self, stage: str, count: int = 1) -> Iterator[None]:
        """Time the body with ``time.perf_counter`` and record it under ``stage``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record(stage, time.perf_counter() - start, count)

    def percentiles_s(self, stage: str) -> dict[str, float]:
        """``{"p50": s, "p90": s, "p99": s}`` over the recent durations (empty if none)."""
        ring = self._rings.get(stage)
        if ring is None or ring.filled == 0:
            return {}
        values = np.percentile(ring.recent(), PERCENTILES)
        return {f"p{p:g}": float(v) for p, v in zip(PERCENTILES, values, strict=True)}

    def stats(self) -> dict[str, dict[str, float]]:
        """Per stage with data: count, mean/max and p50/p90/p99 in milliseconds."""
        out: dict[str, dict[str, float]] = {}
        for stage, ring in list(self._rings.items()):
            if ring.count == 0:
                continue
            entry = {"count": ring.count, "mean_ms": 1e3 * ring.total_s / ring.count,
                     "max_ms": 1e3 * ring.max_s}
            entry.update({f"{k}_ms": 1e3 * v for k, v in self.percentiles_s(stage).items()})
            out[stage] = {k: round(float(v), 4) for k, v in entry.items()}
        return out
