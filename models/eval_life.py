"""Run-to-failure evaluation: FEMTO leave-one-bearing-out and a simulated degrading fleet.

FEMTO: each held-out bearing is commissioned on its own first 10 minutes (snapshots 0 to
600 s included, as the agent commissions) and scored by a detector trained on the simulator
only (FEMTO is never in training), as the device runs it: int8 ONNX, the threshold adapted
from the bearing's own commissioning scores, k-of-n debouncing, one stream per channel (an
incident on any channel is an alert).
Everything a site would choose is chosen on the five other bearings, never on the held-out
one: the anomaly head (the learned share of its weights, :data:`ANOMALY_SHARES`), the
channels streamed (:data:`CHANNEL_SETS`) and the alert policy (threshold quantile, factor,
margin and k-of-n). Reference: the day-one rule, horizontal RMS above its commissioning
mean + 6 sd in 3 of 5 snapshots.

``python -m models.eval_life`` runs only these two parts (about a minute).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.datasets import load
from models.policy import Policy, Runners, first_kofn, floor_from
from models.simdata import SimMachine, render, scenario_of
from models.train import (
    LEARNED_SHARE,
    Z_CLIP,
    MachineSet,
    TrainConfig,
    anomaly_weights,
    features_of,
    fit_detector,
    machine_set,
)

log = logging.getLogger(__name__)

COMMISSION_S = 600.0
CLEAN_WARNING_S = 600.0
QUANTILES = (0.5, 0.9, 0.95, 0.99)
FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
MARGINS = (0.5, 1.0, 2.0)
KOFN = ((3, 5), (6, 10), (12, 18))


@dataclass(frozen=True)
class PolicyGrid:
    """The alert policies a site chooses among on its other bearings (every combination)."""

    quantiles: tuple[float, ...] = QUANTILES
    factors: tuple[float, ...] = FACTORS
    margins: tuple[float, ...] = MARGINS
    kofn: tuple[tuple[int, int], ...] = KOFN


#: The grid of the evaluation (docs/evaluation.md).
DEFAULT_GRID = PolicyGrid()
#: Anomaly heads a site may pick on its run-to-failure history: the learned share of the
#: anomaly weights (models.train.anomaly_weights), the shipped bundle's first, so a tie
#: keeps it. 0 is the physics prior alone (uniform over models.train.ANOMALY_FEATURES).
ANOMALY_SHARES = (LEARNED_SHARE, 0.1, 0.0)
#: Channels a FEMTO machine streams: horizontal only, or both (one agent stream each).
CHANNEL_SETS: tuple[tuple[str, ...], ...] = (("horizontal",), ("horizontal", "vertical"))


@dataclass(frozen=True)
class Head:
    """One candidate anomaly head: the detector with that share, and its floor."""

    share: float
    runners: Runners
    floor: float
    w_anomaly: npt.NDArray[np.float32]


def anomaly_heads(sets: list[MachineSet], seed: int,
                  shares: tuple[float, ...] = ANOMALY_SHARES) -> list[Head]:
    """The simulator-trained detector once per anomaly share (same classifier), each
    exported and quantized as shipped, with the floor its bundle would carry."""
    w = fit_detector(sets, TrainConfig(seed=seed))
    z = np.concatenate([s.z for s in sets])
    y = np.concatenate([s.labels for s in sets])
    keep = y >= 0
    zk = np.clip(z[keep], -Z_CLIP, Z_CLIP)
    heads = []
    for share in shares:
        wa = anomaly_weights(zk, y[keep] > 0, share=share)
        runners = Runners(replace(w, w_anomaly=wa), z, seed=seed)
        heads.append(Head(share, runners, floor_from(runners.int8, sets), wa))
    return heads


def femto_series(path: Path, heads: list[Head]) -> dict[str, Any]:
    """Times, horizontal RMS and every head's int8 scores on each channel of one FEMTO
    bearing (snapshot spec); ``scores`` is the first head on the horizontal channel."""
    from agent.features import SNAPSHOT_SPEC

    rec = load(path)
    streams: dict[tuple[float, str], npt.NDArray[np.float32]] = {}
    t_ref = None
    rms = np.zeros(0, np.float32)
    for channel in ("horizontal", "vertical"):
        feats, t_s = features_of(rec, SNAPSHOT_SPEC, channel)
        if t_ref is None:
            t_ref = t_s
            rms = feats[:, SNAPSHOT_SPEC.index(["rms_g"])[0]]
        com = commissioning(t_s)
        ms = machine_set(rec.name, SNAPSHOT_SPEC, feats, t_s, np.zeros(len(t_s), np.int64), com)
        for h in heads:
            streams[(h.share, channel)] = h.runners.int8(ms.z)[0]
    assert t_ref is not None
    first = (heads[0].share, "horizontal")
    return {"name": rec.name, "t_s": t_ref, "scores": streams[first], "streams": streams,
            "rms": rms, "commission": commissioning(t_ref), "life_s": float(t_ref[-1])}


def commissioning(t_s: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """The windows the agent commissions on: up to and including the first one
    ``COMMISSION_S`` after the first (agent.decision.Decider.commission)."""
    return np.asarray(t_s - t_s[0] <= COMMISSION_S)


def view(series: dict[str, Any], share: float, channels: tuple[str, ...]) -> dict[str, Any]:
    """The series as one design sees it: ``scores`` [channels, n] of that head."""
    return {**series, "scores": np.stack([series["streams"][(share, c)] for c in channels])}


def _outcome_at(series: dict[str, Any], i: int | None) -> dict[str, Any]:
    t, life = series["t_s"], series["life_s"]
    at = None if i is None else float(t[i])
    first_half = at is not None and at < life / 2
    lead = None if at is None else life - at
    return {"first_alert_s": at, "lead_s": lead, "alert_before_failure": at is not None
            and at < life, "first_half_alert": first_half,
            "clean_warning": bool(at is not None and not first_half and lead is not None
                                  and lead >= CLEAN_WARNING_S)}


def outcome(series: dict[str, Any], alert_mask: npt.NDArray[np.bool_], k: int,
            n: int) -> dict[str, Any]:
    return _outcome_at(series, first_kofn(alert_mask & ~series["commission"], k, n))


def model_outcome(series: dict[str, Any], policy: Policy, scale: float = 1.0
                  ) -> dict[str, Any]:
    """The device's decisions: per stream (row of ``scores``) its own commissioning
    threshold and k-of-n over ``score > threshold``; the first incident on any stream.
    ``scale`` multiplies the thresholds (the robustness check of :func:`choose_design`)."""
    com = series["commission"]
    firsts, thresholds = [], []
    for s in np.atleast_2d(series["scores"]):
        thr = policy.threshold(s[com]) * scale
        thresholds.append(round(thr, 3))
        firsts.append(first_kofn((s > thr) & ~com, policy.k, policy.n))
    hits = [i for i in firsts if i is not None]
    out = _outcome_at(series, min(hits) if hits else None)
    out["threshold"] = thresholds[0] if len(thresholds) == 1 else thresholds
    return out


def score_peaks(series: dict[str, Any], k: int, n: int) -> dict[str, float | None]:
    """Highest k-of-n-sustained score (the k-th largest of n consecutive windows, over the
    streams) in the first half of life after commissioning and in the clean-warning window
    (second half, >= 10 min before the end). A clean warning from this score and k-of-n
    needs a threshold between the two: none exists when the first is the higher."""
    t, life, com = series["t_s"], series["life_s"], series["commission"]
    first = (~com) & (t < life / 2)
    warn = (t >= life / 2) & (t <= life - CLEAN_WARNING_S)
    peaks = {"first_half": -np.inf, "warning_window": -np.inf}
    for s in np.atleast_2d(series["scores"]):
        pad = np.r_[np.full(n - 1, -np.inf), s.astype(np.float64)]
        held = np.sort(np.lib.stride_tricks.sliding_window_view(pad, n), axis=1)[:, n - k]
        for key, m in (("first_half", first), ("warning_window", warn)):
            if m.any():
                peaks[key] = max(peaks[key], float(held[m].max()))
    return {k_: round(v, 3) if np.isfinite(v) else None for k_, v in peaks.items()}


def rms_rule(series: dict[str, Any]) -> dict[str, Any]:
    base = series["rms"][series["commission"]]
    limit = base.mean() + 6 * base.std()
    return outcome(series, series["rms"] > limit, 3, 5)


def _score(outcomes: list[dict[str, Any]]) -> tuple[int, int, int]:
    return (sum(o["alert_before_failure"] for o in outcomes),
            sum(not o["first_half_alert"] for o in outcomes),
            sum(o["clean_warning"] for o in outcomes))


def _policies(floor: float, grid: PolicyGrid = DEFAULT_GRID) -> list[Policy]:
    return [Policy(floor, quantile=q, factor=f, margin=m, k=k, n=n)
            for q, f, m, (k, n) in itertools.product(grid.quantiles, grid.factors,
                                                     grid.margins, grid.kofn)]


#: Threshold multipliers of the robustness check: a policy whose outcomes on the training
#: bearings survive its thresholds being 15 % off is preferred among equals.
ROBUSTNESS_SCALES = (0.85, 1.15)


def choose_policy(train: list[dict[str, Any]], floor: float) -> Policy:
    """The adaptation rule and k-of-n with the best (alerts, quiet first halves, clean
    warnings) on the training bearings; see :func:`choose_design` for ties."""
    return _choose({None: train}, {None: floor})[1]


def _choose(train: dict[Any, list[dict[str, Any]]], floors: dict[Any, float],
            grid: PolicyGrid = DEFAULT_GRID) -> tuple[Any, Policy, tuple[int, int, int]]:
    best: tuple[Any, Policy, tuple[int, int, int]] | None = None
    best_key: tuple[tuple[int, int, int], tuple[int, ...]] | None = None
    for key, views in train.items():
        for p in _policies(floors[key], grid):
            score = _score([model_outcome(s, p) for s in views])
            if best_key is not None and score < best_key[0]:
                continue
            robust = tuple(int(v) for v in np.sum(
                [_score([model_outcome(s, p, c) for s in views]) for c in ROBUSTNESS_SCALES],
                axis=0))
            if best_key is None or (score, robust) > best_key:
                best, best_key = (key, p, score), (score, robust)
    assert best is not None
    return best


def choose_design(train: list[dict[str, Any]], floors: dict[float, float],
                  grid: PolicyGrid = DEFAULT_GRID
                  ) -> tuple[tuple[float, tuple[str, ...]], Policy, tuple[int, int, int]]:
    """(anomaly share, channels), alert policy and their training score: the best
    (alerts, quiet first halves, clean warnings) on the training bearings; among equals the
    one whose training outcomes best survive thresholds 15 % lower and higher
    (:data:`ROBUSTNESS_SCALES`), then the first in order (shipped head, horizontal only,
    policy grid order). ``floors``: each candidate head's share -> its bundle floor, in
    candidate order."""
    views = {(share, ch): [view(s, share, ch) for s in train]
             for share in floors for ch in CHANNEL_SETS}
    return _choose(views, {(share, ch): f for share, f in floors.items()
                           for ch in CHANNEL_SETS}, grid)


def femto_data(femto: Path, seed: int, n_machines: int
               ) -> tuple[list[dict[str, Any]], dict[float, float]]:
    """Every FEMTO bearing's series scored by every candidate head, and the heads' floors."""
    from agent.features import DEFAULT_SPEC
    from models.evaluate import ALL_FAULTS
    from models.simdata import random_machines
    from models.trainsets import sim_sets

    sets = sim_sets(random_machines(n_machines, seed, faults=ALL_FAULTS), DEFAULT_SPEC,
                    seed=seed)
    heads = anomaly_heads(sets, seed)
    floors = {h.share: h.floor for h in heads}
    try:
        series = [femto_series(p, heads) for p in sorted(femto.glob("*.npz"))]
    finally:
        for h in heads:
            h.runners.close()
    return series, floors


def femto_lobo(femto: Path, seed: int, n_machines: int, grid: PolicyGrid = DEFAULT_GRID,
               data: tuple[list[dict[str, Any]], dict[float, float]] | None = None
               ) -> dict[str, Any]:
    """Leave one bearing out; ``data``: :func:`femto_data`'s result, if already computed."""
    series, floors = data if data is not None else femto_data(femto, seed, n_machines)
    rows = []
    for i, held in enumerate(series):
        (share, channels), policy, train_score = choose_design(series[:i] + series[i + 1:],
                                                               floors, grid)
        seen = view(held, share, channels)
        rows.append({"bearing": held["name"], "life_s": held["life_s"],
                     "design": {"anomaly_share": share, "channels": list(channels)},
                     "policy": {"quantile": policy.quantile, "factor": policy.factor,
                                "margin": policy.margin, "k": policy.k, "n": policy.n},
                     "train_score": list(train_score),
                     "bundle_thresholds": policy.bundle_thresholds(),
                     "model": model_outcome(seen, policy),
                     "score_peaks": score_peaks(seen, policy.k, policy.n),
                     "rms_rule": rms_rule(held)})
    return {"bearings": rows, "headline": _femto_headline(rows),
            "floors": {str(k): v for k, v in floors.items()}}


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
    """Lead time on degrading simulated machines (faults grow from 30 % of life to failure;
    commissioning on the first 20 %)."""
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
    i = first_kofn((a > thr) & ~com, policy.k, policy.n)  # the Decider's rule
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


