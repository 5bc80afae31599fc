"""What every section shares: the shipped bundle, simulated machines and their feature pools,
a compressed machine-week, and :class:`Streamer` (one stream through the device's decision
code)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from agent.baselines import LearningConfig, StateBank
from agent.config import DecisionConfig
from agent.decision import Decider, Observation
from agent.features import DEFAULT_SPEC
from models.runtime import OnnxRunner
from models.simdata import SimMachine, render, scenario_of
from models.train import INPUT_FEATURES, features_of

ROOT = Path(__file__).resolve().parent.parent.parent
HOUR_S = 3600.0
#: the shipped bundle the agent runs by default: the newest version
SHIPPED = max((ROOT / "models" / "bundles" / "foreshock-default").glob("*/manifest.json"),
              key=lambda p: tuple(int(v) for v in p.parent.name.split("."))).parent
SHARED = ROOT.parent / "shared" / "data"


class Streamer:
    """One stream through commissioning, (state) baselines, the bundle and the Decider."""

    def __init__(self, runner: OnnxRunner, floor: float, spec: Any, *, states: bool,
                 adapt: bool, commission_s: float = HOUR_S, factor: float = 1.5,
                 learning: dict[str, Any] | None = None) -> None:
        names = spec.feature_names
        self.cols = list(spec.index(list(INPUT_FEATURES)))
        self.runner = runner
        cfg = DecisionConfig(commission_s=commission_s, k=3, n=5, update_interval_s=1e7)
        self.decider = Decider(cfg, names, score_fn=self._score, model={"name": "eval"},
                               floor=floor, adapt={"quantile": 0.99, "factor": factor,
                                                   "margin": 0.5})
        edges = LearningConfig().speed_edges_rpm if states else (1e9,)
        self.bank = StateBank(LearningConfig(speed_edges_rpm=edges, adapt=adapt,
                                             load_edges=(1.25,) if states else (),
                                             min_state_windows=16, **(learning or {})),
                              names)
        self.raised: list[float] = []

    def _score(self, baseline: Any, x: np.ndarray) -> np.ndarray:
        return self.runner(baseline.z(x)[:, self.cols].astype(np.float32))[0]

    def push(self, x: np.ndarray, rpm: float, t_s: np.ndarray, load: float = 1.0) -> None:
        """One slot of windows (same operating state; ``load``: the external load proxy)."""
        d, key = self.decider, "m"
        if d.baseline(key) is None:
            for row, t in zip(x, t_s, strict=True):
                if d.commission(key, row, float(t)) is not None:
                    self.bank.seed(key, self.bank.state_of(rpm, None, load), d.baseline(key),
                                   float(t))
            return
        z, ready, states, _ = self.bank.zscore(key, x, rpm, t_s, load)
        idx = np.flatnonzero(ready)
        if idx.size == 0:
            return
        scores = self.runner(z[idx][:, self.cols].astype(np.float32))[0].astype(np.float64)
        for j, i in enumerate(idx):
            ob = Observation(0, float(t_s[i]), x[i], z[i], float(scores[j]), "unknown", 0.0, rpm)
            body = d.decide(key, ob)
            if body is not None and body["status"] == "raised":
                self.raised.append(float(t_s[i]))
            self.bank.adapt(key, states[i], x[i], float(t_s[i]), float(scores[j]),
                            d.threshold(key), d.stream(key).incident is not None)


def bundle(path: Path) -> tuple[OnnxRunner, float]:
    manifest = json.loads((path / "manifest.json").read_text())
    det = manifest["models"]["detector"]
    return OnnxRunner(path / det["file"]), float(manifest["thresholds"]["anomaly"]["value"])


def machine(i: int, seed: int, fault: str = "normal") -> SimMachine:
    rng = np.random.default_rng(seed + i)
    return SimMachine(f"w{seed}-{i}", fault, 0.0, float(rng.uniform(900, 1800)),
                      str(rng.choice(["SKF-6205", "SKF-6203"])), 25_600.0,
                      float(rng.uniform(2000, 5000)), float(rng.uniform(0.03, 0.08)),
                      float(rng.uniform(0.01, 0.04)))


def pool(m: SimMachine, seconds: float, seed: int) -> tuple[np.ndarray, float]:
    """All DEFAULT_SPEC features of ``seconds`` of the machine as rendered."""
    rec = render(scenario_of(m, seed), seconds, seed=seed, device_id=m.name,
                 faulty=m.fault != "normal")
    sp = dataclasses.replace(DEFAULT_SPEC, bearing=m.bearing)
    return features_of(rec, sp)[0], rec.rpm


def week(schedule: list[tuple[SimMachine, Any]], pools: dict[Any, tuple[np.ndarray, float]],
         streamer: Streamer, per_slot: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for hour, (_m, key) in enumerate(schedule):
        x, rpm = pools[key]
        pick = rng.choice(len(x), size=per_slot, replace=False)
        load = 1.5 if isinstance(key, tuple) and key[1] else 1.0
        streamer.push(x[pick], rpm, hour * HOUR_S + np.arange(per_slot, dtype=float), load)

