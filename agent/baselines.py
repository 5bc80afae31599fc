"""Operating-state baselines with guarded adaptation and an append-only audit log.

Reference: docs/learning.md. Pure apart from :class:`AuditLog` and :meth:`StateBank.save` /
:meth:`StateBank.load` (files in the agent's state dir); no clock: every time is data time.

* **States**: per stream, one robust baseline (median, scaled MAD) per speed bin
  (``speed_edges_rpm``, 25 % wide) and, optionally, load bin (``load_edges`` over an
  external load value or a proxy feature that is not a damage indicator).
* **Learning**: a new state is not scored (no alerts) until ``min_state_windows`` windows.
* **Guarded adaptation**: stochastic median/MAD tracking, ``eta`` fitted sd per step, only
  for windows scoring below ``healthy_fraction`` of the threshold, never during an
  incident, at most ``max_updates_per_day`` steps per data day and one hour's share per data
  hour; upward steps on damage features are ``up_ratio`` slower (a growing fault outruns
  its baseline), downward steps follow run-in settling; the scale stays within
  ``[scale_min_ratio, scale_max_ratio]`` (1..2) of its fitted value.
* **Audit and persistence**: every change is a fsynced JSON line (who, when, why) in
  ``baselines.audit.jsonl``; the bank is saved atomically to ``baselines.json``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.features import Baseline
from foreshock.errors import ConfigError

log = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float32]
DAY_S = 86_400.0
HOUR_S = 3_600.0
BANK_FILE = "baselines.json"
AUDIT_FILE = "baselines.audit.jsonl"
#: Features whose rise means damage (level, impulsiveness, shaft orders, defect envelopes).
DAMAGE_FEATURES: tuple[str, ...] = (
    "rms_g", "peak_g", "p2p_g", "crest_factor", "kurtosis", "impulse_factor",
    "clearance_factor", "vel_rms_mm_s", "order_1x_g", "order_2x_g", "order_3x_g",
    "env_band_kurtosis", "env_bpfo_snr", "env_bpfo_harm_snr", "env_bpfi_snr",
    "env_bpfi_harm_snr", "env_2bsf_snr", "env_2bsf_harm_snr", "env_bpfi_sb_snr")


#: Speed bins 25 % wide (geometric), 300..9000 rpm: a state's spectrum stays comparable.
SPEED_EDGES_RPM: tuple[float, ...] = tuple(round(300.0 * 1.25 ** k) for k in range(16))


@dataclass(frozen=True)
class LearningConfig:
    """Operating-state binning and adaptation limits (docs/learning.md)."""

    speed_edges_rpm: tuple[float, ...] = SPEED_EDGES_RPM
    load_feature: str = ""
    load_edges: tuple[float, ...] = ()
    min_state_windows: int = 32
    adapt: bool = True
    eta: float = 0.01
    up_ratio: float = 0.1
    healthy_fraction: float = 0.5
    max_updates_per_day: int = 200
    scale_min_ratio: float = 1.0
    scale_max_ratio: float = 2.0
    damage_features: tuple[str, ...] = DAMAGE_FEATURES

    def __post_init__(self) -> None:
        for name in ("speed_edges_rpm", "load_edges"):
            edges = getattr(self, name)
            if list(edges) != sorted(edges) or len(set(edges)) != len(edges):
                raise ConfigError(f"learning.{name} must be strictly increasing")
        if self.load_feature and not self.load_edges:
            raise ConfigError("learning.load_feature needs learning.load_edges")
        if self.min_state_windows < 4:
            raise ConfigError("learning.min_state_windows must be >= 4")
        if not (0 < self.eta <= 0.5 and 0 <= self.up_ratio <= 1
                and 0 < self.healthy_fraction < 1 and self.max_updates_per_day >= 0):
            raise ConfigError("learning: need 0 < eta <= 0.5, 0 <= up_ratio <= 1, "
                              "0 < healthy_fraction < 1, max_updates_per_day >= 0")

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> LearningConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"learning key {unknown[0]!r} is unknown")
        kw: dict[str, Any] = {
            k: tuple(float(e) for e in v) if k.endswith(("edges", "edges_rpm")) else v
            for k, v in table.items()}
        if "damage_features" in kw:
            kw["damage_features"] = tuple(kw["damage_features"])
        return cls(**kw)


@dataclass
class StateBaseline:
    """One operating state of one stream."""

    status: str = "learning"
    rows: list[list[float]] = field(default_factory=list)
    median: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    fitted_scale: list[float] = field(default_factory=list)
    n_fit: int = 0
    first_s: float = math.nan
    day: int = -1
    day_updates: int = 0
    day_logged: int = 0
    hour: int = -1
    hour_updates: int = 0
    adapted_total: int = 0
    day_shift_sd: float = 0.0

    def baseline(self, names: tuple[str, ...]) -> Baseline:
        """The state's :class:`Baseline`, built once per change of its statistics (seed,
        adaptation and load assign new ``median`` / ``scale`` lists; a reset or a load
        makes a new state object), not on every call."""
        cached = self.__dict__.get("_cached")
        if (cached is not None and cached[0] is self.median and cached[1] is self.scale
                and cached[2] == self.n_fit and cached[3].names == names):
            return cached[3]
        base = Baseline(names, np.asarray(self.median), np.asarray(self.scale),
                        max(self.n_fit, 1))
        self.__dict__["_cached"] = (self.median, self.scale, self.n_fit, base)
        return base


class AuditLog:
    """Append-only JSON lines, fsynced per record (``path`` None: kept in memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return list(self.records)
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("audit log %s: skipping a torn line", self.path)
        return out


class StateBank:
    """Per stream, per operating state baselines; see the module doc."""

    def __init__(self, config: LearningConfig, names: Sequence[str], *,
                 state_dir: Path | None = None) -> None:
        self.config = config
        self.names = tuple(names)
        if config.load_feature and config.load_feature not in self.names:
            raise ConfigError(f"learning.load_feature {config.load_feature!r} is not a feature")
        self._load_i = self.names.index(config.load_feature) if config.load_feature else -1
        self._damage = np.array([n in config.damage_features for n in self.names])
        self._speed_edges = np.asarray(config.speed_edges_rpm, np.float64)
        self._speed_labels = [f"s{k}" for k in range(len(config.speed_edges_rpm) + 1)]
        self._speed_labels.append("s?")
        self.state_dir = state_dir
        self.audit = AuditLog(state_dir / AUDIT_FILE if state_dir else None)
        self.streams: dict[str, dict[str, StateBaseline]] = {}
        #: per stream: the decision threshold learned at commissioning (restored on start)
        self.thresholds: dict[str, float] = {}
        #: per stream: the commissioning reference (thinned windows, their baseline), from
        #: which a model switch re-derives the threshold on the new model's scale
        self.references: dict[str, tuple[FloatArray, Baseline]] = {}
        #: the model whose scale the thresholds are on (None: unknown, e.g. an older file)
        self.model: dict[str, str] | None = None
        self.counters = {"fitted": 0, "adapted": 0, "refused_incident": 0,
                         "refused_margin": 0, "refused_rate": 0, "resets": 0,
                         "references_dropped": 0}

    # -- states --------------------------------------------------------------------------
    def state_of(self, rpm: float, features: FloatArray | None = None,
                 load: float | None = None) -> str:
        """``s<speed bin>`` plus ``l<load bin>`` when load binning is on; the load is
        ``load`` when given (an external proxy, e.g. motor current), else the configured
        feature of the window."""
        c = self.config
        speed = (f"s{int(np.searchsorted(c.speed_edges_rpm, rpm, side='right'))}"
                 if rpm > 0 and math.isfinite(rpm) else "s?")
        if not c.load_edges or (load is None and (self._load_i < 0 or features is None)):
            return speed
        v = float(load) if load is not None else float(features[self._load_i])  # type: ignore[index]
        b = str(int(np.searchsorted(c.load_edges, v, side="right"))) if math.isfinite(v) else "?"
        return f"{speed}l{b}"

    def states_of(self, rpm: npt.ArrayLike, features: FloatArray | None = None,
                  load: float | None = None) -> list[str]:
        """:meth:`state_of` of each row of ``features`` (``[n, F]``) at ``rpm`` (``[n]``
        or one value), with one bin search over the batch."""
        c = self.config
        r = np.asarray(rpm, np.float64)
        n = r.size if features is None else len(features)
        r = np.broadcast_to(r, (n,))
        bins = np.searchsorted(self._speed_edges, r, side="right")
        bins[~((r > 0) & np.isfinite(r))] = len(self._speed_labels) - 1      # "s?"
        speed = list(map(self._speed_labels.__getitem__, bins.tolist()))
        if not c.load_edges or (load is None and (self._load_i < 0 or features is None)):
            return speed
        if load is not None:
            v = np.full(n, float(load))
        else:
            v = np.asarray(features, np.float64)[:, self._load_i]
        lb = np.searchsorted(c.load_edges, v, side="right").tolist()
        finite = np.isfinite(v).tolist()
        return [f"{sp}l{b if good else '?'}" for sp, b, good in zip(speed, lb, finite,
                                                                    strict=True)]

    def get(self, key: Hashable, state: str) -> StateBaseline:
        return self.streams.setdefault(_text(key), {}).setdefault(state, StateBaseline())

    def baseline(self, key: Hashable, state: str) -> Baseline | None:
        sb = self.streams.get(_text(key), {}).get(state)
        return sb.baseline(self.names) if sb is not None and sb.status == "ready" else None

    def seed(self, key: Hashable, state: str, baseline: Baseline, at_s: float,
             who: str = "agent", why: str = "commissioning") -> None:
        """Make ``baseline`` (e.g. the commissioning baseline) the ready baseline of a state."""
        sb = self.get(key, state)
        sb.status, sb.rows, sb.n_fit, sb.first_s = "ready", [], baseline.n_fit, at_s
        sb.median = [float(v) for v in baseline.median]
        sb.scale = [float(v) for v in baseline.scale]
        sb.fitted_scale = list(sb.scale)
        self.counters["fitted"] += 1
        self._record(at_s, who, why, key, state, "fitted", windows=baseline.n_fit)

    def set_reference(self, key: Hashable, reference: tuple[FloatArray, Baseline] | None
                      ) -> None:
        """Keep a stream's commissioning reference (saved with its threshold)."""
        if reference is not None:
            self.references[_text(key)] = reference

    def reference(self, key: Hashable) -> tuple[FloatArray, Baseline] | None:
        return self.references.get(_text(key))

    def set_threshold(self, key: Hashable, threshold: float, *, who: str, why: str,
                      at_s: float, **detail: Any) -> None:
        """Replace a stream's threshold (e.g. on a model switch), audited as ``threshold``."""
        old = self.thresholds.get(_text(key))
        self.thresholds[_text(key)] = float(threshold)
        self._record(at_s, who, why, key, "*", "threshold", old_threshold=old,
                     threshold=float(threshold), **detail)

    def learn(self, key: Hashable, state: str, features: FloatArray,
              at_s: float) -> dict[str, Any] | None:
        """Feed a window of a learning state; a ``baseline`` event body when it is ready."""
        sb = self.get(key, state)
        if sb.status == "ready":
            return None
        row = np.asarray(features, np.float64)
        if not np.isfinite(row).all():
            return None
        if math.isnan(sb.first_s):
            sb.first_s = at_s
        sb.rows.append(row.tolist())
        if len(sb.rows) < self.config.min_state_windows:
            return None
        base = Baseline.fit(np.asarray(sb.rows), self.names)
        self.seed(key, state, base, at_s, why="new operating state learned")
        return {"type": "baseline", "detail": {"status": "state_learned", "state": state,
                                               "windows": base.n_fit}}

    def zscore(self, key: Hashable, features: FloatArray, rpm: npt.ArrayLike,
               at_s: npt.ArrayLike, load: float | None = None
               ) -> tuple[FloatArray, npt.NDArray[np.bool_], list[str], list[dict[str, Any]]]:
        """For a run of one stream's windows: z against each window's state baseline,
        which windows are scored (their state is ready), their states, and the events of
        states that finished learning. Windows of learning states feed :meth:`learn`."""
        x = np.asarray(features, np.float32)
        states = self.states_of(rpm, x, load)
        events: list[dict[str, Any]] = []
        if states and states.count(states[0]) == len(states):
            ready_z = self.ready_z(key, states[0], x)
            if ready_z is not None:         # the common case: one ready state
                return ready_z, np.ones(x.shape[0], bool), states, events
        times = np.broadcast_to(np.asarray(at_s, np.float64), (x.shape[0],))
        z = np.zeros(x.shape, np.float32)
        ready = np.zeros(x.shape[0], bool)
        groups: dict[str, list[int]] = {}
        for i, state in enumerate(states):
            groups.setdefault(state, []).append(i)
        for state, idx in groups.items():
            j = 0
            while j < len(idx) and self.baseline(key, state) is None:
                event = self.learn(key, state, x[idx[j]], float(times[idx[j]]))
                if event is not None:
                    events.append(event)
                j += 1
            rest = idx[j:]
            base = self.baseline(key, state)
            if rest and base is not None:
                z[rest], ready[rest] = _z(base, x[rest]), True
        return z, ready, states, events

    def ready_z(self, key: Hashable, state: str, features: FloatArray) -> FloatArray | None:
        """z of rows ``features`` ``[n, F]`` against a ready state's baseline (None while
        the state learns or is unknown); what :meth:`zscore` gives windows of that state."""
        base = self.baseline(key, state)
        return None if base is None else _z(base, np.asarray(features, np.float32))

    # -- adaptation ----------------------------------------------------------------------
    def adapt(self, key: Hashable, state: str, features: FloatArray, at_s: float,
              anomaly: float, threshold: float, incident_open: bool) -> bool:
        """Apply one guarded adaptation step; True when the baseline moved."""
        sb = self.streams.get(_text(key), {}).get(state)
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
            sb = self.streams.get(_text(key), {}).get(state)
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
            room = min(budget - sb.day_updates, per_hour - sb.hour_updates)
            # in window order: a finite window steps while there is room, a non-finite one
            # is skipped; once the room is spent every later window of the hour is refused
            ok = np.flatnonzero(finite[a:b])
            take = ok[:max(room, 0)]
            if room <= 0:
                self.counters["refused_rate"] += b - a
            elif ok.size >= room:               # the rows after the last step
                self.counters["refused_rate"] += b - a - int(take[-1]) - 1
            if take.size:
                stepped.append(a + take)
                k = int(take.size)
                count += k
                sb.day_updates += k
                sb.hour_updates += k
                sb.adapted_total += k
                self.counters["adapted"] += k
        if stepped:
            self._steps(sb, x[np.concatenate(stepped)])
        return count

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
                "why": "guarded adaptation (healthy windows)", "stream": _text(key),
                "state": state, "change": "adapted", "windows": sb.day_updates - sb.day_logged,
                "shift_sd_today": round(sb.day_shift_sd, 4), "day": sb.day}

    # -- resets, status, persistence -------------------------------------------------------
    def rebaseline(self, key: Hashable | None = None, state: str | None = None, *,
                   who: str, why: str, at_s: float) -> int:
        """Forget matching states (they learn again); returns how many were reset."""
        n = 0
        for stream, states in self.streams.items():
            if key is not None and stream != _text(key):
                continue
            for name in list(states):
                if state is None or name == state:
                    states[name] = StateBaseline()
                    n += 1
                    self._record(at_s, who, why, stream, name, "reset")
            if state is None:
                self.thresholds.pop(stream, None)
                self.references.pop(stream, None)
        self.counters["resets"] += n
        return n

    def status(self) -> dict[str, Any]:
        """For health: per stream, per state: status, windows, adaptation steps."""
        out: dict[str, Any] = {}
        for stream, states in self.streams.items():
            out[stream] = {name: {"status": sb.status, "learned_windows": len(sb.rows)
                                  if sb.status == "learning" else sb.n_fit,
                                  "adapted": sb.adapted_total} for name, sb in states.items()}
        learning = sum(sb.status == "learning" for st in self.streams.values()
                       for sb in st.values())
        return {"streams": out, "learning_states": learning, "counters": dict(self.counters)}

    def save(self, path: Path | None = None) -> Path:
        """Write the bank atomically (temp file, fsync, rename)."""
        target = path or _need_dir(self.state_dir) / BANK_FILE
        for stream, states in self.streams.items():
            for name, sb in states.items():
                self._close_day(stream, name, sb)
        data = {"schema": "foreshock.baselines/1", "names": list(self.names),
                "thresholds": self.thresholds, "model": self.model,
                "references": {k: {"rows_f32": _pack(rows), "count": int(rows.shape[0]),
                                   "median": base.median.tolist(),
                                   "scale": base.scale.tolist(), "n_fit": base.n_fit,
                                   "z_clip": base.z_clip}
                               for k, (rows, base) in self.references.items()},
                "streams": {k: {n: asdict(sb) for n, sb in v.items()}
                            for k, v in self.streams.items()}}
        _atomic_write(target, json.dumps(data, allow_nan=True).encode())
        return target

    def load(self, path: Path | None = None) -> bool:
        """Read a saved bank (False when there is none); ConfigError when it is unusable."""
        source = path or _need_dir(self.state_dir) / BANK_FILE
        if not source.exists():
            return False
        try:
            data = json.loads(source.read_text())
            if data.get("names") != list(self.names):
                raise ConfigError(f"{source}: saved for other features; run "
                                  "`foreshock agent rebaseline`")
            self.streams = {k: {n: StateBaseline(**sb) for n, sb in v.items()}
                            for k, v in data["streams"].items()}
            self.thresholds = {k: float(v) for k, v in data.get("thresholds", {}).items()}
            model = data.get("model")
            self.model = ({str(k): str(v) for k, v in model.items()}
                          if isinstance(model, dict) else None)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"{source}: unreadable baselines ({exc})") from None
        self.references = {}
        for stream, ref in (data.get("references") or {}).items():
            try:
                self.references[stream] = self._reference_from(ref)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                self.counters["references_dropped"] += 1
                log.warning("%s: reference of %s dropped (%s); a model switch keeps its "
                            "threshold at the bundle floor", source, stream, exc)
        return True

    def _reference_from(self, ref: dict[str, Any]) -> tuple[FloatArray, Baseline]:
        width = len(self.names)
        flat = np.frombuffer(base64.b64decode(ref["rows_f32"], validate=True), "<f4")
        count = int(ref["count"])
        if count < 0 or flat.size != count * width:
            raise ValueError(f"{flat.size} values for {count} rows of {width} features")
        rows = flat.reshape(count, width).astype(np.float32)
        median, scale = np.asarray(ref["median"], np.float64), np.asarray(ref["scale"], np.float64)
        if median.shape != (width,) or scale.shape != (width,):
            raise ValueError(f"baseline of shape {median.shape} for {width} features")
        return rows, Baseline(self.names, median, scale, int(ref["n_fit"]),
                              float(ref.get("z_clip", 50.0)))

    def _record(self, at_s: float, who: str, why: str, key: Hashable, state: str,
                change: str, **detail: Any) -> None:
        self.audit.append({"ts": at_s, "who": who, "why": why, "stream": _text(key),
                           "state": state, "change": change, **detail})


