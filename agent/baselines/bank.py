"""The bank of operating-state baselines: :class:`StateBank` and ``rebaseline_saved``.

Per stream, the states of the windows (speed bin, optional load bin), learning of new
states, z-scores against each window's state baseline, seeding at commissioning, the
thresholds and commissioning references kept for a restart or a model switch, resets,
health status, and the bank's save and load (formats and file handling in
:mod:`agent.baselines.store`). Adaptation comes from
:class:`agent.baselines.adaptation.GuardedAdaptation`.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.baselines.adaptation import GuardedAdaptation
from agent.baselines.config import LearningConfig
from agent.baselines.state import StateBaseline, stream_name
from agent.baselines.store import (
    AUDIT_FILE,
    BANK_FILE,
    AuditLog,
    need_dir,
    pack_rows,
)
from agent.features import Baseline
from foreshock.errors import ConfigError
from foreshock.files import atomic_write

log = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float32]


class StateBank(GuardedAdaptation):
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
        return self.streams.setdefault(stream_name(key), {}).setdefault(state, StateBaseline())

    def baseline(self, key: Hashable, state: str) -> Baseline | None:
        sb = self.streams.get(stream_name(key), {}).get(state)
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
            self.references[stream_name(key)] = reference

    def reference(self, key: Hashable) -> tuple[FloatArray, Baseline] | None:
        return self.references.get(stream_name(key))

    def set_threshold(self, key: Hashable, threshold: float, *, who: str, why: str,
                      at_s: float, **detail: Any) -> None:
        """Replace a stream's threshold (e.g. on a model switch), audited as ``threshold``."""
        old = self.thresholds.get(stream_name(key))
        self.thresholds[stream_name(key)] = float(threshold)
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

    # -- resets, status, persistence -------------------------------------------------------
    def rebaseline(self, key: Hashable | None = None, state: str | None = None, *,
                   who: str, why: str, at_s: float) -> int:
        """Forget matching states (they learn again); returns how many were reset."""
        n = 0
        for stream, states in self.streams.items():
            if key is not None and stream != stream_name(key):
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
        target = path or need_dir(self.state_dir) / BANK_FILE
        for stream, states in self.streams.items():
            for name, sb in states.items():
                self._close_day(stream, name, sb)
        data = {"schema": "foreshock.baselines/1", "names": list(self.names),
                "thresholds": self.thresholds, "model": self.model,
                "references": {k: {"rows_f32": pack_rows(rows), "count": int(rows.shape[0]),
                                   "median": base.median.tolist(),
                                   "scale": base.scale.tolist(), "n_fit": base.n_fit,
                                   "z_clip": base.z_clip}
                               for k, (rows, base) in self.references.items()},
                "streams": {k: {n: asdict(sb) for n, sb in v.items()}
                            for k, v in self.streams.items()}}
        atomic_write(target, json.dumps(data, allow_nan=True).encode())
        return target

    def load(self, path: Path | None = None) -> bool:
        """Read a saved bank (False when there is none); ConfigError when it is unusable."""
        source = path or need_dir(self.state_dir) / BANK_FILE
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
        self.audit.append({"ts": at_s, "who": who, "why": why, "stream": stream_name(key),
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
