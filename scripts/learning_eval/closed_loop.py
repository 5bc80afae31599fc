"""Section 4, the closed loop: operator feedback in the gateway store, ``models.retrain``, and
the current and the retrained bundle judged on a fresh simulated fleet."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from agent.features import DEFAULT_SPEC
from models.runtime import OnnxRunner
from models.simdata import render, scenario_of
from models.train import INPUT_FEATURES

from .common import SHIPPED, bundle, machine


def disturbed_sets(n: int, seed: int, seconds: float) -> list[tuple[str, Any]]:
    """Half benign (a louder neighbour: noise x2.5 after commissioning), half faulty."""
    from models.trainsets import healthy_and_faulty

    out = []
    faults = ("outer_race", "inner_race", "ball")
    for i in range(n):
        kind = "benign" if i % 2 == 0 else faults[(i // 2) % len(faults)]
        m = machine(i, seed, "normal" if kind == "benign" else kind)
        m = dataclasses.replace(m, severity=0.3)
        healthy = render(scenario_of(m, seed + i), seconds, seed=seed + 2 * i,
                         device_id=m.name, faulty=False)
        later = (dataclasses.replace(m, noise_g=m.noise_g * 2.5) if kind == "benign" else m)
        second = render(scenario_of(later, seed + i), seconds, seed=seed + 2 * i + 1,
                        device_id=m.name, faulty=kind != "benign")
        out.append((kind, healthy_and_faulty(m.name, DEFAULT_SPEC, healthy, second)))
    return out


def flagged(runner: OnnxRunner, floor: float, ms: Any) -> np.ndarray:
    """Windows of the second recording (after the disturbance or fault) above the floor."""
    later = np.zeros(len(ms.z), bool)
    later[len(ms.z) // 2:] = True  # both renders have the same length
    return (runner(ms.z.astype(np.float32))[0] > floor) & later


def fleet_rates(runner: OnnxRunner, floor: float, fleet: list[tuple[str, Any]]
                ) -> dict[str, Any]:
    benign = [flagged(runner, floor, ms) for k, ms in fleet if k == "benign"]
    faulty = [flagged(runner, floor, ms) for k, ms in fleet if k != "benign"]
    return {"benign_machines_alerting": sum(_kofn(f) for f in benign),
            "benign_machines": len(benign),
            "false_alarm_windows_pct": round(100 * float(np.mean(np.concatenate(
                [f[len(f) // 2:] for f in benign]))), 1),
            "faulty_machines_detected": sum(_kofn(f) for f in faulty),
            "faulty_machines": len(faulty)}


def _kofn(mask: np.ndarray, k: int = 3, n: int = 5) -> bool:
    c = np.convolve(mask.astype(int), np.ones(n, int))
    return bool((c >= k).any())


def mark_feedback(db_url: str, runner: OnnxRunner, floor: float,
                  fleet: list[tuple[str, Any]], per_machine: int = 4) -> int:
    """Store each machine's first flagged windows as alerts and label them as an operator
    would: benign -> false_alarm, faulty -> confirmed."""
    from foreshock.messages import Batch, Record
    from gateway import feedback as fb
    from gateway.store import open_store

    store = open_store(db_url)
    n = 0
    try:
        for j, (kind, ms) in enumerate(fleet):
            idx = np.flatnonzero(flagged(runner, floor, ms))[:per_machine]
            recs = []
            for r, i in enumerate(idx):
                z = {name: round(float(v), 3) for name, v in zip(INPUT_FEATURES, ms.z[i],
                                                                  strict=True)}
                recs.append(Record(r + 1, 1.7e9 + r, {
                    "incident": f"{ms.name}-{r}", "status": "raised", "severity": "alarm",
                    "channel": 0, "anomaly_score": 1.0, "threshold": floor,
                    "fault": "unknown" if kind == "benign" else kind, "zone": "?",
                    "explanation": {"features_z": z}, "model": {"name": "eval"}}))
            if not recs:
                continue
            store.store_batch(Batch("sim", f"dev{j}", "boot", "alert", tuple(recs), 1.7e9),
                              1.7e9)
            for rec in recs:
                fb.record(store, label="false_alarm" if kind == "benign" else "confirmed",
                          operator="eval", ts=1.7e9, incident=rec.body["incident"])
                n += 1
    finally:
        store.close()
    return n


def closed_loop(work: Path, n_machines: int, seconds: float, quick: bool,
                seed: int = 11) -> dict[str, Any]:
    """Current bundle -> feedback on one fleet -> retrain -> both judged on a fresh fleet."""
    from models.build import ensure_key
    from models.build_default import DefaultBuild, build_default, training_sets
    from models.retrain import retrain

    key = ensure_key(work / "signing.pem")
    cfg = DefaultBuild(reduced=quick, sim_seconds=3.0 if quick else 6.0)
    none = work / "no-shared-data"
    current = (build_default(work / "current" / "0.1.0", key, cfg, none,
                             version="0.1.0")[0] if quick
               else SHIPPED)
    runner, floor = bundle(current)
    fleet = disturbed_sets(n_machines, seed, seconds)
    test = disturbed_sets(n_machines, seed + 1000, seconds)
    db = f"sqlite:///{work / 'gateway.db'}"
    labels = mark_feedback(db, runner, floor, fleet)
    sets = training_sets(cfg, DEFAULT_SPEC, none if quick else None)[0]
    out = work / "candidate"
    res = retrain(db, current, out, key, sets=sets, spec=DEFAULT_SPEC, seed=7)
    result: dict[str, Any] = {"labels": labels, "held_back": {"current": res.current,
                                                               "candidate": res.candidate},
                              "accepted": res.accepted, "reason": res.reason,
                              "evidence": res.evidence,
                              "fresh_fleet": {"current": fleet_rates(runner, floor, test)}}
    if res.accepted:
        r2, f2 = bundle(out)
        result["fresh_fleet"]["retrained"] = fleet_rates(r2, f2, test)
        result["bundle"] = json.loads((out / "manifest.json").read_text())["version"]
    return result

