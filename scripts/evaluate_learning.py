"""Evidence for continuous learning: writes the learning block of docs/evaluation.md.

    python scripts/evaluate_learning.py [--quick] [--data-dir ../shared/data] [--report FILE]

Sections (docs/learning.md explains the method):

1. Simulated fleet with speed and load changes: false alerts per machine-week, one baseline
   vs per-operating-state baselines.
2. Faults growing over a simulated week (after a run-in that settles): lead time with
   guarded adaptation on vs off.
3. FEMTO run-to-failure bearings (shared data; skipped when absent outside CI): alerts in the
   first half of life and lead time, adaptation on vs off.
4. Closed loop: benign disturbances raise false alarms, an operator marks them in the
   gateway store, ``models.retrain`` trains a candidate; false alarms and detections of the
   current and the accepted bundle on a fresh simulated fleet.

Streams go through the device's own decision code (:class:`agent.decision.Decider`) and
operating-state baselines (:class:`agent.baselines.StateBank`), scored by a real bundle in
onnxruntime. Time is compressed: a machine-week is 168 hourly slots of a few windows each,
cut from simulator renders of the slot's operating state.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.baselines import LearningConfig, StateBank  # noqa: E402
from agent.config import DecisionConfig  # noqa: E402
from agent.decision import Decider, Observation  # noqa: E402
from agent.features import DEFAULT_SPEC, SNAPSHOT_SPEC  # noqa: E402
from models.runtime import OnnxRunner  # noqa: E402
from models.simdata import SimMachine, render, scenario_of  # noqa: E402
from models.train import INPUT_FEATURES, features_of  # noqa: E402

HOUR_S = 3600.0
BEGIN, END = "<!-- BEGIN learning -->", "<!-- END learning -->"
SHIPPED = ROOT / "models" / "bundles" / "foreshock-default" / "0.1.0"
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


# -- 3. FEMTO run-to-failure, adaptation on vs off, leave one bearing out -------------------
#: What is chosen on the other bearings: the threshold (bundle floor x scale, commissioning
#: rule factor) and, with adaptation on, its speed (eta at or below the default, so within
#: the documented per-day bounds). The first of each list is the default; ties go to it.
FEMTO_THRESHOLDS: tuple[tuple[float, float], ...] = tuple(
    (scale, factor) for scale in (1.0, 1.5, 2.0) for factor in (1.5, 3.0))
FEMTO_ADAPTATION: tuple[dict[str, Any], ...] = (
    {"eta": 0.01, "max_updates_per_day": 200}, {"eta": 0.005, "max_updates_per_day": 200},
    {"eta": 0.0025, "max_updates_per_day": 200})


def femto_settings() -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Candidate settings per mode: name -> Streamer keyword arguments (floor scale apart)."""
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {"off": [], "on": []}
    for scale, factor in FEMTO_THRESHOLDS:
        out["off"].append((f"floor x{scale:g}, factor {factor:g}",
                           {"scale": scale, "factor": factor, "adapt": False}))
        for a in FEMTO_ADAPTATION:
            out["on"].append((f"floor x{scale:g}, factor {factor:g}, eta {a['eta']:g}, "
                              f"{a['max_updates_per_day']}/day",
                              {"scale": scale, "factor": factor, "adapt": True,
                               "learning": a}))
    return out


def femto_run(runner: OnnxRunner, floor: float, x: np.ndarray, t_s: np.ndarray, rpm: float,
              kw: dict[str, Any]) -> dict[str, Any]:
    """One bearing through one setting, commissioned on its first 10 minutes. False alerts:
    alerts in the first half of life; lead time: end of life - first alert after that."""
    s = Streamer(runner, floor * kw["scale"], SNAPSHOT_SPEC, states=True, adapt=kw["adapt"],
                 commission_s=600.0, factor=kw["factor"], learning=kw.get("learning"))
    for i in range(0, len(x), 10):
        s.push(x[i:i + 10], rpm, t_s[i:i + 10])
    life = float(t_s[-1])
    late = [t for t in s.raised if t >= life / 2]
    return {"alerts": len(s.raised), "false_alerts": len(s.raised) - len(late),
            "lead_min": round((life - late[0]) / 60, 1) if late else None, "life_s": life}


