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
5. The closed loop through the staged rollout on running agents (real mosquitto, gateway,
   agents): alert rates before and after on the same machines, with the faulty machine's
   fault on throughout (its incident continues across the switch on its healthy baseline).

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


# -- 5. the closed loop through the staged rollout, on running agents -----------------------
LOOP_KINDS = {"bench-0": "benign", "bench-1": "benign", "bench-2": "outer_race"}
LOOP_ONSET_S = 10.0      # stream seconds: commissioning (4 s) is over, the disturbance begins
LOOP_WINDOWS = 40        # post-onset windows counted per device and model
LOOP_SPEED = 3.0         # simulated seconds per wall second
LOOP_TIMEOUT_S = 25.0


def _loop_node_classes() -> tuple[Any, Any]:
    """(DisturbedNode, Counter), defined lazily: firmware_sim and the agent are only needed
    by this section."""
    import threading

    from firmware_sim.node import SimNode

    class DisturbedNode(SimNode):
        """A healthy node whose signal comes from ``later`` (a louder or a faulty twin)
        from ``LOOP_ONSET_S`` of stream time on, to the end (through the rollout)."""

        def __init__(self, base: Any, later: Any, device: str, seed: int) -> None:
            super().__init__(base, device, seed=seed)
            self.later = SimNode(later, device, seed=seed + 100)

        def _physics(self, n: int, rate_hz: float) -> Any:
            if self.stream_time_s < LOOP_ONSET_S:
                return super()._physics(n, rate_hz)
            return self.later._physics(n, rate_hz)

    class Counter:
        """Post-onset windows and those above the agent's threshold, per device and model
        version (every window the agents score, counted by their ``on_result``); every
        incident record (version, status, incident id) and commissioning window per device
        and model version; each device's stream key."""

        def __init__(self) -> None:
            self.seen: dict[tuple[str, str], list[bool]] = {}
            self.start_s: dict[str, float] = {}
            self.alerts: dict[str, list[tuple[str, str, str]]] = {}
            self.commissioning: dict[tuple[str, str], int] = {}
            self.keys: dict[str, tuple[str, int]] = {}
            self.lock = threading.Lock()

        def hook(self, agent_box: list[Any], device: str) -> Any:
            def on_result(r: Any) -> None:
                version = agent_box[0].model_info["version"] if agent_box else "?"
                with self.lock:
                    self.keys.setdefault(device, (r.window.device_id, r.window.channel))
                    if r.alert is not None:
                        self.alerts.setdefault(device, []).append(
                            (version, r.alert["status"], r.alert["incident"]))
                    if r.commissioning:
                        self.commissioning[device, version] = \
                            self.commissioning.get((device, version), 0) + 1
                start_s = self.start_s.setdefault(device, r.window.end_s)
                if r.commissioning or np.isnan(r.anomaly) or \
                        r.window.end_s - start_s < LOOP_ONSET_S:
                    return
                with self.lock:
                    self.seen.setdefault((device, version), []).append(
                        r.anomaly > r.threshold)
            return on_result

        def incidents(self, device: str) -> list[tuple[str, str, str]]:
            with self.lock:
                return list(self.alerts.get(device, []))

        def count(self, device: str, version: str) -> int:
            with self.lock:
                return len(self.seen.get((device, version), []))

        def rate(self, device: str, version: str, skip: int = 0) -> float:
            with self.lock:
                flags = self.seen.get((device, version), [])[skip:skip + LOOP_WINDOWS]
            return float(np.mean(flags)) if flags else float("nan")

    return DisturbedNode, Counter


def loop_scenarios(kind: str) -> tuple[Any, Any]:
    """(before, after) simulator scenarios: a louder neighbour (noise x2.5) or a fault."""
    from firmware_sim.scenario import FaultSpec, Scenario

    base = dataclasses.replace(Scenario.load("healthy"), duration_s=0.0)
    if kind == "benign":
        machine_ = dataclasses.replace(base.machine, noise_g=base.machine.noise_g * 2.5)
        return base, dataclasses.replace(base, machine=machine_)
    fault = FaultSpec(kind=kind, severity=0.3)  # type: ignore[arg-type]
    return base, dataclasses.replace(base, faults=(fault,))


