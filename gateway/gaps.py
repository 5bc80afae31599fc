"""Sequence-gap bookkeeping for one device boot (pure: no I/O, no clock).

A device numbers its records ``seq`` within a boot. The gateway knows the lowest and
highest seq it has stored for the boot; every seq between them that it has not stored is a
gap. Gaps below the lowest stored seq are unknowable (a boot may not start at 0) and are
not reported. Late records (a backlog replayed after an outage, or alerts sent before older
telemetry) fill gaps; a gap that stays open means records were lost, e.g. evicted from
the device outbox by its byte budget.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Interval = tuple[int, int]


@dataclass(frozen=True)
class GapUpdate:
    """The new bounds and open gaps of a boot after some records arrived."""

    first_seq: int
    max_seq: int
    gaps: tuple[Interval, ...]
    opened: tuple[Interval, ...]


def update(first_seq: int | None, max_seq: int | None, gaps: Iterable[Interval],
           seqs: Iterable[int]) -> GapUpdate:
    """Apply newly stored ``seqs`` to a boot with bounds and open ``gaps``.

    ``opened`` lists the ranges that were not known to be missing before.
    """
    new = sorted(set(seqs))
    old = sorted(gaps)
    if not new:
        if first_seq is None or max_seq is None:
            raise ValueError("a boot with no stored records needs at least one seq")
        return GapUpdate(first_seq, max_seq, tuple(old), ())
    if first_seq is None or max_seq is None:
        lo, hi, missing = new[0], new[-1], [(new[0], new[-1])]
    else:
        lo, hi = min(first_seq, new[0]), max(max_seq, new[-1])
        missing = list(old)
        if lo < first_seq:
            missing.append((lo, first_seq - 1))
        if hi > max_seq:
            missing.append((max_seq + 1, hi))
        missing.sort()
    result = _subtract(missing, new)
    opened = tuple(g for g in result if not _inside(g, old))
    return GapUpdate(lo, hi, tuple(result), opened)


def _subtract(intervals: list[Interval], points: list[int]) -> list[Interval]:
    """Remove sorted ``points`` from sorted, disjoint ``intervals``."""
    out: list[Interval] = []
    i = 0
    for a, b in intervals:
        while i < len(points) and points[i] < a:
            i += 1
        start = a
        while i < len(points) and points[i] <= b:
            if points[i] > start:
                out.append((start, points[i] - 1))
            start = points[i] + 1
            i += 1
        if start <= b:
            out.append((start, b))
    return out


def _inside(gap: Interval, old: list[Interval]) -> bool:
    return any(a <= gap[0] and gap[1] <= b for a, b in old)


def origin(gap: Interval, old: Iterable[tuple[int, int, float]]) -> float | None:
    """The detection time of the old gap that contains ``gap``, if any."""
    for a, b, detected_ts in old:
        if a <= gap[0] and gap[1] <= b:
            return detected_ts
    return None
