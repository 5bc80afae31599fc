"""Guarded adaptation of ready operating-state baselines (docs/learning.md).

:class:`GuardedAdaptation` is the adaptation half of :class:`agent.baselines.StateBank`:
stochastic median/MAD tracking, ``eta`` fitted sd per step, only for windows scoring below
``healthy_fraction`` of the threshold, never during an incident, at most
``max_updates_per_day`` steps per data day and one hour's share per data hour; upward steps
on damage features are ``up_ratio`` slower, and the scale stays within
``[scale_min_ratio, scale_max_ratio]`` of its fitted value. Each data day's steps are one
audit record. No clock: every time is data time.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.baselines.config import LearningConfig
from agent.baselines.state import StateBaseline, stream_name
from agent.baselines.store import AuditLog

FloatArray = npt.NDArray[np.float32]
DAY_S = 86_400.0
HOUR_S = 3_600.0


class GuardedAdaptation:
    """The adaptation steps, guards and day records of a :class:`StateBank` (mixed into it:
    it reads the bank's config, states, counters and audit log)."""

    config: LearningConfig
    streams: dict[str, dict[str, StateBaseline]]
    counters: dict[str, int]
    audit: AuditLog
    _damage: npt.NDArray[np.bool_]

    def adapt(self, key: Hashable, state: str, features: FloatArray, at_s: float,
              anomaly: float, threshold: float, incident_open: bool) -> bool:
        """Apply one guarded adaptation step; True when the baseline moved."""
        sb = self.streams.get(stream_name(key), {}).get(state)
        if not self.config.adapt or sb is None or sb.status != "ready":
            return False
        if incident_open:
            self.counters["refused_incident"] += 1
            return False
        if not (math.isfinite(anomaly) and anomaly < self.config.healthy_fraction * threshold):
            self.counters["refused_margin"] += 1
            return False
        day = int(at_s // DAY_S)
        if day != sb.day:
            self._close_day(key, state, sb)
            sb.day, sb.day_updates, sb.day_logged, sb.day_shift_sd = day, 0, 0, 0.0
        if not self._within_rate(sb, at_s):
            self.counters["refused_rate"] += 1
            return False
        x = np.asarray(features, np.float64)
        if not np.isfinite(x).all():
            return False
        self._step(sb, x)
        sb.day_updates += 1
        sb.hour_updates += 1
        sb.adapted_total += 1
        self.counters["adapted"] += 1
        return True

    def adapt_batch(self, keys: Sequence[Hashable], states: Sequence[str],
                    features: FloatArray, at_s: npt.ArrayLike, anomaly: npt.ArrayLike,
                    threshold: npt.ArrayLike, incident_open: npt.ArrayLike) -> int:
        """:meth:`adapt` of each window (its stream ``keys[i]``, state ``states[i]``) in
        turn: same rule, same counters, same audit records in the same order, with the
        guards evaluated over the batch and the steps of each state applied to arrays.
        Returns how many windows moved a baseline."""
        n = len(states)
        if n == 0 or not self.config.adapt:
            return 0
        x = np.asarray(features)
        times = _per_row(at_s, n, np.float64)
        score = _per_row(anomaly, n, np.float64)
        limit = _per_row(threshold, n, np.float64)
        incident = _per_row(incident_open, n, np.bool_)
        healthy = np.isfinite(score) & (score < self.config.healthy_fraction * limit)
        groups: dict[tuple[Hashable, str], list[int]] = {}
        for i, pair in enumerate(zip(keys, states, strict=True)):
            groups.setdefault(pair, []).append(i)
        records: list[tuple[int, dict[str, Any]]] = []
        moved = 0
        for (key, state), idx in groups.items():
            sb = self.streams.get(stream_name(key), {}).get(state)
            if sb is None or sb.status != "ready":
                continue
            rows = np.asarray(idx)
            refused = incident[rows]
            self.counters["refused_incident"] += int(np.count_nonzero(refused))
            margin = ~refused & ~healthy[rows]
            self.counters["refused_margin"] += int(np.count_nonzero(margin))
            candidates = rows[~refused & ~margin]
            if candidates.size == 0:
                continue
            moved += self._adapt_state(key, state, sb, x[candidates], times[candidates],
                                       candidates.tolist(), records)
        for _, record in sorted(records, key=lambda r: r[0]):
            self.audit.append(record)
        return moved

    def _adapt_state(self, key: Hashable, state: str, sb: StateBaseline, x: FloatArray,
                     times: npt.NDArray[np.float64], order: list[int],
                     records: list[tuple[int, dict[str, Any]]]) -> int:
        """The rate guard and the steps of :meth:`adapt` for the windows of one state that
        passed the incident and margin guards, a run of windows of one data hour at a
        time; day records go to ``records`` keyed by the window's position (``order``)."""
        budget = self.config.max_updates_per_day
        per_hour = math.ceil(budget / 24)
        first, last = float(times.min()), float(times.max())
        if (int(first // DAY_S) == int(last // DAY_S) == sb.day
                and int(first // HOUR_S) == int(last // HOUR_S) == sb.hour
                and not (sb.day_updates < budget and sb.hour_updates < per_hour)):
            self.counters["refused_rate"] += len(order)   # the hour's room is spent already
            return 0
        days, hours = times // DAY_S, times // HOUR_S
        n = len(order)
        cuts = np.flatnonzero((days[1:] != days[:-1]) | (hours[1:] != hours[:-1])) + 1
        starts = [0, *cuts.tolist()]
        ends = [*starts[1:], n]
        finite = np.isfinite(x).all(axis=1).reshape(-1)
        stepped: list[npt.NDArray[np.intp]] = []
        count = 0
        for a, b, day_f, hour_f in zip(starts, ends, days[starts].tolist(),
                                       hours[starts].tolist(), strict=True):
            day, hour = int(day_f), int(hour_f)
            if day != sb.day:
                if stepped:                     # the day's shift so far, then close it
                    self._steps(sb, x[np.concatenate(stepped)])
                    stepped = []
                if sb.day >= 0 and sb.day_updates > sb.day_logged:
                    records.append((order[a], self._day_record(key, state, sb)))
                    sb.day_logged = sb.day_updates
                sb.day, sb.day_updates, sb.day_logged, sb.day_shift_sd = day, 0, 0, 0.0
            if hour != sb.hour:
                sb.hour, sb.hour_updates = hour, 0
            take = self._take_room(sb, finite[a:b], budget, per_hour)
            if take.size:
                stepped.append(a + take)
                count += int(take.size)
        if stepped:
            self._steps(sb, x[np.concatenate(stepped)])
        return count

    def _take_room(self, sb: StateBaseline, finite: npt.NDArray[np.bool_], budget: int,
                   per_hour: int) -> npt.NDArray[np.intp]:
        """Which windows of a run of one data hour (``finite``: each window's features are
        all finite) step, counted in the state's rate budget and the bank's counters."""
        room = min(budget - sb.day_updates, per_hour - sb.hour_updates)
        # in window order: a finite window steps while there is room, a non-finite one
        # is skipped; once the room is spent every later window of the hour is refused
        ok = np.flatnonzero(finite)
        take = ok[:max(room, 0)]
        if room <= 0:
            self.counters["refused_rate"] += len(finite)
        elif ok.size >= room:               # the rows after the last step
            self.counters["refused_rate"] += len(finite) - int(take[-1]) - 1
        if take.size:
            k = int(take.size)
            sb.day_updates += k
            sb.hour_updates += k
            sb.adapted_total += k
            self.counters["adapted"] += k
        return take

    def _within_rate(self, sb: StateBaseline, at_s: float) -> bool:
        """At most the daily budget per data day and one hour's share of it per data hour,
        so a burst of healthy windows cannot spend a day's budget at once."""
        budget = self.config.max_updates_per_day
        hour = int(at_s // HOUR_S)
        if hour != sb.hour:
            sb.hour, sb.hour_updates = hour, 0
        return sb.day_updates < budget and sb.hour_updates < math.ceil(budget / 24)

    def _step(self, sb: StateBaseline, x: npt.NDArray[np.float64]) -> None:
        self._steps(sb, x[None, :])

    def _steps(self, sb: StateBaseline, rows: npt.NDArray[Any]) -> None:
        """One adaptation step per row of ``rows``, in order (each from the last one's
        median and scale; the lists are written once)."""
        c = self.config
        m, s = np.asarray(sb.median), np.asarray(sb.scale)
        fitted = np.asarray(sb.fitted_scale)
        damage = self._damage
        up, down = c.eta * c.up_ratio, c.eta
        lo, hi = c.scale_min_ratio * fitted, c.scale_max_ratio * fitted
        shift = sb.day_shift_sd
        for x in np.asarray(rows, np.float64):
            direction = np.sign(x - m)
            rate = np.where(damage & (direction > 0), up, down)
            step = rate * fitted * direction      # in fitted sd: the daily bound is absolute
            m = m + step
            mad = s / 1.4826
            wider = np.sign(np.abs(x - m) - mad)
            mad = mad + np.where(wider > 0, up, down) * mad * wider
            s = np.clip(1.4826 * mad, lo, hi)
            shift += float(np.max(np.abs(step) / fitted))
        sb.day_shift_sd = shift
        sb.median, sb.scale = m.tolist(), s.tolist()

    def _close_day(self, key: Hashable, state: str, sb: StateBaseline) -> None:
        if sb.day >= 0 and sb.day_updates > sb.day_logged:
            self.audit.append(self._day_record(key, state, sb))
            sb.day_logged = sb.day_updates

    def _day_record(self, key: Hashable, state: str, sb: StateBaseline) -> dict[str, Any]:
        return {"ts": (sb.day + 1) * DAY_S, "who": "agent",
                "why": "guarded adaptation (healthy windows)", "stream": stream_name(key),
                "state": state, "change": "adapted", "windows": sb.day_updates - sb.day_logged,
                "shift_sd_today": round(sb.day_shift_sd, 4), "day": sb.day}


def _per_row(values: npt.ArrayLike, n: int, dtype: type[Any]) -> npt.NDArray[Any]:
    """``values`` as an array of ``n`` (one value repeated, or one per row)."""
    a = np.asarray(values, dtype)
    return a if a.shape == (n,) else np.broadcast_to(a, (n,))
