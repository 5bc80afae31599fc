"""Drift of live features, anomaly scores and alert rate against the bundle's training data.

Training statistics (the manifest's ``training_stats``, made by :func:`training_stats`) map
each feature name to::

    {"mean": float, "std": float, "n": int,
     "quantiles": [q0, q10, q20, ..., q90, q100],   # 11 edges: min, the 9 deciles, max
     "hist": [f0, ..., f9]}                         # 10 training fractions, sum 1

Live values fall into 10 bins cut at the 9 inner edges (``bin_index``: values below q10 go
to bin 0, at or above q90 to bin 9, a value equal to an edge goes to the bin above it).
``hist`` holds the training fractions of the same bins, so features with ties (many equal
values, collapsed deciles) compare correctly. An optional entry named ``anomaly_score``
(``training_stats(scores[:, None], ["anomaly_score"])``) makes the score distribution
watched the same way.

``DriftMonitor.update(features[n, F], scores[n], alerts[n])`` appends windows to a sliding
ring of the last ``window`` windows; every ``every`` windows (once ``min_windows`` are in)
it computes per feature

- PSI = sum((a - e) * ln(a / e)) over the 10 bins (a live, e training, floored at 1e-4);
- KS = max |F_live - F_train| at the 9 inner edges (a KS statistic on the decile grid);

and the rolling alert rate. A signal turns on when PSI >= ``psi_on`` or KS >= ``ks_on``
(alert rate >= ``alert_rate_factor`` x expected) in ``confirm`` consecutive evaluations,
and off when PSI < ``psi_off`` and KS < ``ks_off`` in ``confirm`` consecutive evaluations.
Events (bodies of kind ``event``) are returned only when the set of signals that are on
changes: ``state`` ``started`` (first on), ``updated`` (more came on), ``cleared`` (all off).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from foreshock.errors import BundleError, ConfigError, DataError

log = logging.getLogger(__name__)

N_BINS = 10
SCORE = "anomaly_score"
ALERT_RATE = "alert_rate"
EPS = 1e-4


def bin_index(values: npt.NDArray[np.float64], edges: npt.NDArray[np.float64]) -> npt.NDArray[
        np.intp]:
    """Bin of each value for the 11 ``quantiles`` edges (see the module docstring)."""
    return np.searchsorted(edges[1:-1], values, side="right")


def training_stats(values: npt.ArrayLike, names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Per-feature training statistics in the shape the drift monitor reads.

    ``values`` is ``[n, F]`` with columns in ``names`` order; non-finite values are left out
    of each column. Raises :class:`DataError` if a column has fewer than 10 finite values.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(names):
        raise DataError(f"training values of shape {x.shape} do not match {len(names)} names")
    out: dict[str, Any] = {}
    for j, name in enumerate(names):
        col = x[:, j][np.isfinite(x[:, j])]
        if col.size < N_BINS:
            raise DataError(f"feature {name!r} has {col.size} finite training values; need "
                            f">= {N_BINS} for drift statistics")
        edges = np.quantile(col, np.linspace(0.0, 1.0, N_BINS + 1))
        hist = np.bincount(bin_index(col, edges), minlength=N_BINS) / col.size
        out[name] = {"mean": float(col.mean()), "std": float(col.std()), "n": int(col.size),
                     "quantiles": [float(v) for v in edges],
                     "hist": [float(v) for v in hist]}
    return out


def psi(live_frac: npt.NDArray[np.float64], train_frac: npt.NDArray[np.float64]) -> float:
    """Population stability index of two bin-fraction vectors (floored at 1e-4)."""
    a = np.maximum(live_frac, EPS)
    e = np.maximum(train_frac, EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_grid(live_frac: npt.NDArray[np.float64], train_frac: npt.NDArray[np.float64]) -> float:
    """Largest CDF difference at the inner bin edges."""
    return float(np.max(np.abs(np.cumsum(live_frac)[:-1] - np.cumsum(train_frac)[:-1])))


@dataclass(frozen=True)
class DriftConfig:
    """Sliding window, thresholds and hysteresis of :class:`DriftMonitor`."""

    window: int = 500
    min_windows: int = 200
    every: int = 50
    psi_on: float = 0.25
    psi_off: float = 0.1
    ks_on: float = 0.25
    ks_off: float = 0.12
    confirm: int = 2
    expected_alert_rate: float = 0.01
    alert_rate_factor: float = 5.0
    min_alerts: int = 3

    def __post_init__(self) -> None:
        if not 2 <= self.min_windows <= self.window:
            raise ConfigError(f"monitor.min_windows = {self.min_windows!r} must be in "
                              f"2..window ({self.window})")
        if self.every < 1 or self.confirm < 1 or self.min_alerts < 1:
            raise ConfigError("monitor.every, monitor.confirm and monitor.min_alerts "
                              "must be >= 1")
        if not (0 < self.psi_off <= self.psi_on and 0 < self.ks_off <= self.ks_on <= 1):
            raise ConfigError(f"monitor drift thresholds need 0 < psi_off <= psi_on and "
                              f"0 < ks_off <= ks_on <= 1; got psi {self.psi_off}/"
                              f"{self.psi_on}, ks {self.ks_off}/{self.ks_on}")
        if not (0 < self.expected_alert_rate < 1 and self.alert_rate_factor > 1):
            raise ConfigError("monitor.expected_alert_rate must be in (0, 1) and "
                              "monitor.alert_rate_factor > 1")


@dataclass
class _Signal:
    on: bool = False
    run: int = 0
    figures: dict[str, Any] | None = None

    def step(self, above_on: bool, below_off: bool, confirm: int) -> bool:
        """Advance the hysteresis; True when the state flipped."""
        towards = below_off if self.on else above_on
        self.run = self.run + 1 if towards else 0
        if self.run >= confirm:
            self.on, self.run = not self.on, 0
            return True
        return False


class _Reference:
    """Validated training statistics of one signal."""

    def __init__(self, name: str, entry: Any) -> None:
        try:
            self.edges = np.asarray(entry["quantiles"], dtype=np.float64)
            self.hist = np.asarray(entry["hist"], dtype=np.float64)
            self.mean = float(entry["mean"])
            self.std = float(entry["std"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"training_stats[{name!r}] is malformed: {exc!r}") from None
        if (self.edges.shape != (N_BINS + 1,) or self.hist.shape != (N_BINS,)
                or not np.all(np.isfinite(self.edges)) or np.any(np.diff(self.edges) < 0)
                or not np.isclose(self.hist.sum(), 1.0, atol=1e-3)):
            raise BundleError(f"training_stats[{name!r}] needs 11 increasing finite "
                              "quantiles and 10 hist fractions summing to 1")

    def compare(self, live: npt.NDArray[np.float64]) -> dict[str, float]:
        frac = np.bincount(bin_index(live, self.edges), minlength=N_BINS) / live.size
        with np.errstate(over="ignore", invalid="ignore"):
            mean = float(live.mean())
            shift = (mean - self.mean) / self.std if self.std > 0 else 0.0
        return {"psi": round(psi(frac, self.hist), 4), "ks": round(ks_grid(frac, self.hist), 4),
                "mean_shift_sd": round(float(shift), 3), "live_mean": mean,
                "train_mean": self.mean}


class DriftMonitor:
    """Feature, score and alert-rate drift; see the module docstring."""

    def __init__(self, stats: dict[str, Any], names: list[str] | tuple[str, ...],
                 config: DriftConfig | None = None) -> None:
        if not isinstance(stats, dict):
            raise BundleError("training_stats must be an object of per-feature statistics")
        self.config = cfg = config or DriftConfig()
        self.names = tuple(names)
        self._cols = [j for j, n in enumerate(self.names) if n in stats]
        self._refs = [_Reference(self.names[j], stats[self.names[j]]) for j in self._cols]
        self._score_ref = _Reference(SCORE, stats[SCORE]) if SCORE in stats else None
        self._feats = np.zeros((cfg.window, len(self._cols)))
        self._scores = np.zeros(cfg.window)
        self._alerts = np.zeros(cfg.window, dtype=bool)
        self._filled = self._head = self._since = 0
        self._signals: dict[str, _Signal] = {}
        self.counters = {"drift_windows": 0, "drift_evaluations": 0, "drift_events": 0}
        self.unwatched = tuple(n for n in self.names if n not in stats)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], names: list[str] | tuple[str, ...],
                      config: DriftConfig | None = None) -> DriftMonitor | None:
        """A monitor for the manifest's ``training_stats``; None if it has none."""
        stats = manifest.get("training_stats")
        return cls(stats, names, config) if stats else None

    @property
    def drifting(self) -> tuple[str, ...]:
        """Names of the signals that are on (features, ``anomaly_score``, ``alert_rate``)."""
        return tuple(sorted(n for n, s in list(self._signals.items()) if s.on))

    def update(self, features: npt.ArrayLike, scores: npt.ArrayLike, alerts: npt.ArrayLike,
               *, at_s: float | None = None) -> list[dict[str, Any]]:
        """Add ``n`` windows; return drift event bodies (usually none)."""
        f = np.asarray(features, dtype=np.float64)
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        a = np.asarray(alerts, dtype=bool).reshape(-1)
        if f.ndim != 2 or f.shape[1] != len(self.names) or not len(s) == len(a) == len(f):
            raise ValueError(f"features {f.shape}, scores {s.shape}, alerts {a.shape} do not "
                             f"match [n, {len(self.names)}], [n], [n]")
        events: list[dict[str, Any]] = []
        for start in range(0, len(f), self.config.window):
            end = start + self.config.window
            self._push(f[start:end, self._cols], s[start:end], a[start:end])
            if self._filled >= self.config.min_windows and self._since >= self.config.every:
                self._since = 0
                events += self._evaluate(at_s)
        return events

    def _push(self, f: npt.NDArray[np.float64], s: npt.NDArray[np.float64],
              a: npt.NDArray[np.bool_]) -> None:
        n, size = len(f), self.config.window
        idx = (self._head + np.arange(n)) % size
        self._feats[idx], self._scores[idx], self._alerts[idx] = f, s, a
        self._head = (self._head + n) % size
        self._filled = min(size, self._filled + n)
        self._since += n
        self.counters["drift_windows"] += n

    def measure(self) -> dict[str, dict[str, Any]]:
        """Current figures of every watched signal over the ring (no state change)."""
        n = self._filled
        out: dict[str, dict[str, Any]] = {}
        for k, ref in enumerate(self._refs):
            col = self._feats[:n, k]
            col = col[np.isfinite(col)]
            if col.size >= self.config.min_windows // 2:
                out[self.names[self._cols[k]]] = ref.compare(col)
        scores = self._scores[:n][np.isfinite(self._scores[:n])]
        if self._score_ref is not None and scores.size >= self.config.min_windows // 2:
            out[SCORE] = self._score_ref.compare(scores)
        alerts = int(self._alerts[:n].sum())
        out[ALERT_RATE] = {"rate": round(alerts / max(n, 1), 4), "alerts": alerts,
                           "expected": self.config.expected_alert_rate}
        return out

    def _evaluate(self, at_s: float | None) -> list[dict[str, Any]]:
        cfg = self.config
        self.counters["drift_evaluations"] += 1
        before = set(self.drifting)
        for name, fig in self.measure().items():
            sig = self._signals.setdefault(name, _Signal())
            if name == ALERT_RATE:
                limit = cfg.expected_alert_rate * cfg.alert_rate_factor
                above = fig["rate"] >= limit and fig["alerts"] >= cfg.min_alerts
                below = fig["rate"] < limit / 2
            else:
                above = fig["psi"] >= cfg.psi_on or fig["ks"] >= cfg.ks_on
                below = fig["psi"] < cfg.psi_off and fig["ks"] < cfg.ks_off
            sig.step(above, below, cfg.confirm)
            sig.figures = fig
        after = set(self.drifting)
        if after == before or (after < before and after):
            return []
        state = "cleared" if not after else ("started" if not before else "updated")
        log.info("drift %s: %s", state, ", ".join(sorted(after)) or "none")
        self.counters["drift_events"] += 1
        return [{"type": "drift", "detail": self._detail(state, before, at_s)}]

    def _detail(self, state: str, before: set[str], at_s: float | None) -> dict[str, Any]:
        on = self.drifting
        moved = [{"name": n, **(self._signals[n].figures or {})} for n in on if n != ALERT_RATE]
        moved.sort(key=lambda d: -float(d.get("psi", 0.0)))
        detail: dict[str, Any] = {
            "state": state, "windows": self._filled, "features": moved,
            "new": sorted(set(on) - before), "cleared": sorted(before - set(on)),
            "alert_rate": (self._signals[ALERT_RATE].figures if ALERT_RATE in self._signals
                           else None),
        }
        if at_s is not None and np.isfinite(at_s):
            detail["window_ts"] = float(at_s)
        return detail

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready summary for health messages: signals on and the worst PSI seen."""
        figs = {n: s.figures for n, s in list(self._signals.items()) if s.figures}
        worst = max((f.get("psi", 0.0), n) for n, f in figs.items()) if figs else (0.0, "")
        return {"drifting": list(self.drifting), "windows": self._filled,
                "max_psi": float(worst[0]), "max_psi_feature": worst[1]}