def wait_for(check: Any, timeout_s: float = LOOP_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


LOOP_FAULTY = "bench-2"


def _stream_state(agent: Any, key: tuple[str, int]) -> dict[str, Any]:
    """The faulty stream's incident, threshold and baselines (decider and operating-state
    bank) on a running agent, copied."""
    s = agent.pipeline.decider.stream(key)
    bank = agent.learning
    states = bank.streams.get(f"{key[0]}/{key[1]}", {}) if bank is not None else {}
    return {"incident": s.incident.id if s.incident is not None else None,
            "threshold": float(s.threshold),
            "median": None if s.baseline is None else np.array(s.baseline.median, copy=True),
            "states": {name: np.array(b.median, copy=True) for name, b in states.items()}}


def fault_through_switch(counter: Any, store: Any, site: str, old: str, new: str,
                         before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the faulty machine's agent did across the model switch, from its own incident
    records (``on_result``), the gateway's stored alerts and events, and its baselines."""
    device = LOOP_FAULTY
    seen = counter.incidents(device)
    stored = [a for a in store.alerts(device=device) if a["site"] == site]
    events = [r.body for r in store.records(device=device, kind="event") if r.site == site]
    loaded = [e["detail"] for e in events if e.get("type") == "model"
              and e["detail"].get("status") == "loaded"]
    switch = next((e for e in loaded if e.get("running", {}).get("version") == new), {})
    stream = next(iter(switch.get("streams", {}).values()), {})
    commissioned = [e["detail"] for e in events
                    if e["detail"].get("status") == "commissioned"]
    on_new = [st for version, st, _ in seen if version == new]
    return {
        "incident": before["incident"],
        "incident_after": after["incident"],
        "incidents_seen": sorted({inc for _, _, inc in seen}),
        "raised": sum(st == "raised" for _, st, _ in seen),
        "cleared": sum(st == "cleared" for _, st, _ in seen),
        "records_on_new": len(on_new),
        "updated_on_new": on_new.count("updated"),
        "stored_incidents": sorted({a["incident"] for a in stored}),
        "stored_raised": sum(a["status"] == "raised" for a in stored),
        "stored_cleared": sum(a["status"] == "cleared" for a in stored),
        "stored_on_new": sum((a["model"] or {}).get("version") == new for a in stored),
        "commissioning_windows_after": sum(
            n for (d, version), n in counter.commissioning.items()
            if d == device and version != old),
        "commissioned_events": len(commissioned),
        "switch_baseline": stream.get("baseline"),
        "switch_incident": stream.get("incident"),
        "threshold_source": stream.get("threshold_source"),
        "threshold_old": before["threshold"],
        "threshold_new": after["threshold"],
        "baseline_kept": before["median"] is not None and after["median"] is not None
        and bool(np.array_equal(before["median"], after["median"])),
        "state_baselines_kept": bool(before["states"]) and
        before["states"].keys() == after["states"].keys() and
        all(np.array_equal(v, after["states"][k]) for k, v in before["states"].items()),
    }


def rollout_loop(broker_url: str, work: Path, sets: list[Any], *, shadow_windows: int = 12,
                 chunk_bytes: int = 2048) -> dict[str, Any]:
    """Three real agents (features, onnxruntime, outbox, MQTT, OTA) fed by simulated nodes in
    accelerated real time behind ``broker_url``, and the real gateway: two machines get a
    louder neighbour after commissioning, one a bearing fault. The gateway stores their
    alerts; the operator labels them (stored and sent to the devices as signed
    ``cmd/feedback``, plus the fleet's earlier labelled alerts); the retrained bundle is
    rolled out canary first; the alert rates are measured on the same running agents before
    and after. The fault stays on throughout: the faulty machine's incident must continue
    across the switch on its healthy baseline (``fault``: :func:`fault_through_switch`)."""
    import threading
    import uuid

    from agent.config import AgentConfig
    from agent.service import Agent
    from firmware_sim.node import NodeSource
    from foreshock import bundle as fsb
    from gateway import feedback as gfb
    from gateway.config import GatewayConfig
    from gateway.deploy import deploy
    from gateway.rollout import RolloutPlan
    from gateway.service import Gateway
    from models.build import ensure_key
    from models.retrain import retrain

    DisturbedNode, Counter = _loop_node_classes()
    current = SHIPPED           # what the agents run
    key = ensure_key(work / "site.pem")
    signing = fsb.load_private_key(key)
    pub = work / "site.pub"
    pub.write_bytes(fsb.public_key_pem(signing.public_key()))
    db = f"sqlite:///{work / 'loop-gateway.db'}"
    mark_feedback(db, *bundle(current), disturbed_sets(8, 11, 3.0))  # earlier labels
    site = f"l{uuid.uuid4().hex[:6]}"
    gw_config = GatewayConfig.for_site(broker_url, site, db)
    gw = Gateway(gw_config)
    gw.start()
    stop, counter = threading.Event(), Counter()
    agents: dict[str, Any] = {}
    threads = []
    result: dict[str, Any] = {"site": site}
    try:
        for i, (device, kind) in enumerate(LOOP_KINDS.items()):
            box: list[Any] = []
            config = AgentConfig.for_device(device, site, broker_url, work / device,
                                            model={"trusted_keys": [str(pub)]},
                                            decision={"commission_s": 4.0,
                                                      "update_interval_s": 5.0},
                                            service={"health_interval_s": 5.0})
            node = DisturbedNode(*loop_scenarios(kind), device, seed=i + 1)
            agent = Agent(config, NodeSource(node, realtime=True, speed=LOOP_SPEED),
                          on_result=counter.hook(box, device))
            box.append(agent)
            agents[device] = agent
            threads.append(threading.Thread(target=agent.run, args=(stop,), daemon=True))
            threads[-1].start()
        if not wait_for(lambda: len(gw.store.devices(site)) == len(LOOP_KINDS)):
            raise RuntimeError("agents did not come online")
        old = agents["bench-0"].model_info["version"]
        result["old"] = old
        if not wait_for(lambda: all(counter.count(d, old) >= LOOP_WINDOWS
                                    for d in LOOP_KINDS), 60.0):
            raise RuntimeError("agents scored too few windows")
        result["before"] = {d: counter.rate(d, old) for d in LOOP_KINDS}
        wait_for(lambda: {a["device"] for a in gw.store.alerts()
                          if a["site"] == site and a["status"] == "raised"} == set(LOOP_KINDS),
                 10.0)
        labelled: dict[str, str] = {}
        for alert in gw.store.alerts():   # the operator's verdict on every stored incident
            if alert["site"] != site or alert["incident"] in labelled:
                continue
            device = alert["device"]
            label = "false_alarm" if LOOP_KINDS[device] == "benign" else "confirmed"
            ts = time.time()              # as `foreshock gateway feedback`: store, then send
            gfb.record(gw.store, label=label, operator="eval", ts=ts,
                       incident=alert["incident"])
            gfb.publish_command(gw_config, *gfb.feedback_command(
                site, device, incident=alert["incident"], label=label, operator="eval",
                ts=ts, key=signing))
            labelled[alert["incident"]] = device
        result["labelled"] = labelled
        faulty, fkey = agents[LOOP_FAULTY], counter.keys[LOOP_FAULTY]
        fault_before = _stream_state(faulty, fkey)   # the fault stays on from here to the end
        result["confirmed_on_device"] = wait_for(
            lambda: fault_before["incident"] in getattr(faulty, "confirmed_incidents", ()),
            10.0)
        out = work / "loop-candidate"
        res = retrain(db, current, out, key, sets=sets, spec=DEFAULT_SPEC)
        result["retrain"] = res
        if not res.accepted:
            return result
        new = fsb.verify(out, [signing.public_key()]).data["version"]
        result["new"] = new
        progress: list[tuple[str, dict[str, int]]] = []
        plan = RolloutPlan(out, site, tuple(sorted(LOOP_KINDS)), canary=1, abort_on_pct=50,
                           chunk_bytes=chunk_bytes, shadow_windows=shadow_windows)
        manager = deploy(plan, broker_url, gw.store, [pub], timeout_s=LOOP_TIMEOUT_S,
                         reoffer_s=5.0, progress=lambda m: progress.append(
                             (m.state, m.summary())))
        result.update(rollout=manager.state, rollout_summary=manager.summary(),
                      progress=progress,
                      device_status={d.device: (d.status, d.detail.get("detail"))
                                     for d in gw.store.rollout_devices()
                                     if d.site == site},
                      running={d: a.model_info["version"] for d, a in agents.items()})
        if manager.state != "complete":
            return result
        # the same machines, still disturbed, the bearing still faulty, on the new model
        wait_for(lambda: all(counter.count(d, new) >= LOOP_WINDOWS for d in LOOP_KINDS), 60.0)
        result["after"] = {d: counter.rate(d, new) for d in LOOP_KINDS}
        # an open incident sends an update every update_interval_s (5 s) of stream time
        wait_for(lambda: any(v == new for v, _, _ in counter.incidents(LOOP_FAULTY)), 20.0)
        fault_after = _stream_state(faulty, fkey)
        wait_for(lambda: any((a["model"] or {}).get("version") == new
                             for a in gw.store.alerts(device=LOOP_FAULTY)
                             if a["site"] == site), 10.0)
        result["fault"] = fault_through_switch(counter, gw.store, site, old, new,
                                               fault_before, fault_after)
        result["benign_cleared_on_new"] = {
            d: any(v == new and st == "cleared" for v, st, _ in counter.incidents(d))
            for d, kind in LOOP_KINDS.items() if kind == "benign"}
        return result
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        gw.stop()


class Broker:
    """A private mosquitto on a free loopback port for the rollout section."""

    CONF = ("per_listener_settings false\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
            "persistence false\nmax_queued_messages 0\nmax_inflight_messages 100\n"
            "max_packet_size 8388608\n")

    def __init__(self, work: Path) -> None:
        import shutil
        import socket
        import subprocess

        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise FileNotFoundError("mosquitto is not installed")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        conf = work / "mosquitto.conf"
        conf.write_text(self.CONF.format(port=self.port))
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise TimeoutError("mosquitto did not start") from None
                time.sleep(0.05)
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def rollout_section(work: Path, quick: bool) -> dict[str, Any]:
    from models.build_default import DefaultBuild, training_sets

    cfg = DefaultBuild(reduced=quick, sim_seconds=3.0 if quick else 6.0)
    sets = training_sets(cfg, DEFAULT_SPEC, work / "no-shared-data" if quick else None)[0]
    broker = Broker(work)
    try:
        r = rollout_loop(broker.url, work, sets)
    finally:
        broker.close()
    res = r.pop("retrain")
    return {**{k: v for k, v in r.items() if k != "progress"},
            "accepted": res.accepted, "reason": res.reason, "evidence": res.evidence,
            "held_back": {"current": res.current, "candidate": res.candidate},
            "canary_first": bool(r.get("progress")) and all(
                sum(s.values()) == 1 for state, s in r["progress"] if state == "canary")}


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
    with tempfile.TemporaryDirectory() as tmp:
        results["rollout_loop"] = rollout_section(Path(tmp), quick)
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
    on, off = (r["growing"][k]["mean_lead_h"] for k in ("adaptation on", "adaptation off"))
    if on is not None and off:
        cost = 100 * (off - on) / off
        lines += ["", f"Adaptation {'costs' if cost > 0 else 'gains'} {abs(cost):.1f} % of the "
                  f"mean lead time (limit: costs at most 10 %: "
                  f"{'met' if cost <= 10 else 'NOT met'})."]
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
                         f"{b['first_half_on']} | {_lead(b['lead_min_off'])}/"
                         f"{_lead(b['lead_min_on'])} | "
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
    lines += _evidence_lines(c.get("evidence"))
    lines += _rollout_lines(r.get("rollout_loop"))
    return "\n".join(lines) + "\n"


def _lead(v: float | None) -> str:
    return "missed" if v is None else f"{v:g}"


def _evidence_lines(ev: dict[str, Any] | None) -> list[str]:
    """The retrain's own check on known faults (models/retrain.py)."""
    if not ev:
        return []
    out = ["", "The retrain's fault evidence (training machines' fault windows, confirmed "
           "labels) and normal training windows, each bundle at its own floor:", "",
           "| bundle | floor | fault machines detected (3 of 5) | fault windows flagged | "
           "confirmed labels flagged | normal windows flagged |", "|---|---|---|---|---|---|"]
    for who, e in ev.items():
        out.append(f"| {who} | {e['floor']:.3g} | {e['fault_machines_detected']}/"
                   f"{e['fault_machines']} | {100 * e['fault_window_recall']:.1f} % | "
                   f"{e['confirmed_labels_flagged']}/{e['confirmed_labels']} | "
                   f"{100 * e['normal_windows_flagged']:.1f} % |")
    return out


def _rollout_lines(r: dict[str, Any] | None) -> list[str]:
    if not r:
        return []
    out = ["", "### Closed loop through the staged rollout, on running agents", "",
           "Three real agents (real mosquitto, gateway, OTA) on simulated machines in "
           "accelerated real time: bench-0 and bench-1 get a louder neighbour (noise x2.5) "
           "after commissioning, bench-2 a bearing fault (outer race, severity 0.3). Their "
           "stored alerts are labelled (false_alarm / confirmed), the bundle is retrained "
           "from the gateway store and rolled out canary first with the shadow check; the "
           "share of post-onset windows above each agent's threshold is counted on the same "
           "running agents before and after. bench-2's fault stays on from before the "
           "rollout to the end: its incident must go on across the switch on its healthy "
           "baseline.", ""]
    hb = r["held_back"]
    out += [f"Held-back feedback: false alarms flagged {hb['current']['false_alarms_flagged']}"
            f"/{hb['current']['false_alarms']} (current) vs "
            f"{hb['candidate']['false_alarms_flagged']}/{hb['candidate']['false_alarms']} "
            f"(candidate), confirmed {hb['current']['confirmed_flagged']}/"
            f"{hb['current']['confirmed']} vs {hb['candidate']['confirmed_flagged']}/"
            f"{hb['candidate']['confirmed']}."]
    out += _evidence_lines(r.get("evidence"))
    out.append("")
    if r["accepted"]:
        out.append(f"Retrained {r['old']} -> {r.get('new')}; rollout {r.get('rollout')} "
                   f"{r.get('rollout_summary')}, canary first: {r.get('canary_first')}.")
        shadow = r.get("device_status") or {}
        if shadow:
            out += ["", "| device | rollout status | shadow check (device's report) |",
                    "|---|---|---|"]
            out += [f"| {d} | {shadow[d][0]} | {shadow[d][1]} |" for d in LOOP_KINDS
                    if d in shadow]
    else:
        out.append(f"Candidate refused by the retrain, nothing rolled out: {r['reason']}.")
    out += ["", "| device | machine | alert rate before | after |", "|---|---|---|---|"]
    for d, kind in LOOP_KINDS.items():
        after = f"{100 * r['after'][d]:.1f} %" if "after" in r else "(no rollout)"
        out.append(f"| {d} | {kind} | {100 * r['before'][d]:.1f} % | {after} |")
    return out + _fault_lines(r)


def _fault_lines(r: dict[str, Any]) -> list[str]:
    """The faulty machine across the switch (``fault_through_switch``)."""
    f = r.get("fault")
    if not f:
        return []
    ok = (f["incident_after"] == f["incident"] and f["incidents_seen"] == [f["incident"]]
          and f["raised"] == 1 and f["cleared"] == 0 and f["records_on_new"] > 0
          and f["commissioning_windows_after"] == 0 and f["commissioned_events"] == 1
          and f["baseline_kept"] and f["state_baselines_kept"])
    return [
        "", f"{LOOP_FAULTY} with its fault on through canary, shadow and promote "
        f"(incident confirmed on the device: {r.get('confirmed_on_device')}): "
        f"{'the incident went on, as required' if ok else 'NOT as required'}.", "",
        "| check | value |", "|---|---|",
        f"| incident before the rollout / after promotion | {f['incident']} / "
        f"{f['incident_after']} |",
        f"| incidents seen on the agent / stored by the gateway | {len(f['incidents_seen'])} "
        f"/ {len(f['stored_incidents'])} |",
        f"| `raised` records (agent / gateway) | {f['raised']} / {f['stored_raised']} |",
        f"| `cleared` records (agent / gateway) | {f['cleared']} / {f['stored_cleared']} |",
        f"| incident records on {r.get('new')} (agent / gateway) | {f['records_on_new']} / "
        f"{f['stored_on_new']} |",
        f"| switch: baseline, incident | {f['switch_baseline']}, {f['switch_incident']} |",
        f"| threshold {r['old']} -> {r.get('new')} (source) | {f['threshold_old']:.3g} -> "
        f"{f['threshold_new']:.3g} ({f['threshold_source']}) |",
        f"| commissioning windows after the switch / `commissioned` events in all | "
        f"{f['commissioning_windows_after']} / {f['commissioned_events']} |",
        f"| baseline median unchanged (decider / operating-state bank) | "
        f"{f['baseline_kept']} / {f['state_baselines_kept']} |",
        f"| benign incidents cleared on {r.get('new')} | "
        f"{', '.join(d for d, c in r.get('benign_cleared_on_new', {}).items() if c) or 'none'} |",
    ]


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