def _cost(runs: list[dict[str, Any]]) -> tuple[int, float]:
    """Selection on the training bearings: false alerts + missed failures, then the larger
    mean lead as a share of life."""
    errors = sum(r["false_alerts"] + (r["lead_min"] is None) for r in runs)
    share = float(np.mean([(r["lead_min"] or 0.0) * 60 / r["life_s"] for r in runs]))
    return errors, -share


def femto(runner: OnnxRunner, floor: float, femto_dir: Path, only: tuple[str, ...] = (),
          settings: dict[str, list[tuple[str, dict[str, Any]]]] | None = None
          ) -> list[dict[str, Any]]:
    """Leave one bearing out: for each held-out bearing, the threshold (and, on, the
    adaptation speed) is the setting with the fewest false alerts plus missed failures on
    the other bearings; the held-out bearing is commissioned on its first 10 minutes and
    run with it. The shipped bundle never saw FEMTO. ``only``: report these bearings;
    ``settings``: the candidates (default :func:`femto_settings`)."""
    from models.datasets import load

    data = {}
    for path in sorted(femto_dir.glob("*.npz")):
        rec = load(path)
        x, t_s = features_of(rec, SNAPSHOT_SPEC, "horizontal")
        data[path.stem] = (x, t_s, rec.rpm)
    if len(data) < 2:
        raise SystemExit(f"leave-one-bearing-out needs at least 2 FEMTO bearings in "
                         f"{femto_dir}, found {len(data)}")
    settings = settings or femto_settings()
    runs = {(b, mode, name): femto_run(runner, floor, *data[b], kw)
            for b in data for mode, grid in settings.items() for name, kw in grid}
    rows = []
    for held in data:
        if only and held not in only:
            continue
        rest = [b for b in data if b != held]
        row: dict[str, Any] = {"bearing": held, "life_h": round(float(data[held][1][-1])
                                                                / HOUR_S, 2)}
        for mode, grid in settings.items():
            name = min((n for n, _ in grid),
                       key=lambda n: _cost([runs[(b, mode, n)] for b in rest]))
            got = runs[(held, mode, name)]
            row[f"setting_{mode}"] = name
            row[f"alerts_{mode}"] = got["alerts"]
            row[f"first_half_{mode}"] = got["false_alerts"]
            row[f"lead_min_{mode}"] = got["lead_min"]
        rows.append(row)
    return rows


def femto_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for mode in ("off", "on"):
        leads = [r[f"lead_min_{mode}"] for r in rows if r[f"lead_min_{mode}"] is not None]
        out[mode] = {"false_alerts": sum(r[f"first_half_{mode}"] for r in rows),
                     "detected": len(leads), "bearings": len(rows),
                     "mean_lead_min": round(float(np.mean(leads)), 1) if leads else None}
    return out


# -- 4. closed loop: operator feedback -> retrained bundle ---------------------------------
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
    current = (build_default(work / "current" / "0.1.0", key, cfg, none)[0] if quick
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
                              "accepted": res.accepted,
                              "fresh_fleet": {"current": fleet_rates(runner, floor, test)}}
    if res.accepted:
        r2, f2 = bundle(out)
        result["fresh_fleet"]["retrained"] = fleet_rates(r2, f2, test)
        result["bundle"] = json.loads((out / "manifest.json").read_text())["version"]
    return result


