"""Sections 1 and 2 on a simulated fleet: speed and load changes (false alerts per healthy
machine-week), and faults growing over a week after a settling run-in (lead time)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from agent.features import DEFAULT_SPEC
from models.runtime import OnnxRunner
from models.simdata import SimMachine

from .common import HOUR_S, Streamer, machine, pool, week


# -- 1. speed and load changes -------------------------------------------------------------
def speed_load(runner: OnnxRunner, floor: float, n_machines: int, seed: int,
               per_slot: int, seconds: float) -> dict[str, Any]:
    """Healthy machines changing speed (x0.6 .. x1.4) and load (noise x1.5) each shift."""
    modes = {"single baseline": (False, False), "per-state baselines": (True, False),
             "per-state + adaptation": (True, True)}
    counts: dict[str, list[int]] = {k: [] for k in modes}
    for i in range(n_machines):
        base = machine(i, seed)
        variants = {(s, ld): dataclasses.replace(base, rpm=base.rpm * s,
                                                 noise_g=base.noise_g * (1.5 if ld else 1.0))
                    for s in (1.0, 0.6, 1.4) for ld in (False, True)}
        pools = {k: pool(v, seconds, seed + 17 * i) for k, v in variants.items()}
        rng = np.random.default_rng(seed + i)
        keys = list(variants)
        schedule = [(base, (1.0, False))] * 8
        while len(schedule) < 168:
            k = keys[int(rng.integers(len(keys)))]
            schedule += [(variants[k], k)] * 8
        for name, (states, adapt) in modes.items():
            s = Streamer(runner, floor, DEFAULT_SPEC, states=states, adapt=adapt)
            week(schedule[:168], pools, s, per_slot, seed + i)
            counts[name].append(len(s.raised))
    return {k: {"machines": n_machines, "false_alerts_per_machine_week": float(np.mean(v)),
                "machines_with_false_alerts": int(np.count_nonzero(v))}
            for k, v in counts.items()}


# -- 2. growing faults after a settling run-in ---------------------------------------------
def growing_week(runner: OnnxRunner, floor: float, n_machines: int, seed: int,
                 per_slot: int, seconds: float) -> dict[str, Any]:
    """Run-in day 1 (noise x1.3, settling), fault onset at hour 48, severity grows
    exponentially to 0.5 at hour 168."""
    faults = ("outer_race", "inner_race", "ball")
    levels = np.geomspace(0.01, 0.5, 10)
    out: dict[str, list[float | None]] = {"adaptation off": [], "adaptation on": []}
    early: dict[str, int] = {"adaptation off": 0, "adaptation on": 0}
    for i in range(n_machines):
        base = machine(i, seed + 100, faults[i % len(faults)])
        runin = dataclasses.replace(base, fault="normal", noise_g=base.noise_g * 1.3)
        pools: dict[Any, tuple[np.ndarray, float]] = {"runin": pool(runin, seconds, seed + i),
                 "ok": pool(dataclasses.replace(base, fault="normal"), seconds, seed + i + 1)}
        for j, sev in enumerate(levels):
            pools[j] = pool(dataclasses.replace(base, severity=float(sev)), seconds,
                            seed + 31 * i + j)
        schedule: list[tuple[SimMachine, Any]] = []
        for hour in range(168):
            if hour < 24:
                schedule.append((runin, "runin"))
            elif hour < 48:
                schedule.append((base, "ok"))
            else:
                frac = (hour - 48) / 120
                schedule.append((base, int(min(9, frac * 10))))
        for name, adapt in (("adaptation off", False), ("adaptation on", True)):
            s = Streamer(runner, floor, DEFAULT_SPEC, states=True, adapt=adapt)
            week(schedule, pools, s, per_slot, seed + i)
            after = [t for t in s.raised if t >= 48 * HOUR_S]
            out[name].append(168 * HOUR_S - after[0] if after else None)
            early[name] += len(s.raised) - len(after)
    return {k: {**_lead_summary(v), "false_alerts_before_onset": early[k]}
            for k, v in out.items()}


def _lead_summary(leads: list[float | None]) -> dict[str, Any]:
    got = [v for v in leads if v is not None]
    return {"machines": len(leads), "detected": len(got),
            "mean_lead_h": round(float(np.mean(got)) / HOUR_S, 1) if got else None,
            "leads_h": [None if v is None else round(v / HOUR_S, 1) for v in leads]}