def main(argv: list[str] | None = None) -> int:
    """Only the FEMTO and simulated-fleet parts of ``foreshock model evaluate``, printed as
    the report's tables; ``--json`` also writes the results."""
    from models.evaluate import SHARED
    from models.report import _femto, _fleet

    ap = argparse.ArgumentParser(prog="python -m models.eval_life", description=main.__doc__)
    ap.add_argument("--data-dir", type=Path, default=SHARED,
                    help="shared data directory holding femto/ (default ../shared/data)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--machines", type=int, default=72,
                    help="simulated training machines (the full evaluation uses 72)")
    ap.add_argument("--part", choices=("all", "femto", "fleet"), default="all")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    if args.part in ("all", "femto"):
        femto = args.data_dir / "femto"
        if not femto.is_dir() or not any(femto.glob("*.npz")):
            print(f"error: {femto} holds no FEMTO .npz files", file=sys.stderr)
            return 2
        results["femto"] = femto_lobo(femto, args.seed, args.machines)
        print("\n".join(_femto(results["femto"])) + "\n")
    if args.part in ("all", "fleet"):
        results["sim_fleet"] = sim_fleet(args.seed, args.machines)
        print("\n".join(_fleet(results["sim_fleet"])) + "\n")
    for part in results.values():
        print(json.dumps(part["headline"], sort_keys=True))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