# -- report --------------------------------------------------------------------------------
def run(quick: bool, data_dir: Path) -> dict[str, Any]:
    runner, floor = bundle(SHIPPED)
    n, per_slot, seconds = (3, 4, 3.0) if quick else (12, 6, 6.0)
    t0 = time.perf_counter()
    results: dict[str, Any] = {"quick": quick}
    results["speed_load"] = speed_load(runner, floor, n, 3, per_slot, seconds)
    results["growing"] = growing_week(runner, floor, n, 3, per_slot, seconds)
    femto_dir = data_dir / "femto"
    if femto_dir.is_dir():
        results["femto"] = femto(runner, floor, femto_dir)
        results["femto_summary"] = femto_summary(results["femto"])
    elif os.environ.get("CI") == "true":
        raise SystemExit(f"FEMTO data not found at {femto_dir} (required when CI=true)")
    with tempfile.TemporaryDirectory() as tmp:
        results["closed_loop"] = closed_loop(Path(tmp), 8 if quick else 24, seconds, quick)
    results["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return results


def markdown(r: dict[str, Any]) -> str:
    cmd = "python scripts/evaluate_learning.py" + (" --quick" if r["quick"] else "")
    lines = ["## Continuous learning", "",
             f"Generated by `{cmd}` in {r['elapsed_s']} s (method: docs/learning.md). "
             "Scored by the shipped bundle through the device's Decider and operating-state "
             "baselines; a machine-week is 168 hourly slots.", "",
             "### Speed and load changes: false alerts per healthy machine-week", "",
             "| baselines | machines | false alerts / machine-week | machines with any |",
             "|---|---|---|---|"]
    for name, v in r["speed_load"].items():
        lines.append(f"| {name} | {v['machines']} | {v['false_alerts_per_machine_week']:.2f} "
                     f"| {v['machines_with_false_alerts']} |")
    lines += ["", "### Faults growing over a week after a settling run-in "
              "(onset at hour 48)", "",
              "| adaptation | detected | mean lead h | leads h | false alerts before onset |",
              "|---|---|---|---|---|"]
    for name, v in r["growing"].items():
        lines.append(f"| {name} | {v['detected']}/{v['machines']} | {v['mean_lead_h']} | "
                     f"{v['leads_h']} | {v['false_alerts_before_onset']} |")
    lines += ["", "### FEMTO run-to-failure, leave one bearing out", "",
              "Per held-out bearing: the threshold (bundle floor x scale, commissioning "
              "factor) and, with adaptation on, its speed are chosen on the other five "
              "bearings (fewest false alerts + missed failures, then most lead as a share of "
              "life); the held-out bearing is commissioned on its first 10 minutes only. "
              "False alerts: alerts in the first half of life; lead: end of life - first "
              "alert after that.", ""]
    if "femto" in r:
        lines += ["| bearing | life h | false alerts off/on | lead min off/on | "
                  "chosen off | chosen on |", "|---|---|---|---|---|---|"]
        for b in r["femto"]:
            lines.append(f"| {b['bearing']} | {b['life_h']} | {b['first_half_off']}/"
                         f"{b['first_half_on']} | {b['lead_min_off']}/{b['lead_min_on']} | "
                         f"{b['setting_off']} | {b['setting_on']} |")
        fs = r["femto_summary"]
        lines += ["", "| adaptation | false alerts | failures detected | mean lead min |",
                  "|---|---|---|---|"]
        for mode in ("off", "on"):
            v = fs[mode]
            lines.append(f"| {mode} | {v['false_alerts']} | {v['detected']}/{v['bearings']} "
                         f"| {v['mean_lead_min']} |")
    else:
        lines.append("Skipped: shared FEMTO data not found.")
    c = r["closed_loop"]
    lines += ["", "### Closed loop: operator feedback and a retrained bundle", "",
              f"{c['labels']} alerts labelled (false_alarm on benign disturbances, confirmed "
              f"on faults); candidate accepted: {c['accepted']}.", "",
              "| judged on | bundle | false alarms flagged | detections |", "|---|---|---|---|"]
    for who, m in c["held_back"].items():
        lines.append(f"| held-back feedback | {who} | {m['false_alarms_flagged']}/"
                     f"{m['false_alarms']} | {m['confirmed_flagged']}/{m['confirmed']} |")
    for who, m in c["fresh_fleet"].items():
        lines.append(f"| fresh fleet (machines) | {who} | {m['benign_machines_alerting']}/"
                     f"{m['benign_machines']} ({m['false_alarm_windows_pct']} % of windows) | "
                     f"{m['faulty_machines_detected']}/{m['faulty_machines']} |")
    return "\n".join(lines) + "\n"


def write_block(report: Path, text: str) -> None:
    doc = report.read_text() if report.exists() else ""
    if BEGIN not in doc or END not in doc:
        doc = doc.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    report.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="Small fleets (CI scale).")
    ap.add_argument("--data-dir", type=Path, default=SHARED)
    ap.add_argument("--report", type=Path, default=ROOT / "docs" / "evaluation.md")
    ap.add_argument("--json", type=Path, default=None, help="Also save the raw results.")
    args = ap.parse_args(argv)
    results = run(args.quick, args.data_dir)
    write_block(args.report, markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(markdown(results))


if __name__ == "__main__":
    main()