def rebaseline_saved(state_dir: Path, *, stream: str | None, state: str | None, who: str,
                     why: str, at_s: float) -> int:
    """Reset saved baselines in ``state_dir`` (for ``foreshock agent rebaseline``)."""
    path = state_dir / BANK_FILE
    if not path.exists():
        raise ConfigError(f"no saved baselines at {path}",
                          hint="the agent saves them once a state is learned")
    try:
        names = json.loads(path.read_text())["names"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path}: unreadable baselines") from None
    bank = StateBank(LearningConfig(), names, state_dir=state_dir)
    bank.load()
    n = bank.rebaseline(stream, state, who=who, why=why, at_s=at_s)
    bank.save()
    return n


def stream_name(key: Hashable) -> str:
    """A stream key as the bank names it: ``device/channel``."""
    return _text(key)


def _text(key: Hashable) -> str:
    if isinstance(key, tuple):
        return "/".join(str(k) for k in key)
    return str(key)


def _per_row(values: npt.ArrayLike, n: int, dtype: type[Any]) -> npt.NDArray[Any]:
    """``values`` as an array of ``n`` (one value repeated, or one per row)."""
    a = np.asarray(values, dtype)
    return a if a.shape == (n,) else np.broadcast_to(a, (n,))


def _z(base: Baseline, x: FloatArray) -> FloatArray:
    """``base.z(x)`` for rows ``x`` ``[n, F]`` (the same figures: float64 robust z clipped
    to ``z_clip``, NaN as 0, as float32), in place on one float64 copy."""
    if x.ndim != 2 or x.shape[1] != len(base.names):
        return np.asarray(base.z(x), np.float32)       # its error for the wrong width
    d = x.astype(np.float64)
    d -= base.median
    d /= base.scale
    np.clip(d, -base.z_clip, base.z_clip, out=d)
    d[np.isnan(d)] = 0.0                                # the clip leaves no inf
    return d.astype(np.float32)


def _pack(rows: FloatArray) -> str:
    """Rows as base64 of little-endian float32 (exact, a quarter of the JSON decimal size)."""
    return base64.b64encode(np.ascontiguousarray(rows, "<f4").tobytes()).decode("ascii")


def _need_dir(path: Path | None) -> Path:
    if path is None:
        raise ConfigError("no state directory for the baselines")
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
