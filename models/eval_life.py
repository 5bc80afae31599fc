"""Run-to-failure evaluation: FEMTO leave-one-bearing-out and a simulated degrading fleet.

FEMTO: each held-out bearing is commissioned on its own first 10 minutes (60 snapshots),
scored by a detector trained on the simulator only (FEMTO is never in training), and its
alert policy (threshold factor and k-of-n) is chosen on the five other bearings. Reference:
the day-one rule, horizontal RMS above its commissioning mean + 6 sd in 3 of 5 snapshots.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.datasets import load
from models.policy import Policy, Runners, first_kofn, floor_from
from models.simdata import SimMachine, render, scenario_of
from models.train import TrainConfig, features_of, fit_detector, input_columns, machine_set

log = logging.getLogger(__name__)

COMMISSION_S = 600.0
CLEAN_WARNING_S = 600.0
QUANTILES = (0.5, 0.9, 0.95, 0.99)
FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
MARGINS = (0.5, 1.0, 2.0)
KOFN = ((3, 5), (6, 10), (12, 18))


def femto_series(path: Path, runners: Runners) -> dict[str, Any]:
    """Scores, times and horizontal RMS of one FEMTO bearing (snapshot spec)."""
    from agent.features import SNAPSHOT_SPEC

    rec = load(path)
    feats, t_s = features_of(rec, SNAPSHOT_SPEC, "horizontal")
    com = t_s < COMMISSION_S
    ms = machine_set(rec.name, SNAPSHOT_SPEC, feats, t_s, np.zeros(len(t_s), np.int64), com)
    scores = runners.int8(ms.z)[0]
    rms = feats[:, SNAPSHOT_SPEC.index(["rms_g"])[0]]
    _ = input_columns(SNAPSHOT_SPEC)
    return {"name": rec.name, "t_s": t_s, "scores": scores, "rms": rms, "commission": com,
            "life_s": float(t_s[-1])}


def outcome(series: dict[str, Any], alert_mask: npt.NDArray[np.bool_], k: int,
            n: int) -> dict[str, Any]:
    t, life, com = series["t_s"], series["life_s"], series["commission"]
    mask = alert_mask & ~com
    i = first_kofn(mask, k, n)
    at = None if i is None else float(t[i])
    first_half = at is not None and at < life / 2
    lead = None if at is None else life - at
    return {"first_alert_s": at, "lead_s": lead, "alert_before_failure": at is not None
            and at < life, "first_half_alert": first_half,
            "clean_warning": bool(at is not None and not first_half and lead is not None
                                  and lead >= CLEAN_WARNING_S)}


def model_outcome(series: dict[str, Any], policy: Policy) -> dict[str, Any]:
    thr = policy.threshold(series["scores"][series["commission"]])
    out = outcome(series, series["scores"] >= thr, policy.k, policy.n)
    out["threshold"] = round(thr, 3)
    return out


def rms_rule(series: dict[str, Any]) -> dict[str, Any]:
    base = series["rms"][series["commission"]]
    limit = base.mean() + 6 * base.std()
    return outcome(series, series["rms"] > limit, 3, 5)


def _score(outcomes: list[dict[str, Any]]) -> tuple[int, int, int]:
    return (sum(o["alert_before_failure"] for o in outcomes),
            sum(not o["first_half_alert"] for o in outcomes),
            sum(o["clean_warning"] for o in outcomes))


def choose_policy(train: list[dict[str, Any]], floor: float) -> Policy:
    """The adaptation rule and k-of-n with the best (alerts, quiet first halves, clean
    warnings) on the training bearings; ties keep the first in grid order."""
    best, best_score = Policy(floor), (-1, -1, -1)
    for q, factor, margin, (k, n) in itertools.product(QUANTILES, FACTORS, MARGINS, KOFN):
        p = Policy(floor, quantile=q, factor=factor, margin=margin, k=k, n=n)
        score = _score([model_outcome(s, p) for s in train])
        if score > best_score:
            best, best_score = p, score
    return best


def femto_lobo(femto: Path, seed: int, n_machines: int) -> dict[str, Any]:
    from agent.features import DEFAULT_SPEC
    from models.evaluate import ALL_FAULTS
    from models.simdata import random_machines
    from models.trainsets import sim_sets

    sets = sim_sets(random_machines(n_machines, seed, faults=ALL_FAULTS), DEFAULT_SPEC,
                    seed=seed)
    runners = Runners(fit_detector(sets, TrainConfig(seed=seed)),
                      np.concatenate([s.z for s in sets]), seed=seed)
    floor = floor_from(runners.int8, sets)
    series = [femto_series(p, runners) for p in sorted(femto.glob("*.npz"))]
    runners.close()
    rows = []
    for i, held in enumerate(series):
        policy = choose_policy(series[:i] + series[i + 1:], floor)
        rows.append({"bearing": held["name"], "life_s": held["life_s"],
                     "policy": {"quantile": policy.quantile, "factor": policy.factor,
                                "margin": policy.margin, "k": policy.k, "n": policy.n},
                     "model": model_outcome(held, policy), "rms_rule": rms_rule(held)})
    return {"bearings": rows, "headline": _femto_headline(rows)}


def _femto_headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("model", "rms_rule"):
        a, q, c = _score([r[key] for r in rows])
        out[f"femto_{key}_alert_before_failure"] = a
        out[f"femto_{key}_no_first_half_alert"] = q
        out[f"femto_{key}_clean_warning_10min"] = c
    out["femto_bearings"] = len(rows)
    return out


def fleet_machines(seed: int, count: int) -> list[SimMachine]:
    from models.simdata import random_machines

    base = random_machines(count, seed + 500, faults=("inner_race", "outer_race", "ball",
                                                       "imbalance", "misalignment"))
    return [replace(m, severity=1.0) for m in base]


def sim_fleet(seed: int, n_machines: int, *, quick: bool = False) -> dict[str, Any]:
    """Lead time on degrading simulated machines (faults grow from 20 % of life to failure)."""
    from agent.features import DEFAULT_SPEC
    from models.evaluate import ALL_FAULTS
    from models.simdata import random_machines
    from models.trainsets import sim_sets

    sets = sim_sets(random_machines(n_machines, seed, faults=ALL_FAULTS), DEFAULT_SPEC,
                    seed=seed)
    runners = Runners(fit_detector(sets, TrainConfig(seed=seed)),
                      np.concatenate([s.z for s in sets]), seed=seed)
    policy = Policy(floor_from(runners.int8, sets))
    rows = [_degrading(m, runners, policy, seed, 60.0 if quick else 120.0)
            for m in fleet_machines(seed, 5 if quick else 15)]
    runners.close()
    leads = [r["lead_s"] for r in rows if r["lead_s"] is not None]
    return {"machines": rows, "headline": {
        "fleet_machines": len(rows), "fleet_detected": len(leads),
        "fleet_false_alert_before_onset": sum(r["alert_before_onset"] for r in rows),
        "fleet_median_lead_fraction_of_life": round(float(np.median(
            [r["lead_fraction"] for r in rows if r["lead_fraction"] is not None])), 3)
        if leads else None}}


def _degrading(m: SimMachine, runners: Runners, policy: Policy, seed: int,
               life_stream_s: float) -> dict[str, Any]:
    from agent.features import DEFAULT_SPEC

    sc = scenario_of(m, seed)
    fault = replace(sc.faults[0], growth="exponential", onset_frac=0.3, severity=1.0)
    life = replace(sc.life, life_s=life_stream_s, time_acceleration=1.0)
    sc = replace(sc, faults=(fault,), life=life)
    rec = render(sc, life_stream_s, seed=seed, device_id=m.name)
    spec = replace(DEFAULT_SPEC, bearing=m.bearing)
    feats, t_s = features_of(rec, spec)
    com = t_s < 0.2 * life_stream_s
    ms = machine_set(m.name, spec, feats, t_s, np.zeros(len(t_s), np.int64), com)
    a, p = runners.int8(ms.z)
    thr = policy.threshold(a[com])
    i = first_kofn((a >= thr) & ~com, policy.k, policy.n)
    at = None if i is None else float(t_s[i])
    lead = None if at is None else life_stream_s - at
    fault_idx = int(np.argmax(p[i, 1:]) + 1) if i is not None else 0
    from models.export import LABELS

    return {"machine": m.name, "bearing": m.bearing, "rpm": round(m.rpm),
            "sample_rate_hz": m.sample_rate_hz, "fault": m.fault, "first_alert_s": at,
            "lead_s": lead, "lead_fraction": None if lead is None else
            round(lead / life_stream_s, 3),
            "alert_before_onset": at is not None and at < 0.3 * life_stream_s,
            "fault_named": LABELS[fault_idx] if i is not None else None}
