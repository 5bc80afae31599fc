"""The evaluation behind docs/evaluation.md: one command, ``foreshock model evaluate``.

Every model here is trained from scratch for its experiment and run as the device runs it:
the int8 QDQ ONNX file through onnxruntime, its threshold adapted from the test machine's own
commissioning windows (:class:`models.policy.Policy`). Sections: CWRU cross-load, transfer
(simulator -> CWRU, CWRU -> simulated machines on other bearings, speeds and rates), FEMTO
leave-one-bearing-out against the day-one RMS rule (models.eval_life), simulated fleet lead
time, and the fp32 / int8 / TFLite decision parity.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from foreshock.errors import DataError
from models.export import LABELS
from models.metrics import confusion, decide, device_decision
from models.policy import Policy, Runners, floor_from, kofn_mask
from models.simdata import random_machines
from models.train import MachineSet, TrainConfig, fit_detector
from models.trainsets import cwru_load, cwru_sets, sim_sets

log = logging.getLogger(__name__)

SUMMARY = Path(__file__).resolve().parent / "evaluation_summary.json"
RESULTS = Path(__file__).resolve().parent / "evaluation_results.json"
REPORT = Path(__file__).resolve().parent.parent / "docs" / "evaluation.md"
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
ALL_FAULTS = ("normal", "inner_race", "outer_race", "ball", "imbalance", "misalignment")


@dataclass
class Tested:
    """One test record's windows and decisions."""

    __test__ = False  # not a pytest test class, despite the name

    name: str
    label: int
    decisions: npt.NDArray[np.int64]
    alerts: npt.NDArray[np.bool_]

    @property
    def file_prediction(self) -> int:
        """The record's verdict: the most frequent window decision."""
        return int(np.bincount(self.decisions, minlength=len(LABELS)).argmax())


def split_normal(s: MachineSet) -> tuple[MachineSet, MachineSet]:
    """(commissioning part, the rest) of a machine set."""
    c = s.commission
    return (MachineSet(s.name, s.z[c], s.labels[c], s.t_s[c], c[c]),
            MachineSet(s.name, s.z[~c], s.labels[~c], s.t_s[~c], c[~c]))


def run_tests(w_runners: Runners, policy: Policy, tests: list[MachineSet],
              commission: dict[str, MachineSet]) -> list[Tested]:
    """Score each test set with the int8 model; threshold from its machine's commissioning."""
    out = []
    for s in tests:
        com = commission.get(s.name, s)
        thr = policy.threshold(w_runners.int8(com.z[com.commission])[0])
        keep = ~s.commission
        a, p = w_runners.int8(s.z[keep])
        dec = decide(a, p, thr)
        label = int(np.bincount(s.labels[keep][s.labels[keep] >= 0]).argmax())
        out.append(Tested(s.name, label, dec, kofn_mask(a >= thr, policy.k, policy.n)))
    return out


def summarise(tested: list[Tested], labels: tuple[str, ...] = ALL_FAULTS) -> dict[str, Any]:
    y_file = np.array([t.label for t in tested])
    p_file = np.array([t.file_prediction for t in tested])
    y_win = np.concatenate([np.full(len(t.decisions), t.label) for t in tested])
    p_win = np.concatenate([t.decisions for t in tested])
    per_label = {}
    for i, name in enumerate(LABELS):
        if name in labels and (y_file == i).any():
            per_label[name] = {"files": int((y_file == i).sum()),
                               "files_right": int(((y_file == i) & (p_file == i)).sum()),
                               "window_accuracy": round(float(np.mean(p_win[y_win == i] == i)), 4)}
    normal = [t for t in tested if t.label == 0]
    return {
        "files": len(tested), "files_right": int((y_file == p_file).sum()),
        "file_accuracy": round(float(np.mean(y_file == p_file)), 4),
        "window_accuracy": round(float(np.mean(y_win == p_win)), 4),
        "per_label": per_label, "confusion_windows": confusion(y_win, p_win),
        "normal_alert_windows": int(sum(t.alerts.sum() for t in normal)),
        "normal_windows": int(sum(len(t.alerts) for t in normal)),
        "wrong_files": [f"{t.name}: {LABELS[t.label]} -> {LABELS[t.file_prediction]}"
                        for t in tested if t.file_prediction != t.label],
    }


def train_and_test(train: list[MachineSet], tests: list[MachineSet],
                   commission: dict[str, MachineSet], seed: int) -> tuple[dict[str, Any],
                                                                       Runners]:
    w = fit_detector(train, TrainConfig(seed=seed))
    runners = Runners(w, np.concatenate([s.z for s in train]), seed=seed)
    policy = Policy(floor_from(runners.int8, train))
    result = summarise(run_tests(runners, policy, tests, commission))
    result["threshold_floor"] = policy.floor
    return result, runners


def cwru_crossload(cwru: Path, spec: Any, seed: int) -> dict[str, Any]:
    sets = cwru_sets(cwru, spec)
    normal_train, normal_test = split_normal(sets[0])
    normal_test = MachineSet(normal_test.name, normal_test.z, normal_test.labels,
                             normal_test.t_s, normal_test.commission)
    out = {}
    for train_load, test_load in ((0, 1), (1, 0)):
        train = [normal_train] + [s for s in sets[1:] if cwru_load(Path(s.name)) == train_load]
        tests = [s for s in sets[1:] if cwru_load(Path(s.name)) == test_load] + [normal_test]
        commission = {s.name: sets[0] for s in tests}
        result, runners = train_and_test(train, tests, commission, seed)
        runners.close()
        out[f"train_{train_load}hp_test_{test_load}hp"] = result
    return out


def transfer(cwru: Path, spec: Any, seed: int, n_machines: int) -> dict[str, Any]:
    """Simulator -> every CWRU file, and CWRU -> simulated machines on other bearings."""
    sim_train = sim_sets(random_machines(n_machines, seed, faults=ALL_FAULTS, varied=True), spec,
                         seed=seed)
    cw = cwru_sets(cwru, spec)
    normal_train, normal_test = split_normal(cw[0])
    tests = [*cw[1:], normal_test]
    commission = {s.name: cw[0] for s in tests}
    sim_to_cwru, runners = train_and_test(sim_train, tests, commission, seed)
    parity = parity_of(runners, Policy(sim_to_cwru["threshold_floor"]), tests, commission)
    runners.close()
    machines = random_machines(max(12, n_machines // 3), seed + 100, faults=ALL_FAULTS,
                               bearings=("SKF-6203", "SKF-6204", "FEMTO"),
                               rates_hz=(25_600.0, 48_000.0, 20_000.0, 16_000.0),
                               rpm_range=(900.0, 3000.0))
    sim_test = sim_sets(machines, spec, seed=seed + 100)
    cwru_to_sim, runners = train_and_test([normal_train, *cw[1:]], sim_test, {}, seed)
    runners.close()
    known = {"normal", "inner_race", "outer_race", "ball"}
    cwru_to_sim["on_labels_cwru_has"] = _subset(cwru_to_sim, sim_test, known)
    return {"sim_to_cwru": sim_to_cwru, "cwru_to_sim": cwru_to_sim, "parity": parity}


def _subset(result: dict[str, Any], tests: list[MachineSet], known: set[str]) -> dict[str, Any]:
    per = result["per_label"]
    files = sum(v["files"] for k, v in per.items() if k in known)
    right = sum(v["files_right"] for k, v in per.items() if k in known)
    return {"files": files, "files_right": right,
            "file_accuracy": round(right / files, 4) if files else None}


def parity_of(runners: Runners, policy: Policy, tests: list[MachineSet],
              commission: dict[str, MachineSet]) -> dict[str, Any]:
    """Same device decision (no alert / alert naming a fault / alert with fault unknown)
    from fp32, int8 and TFLite, each with its own commissioning threshold."""
    dec: dict[str, list[npt.NDArray[np.int64]]] = {"fp32": [], "int8": [], "tflite": []}
    for s in tests:
        com = commission.get(s.name, s)
        for name in dec:
            run = getattr(runners, name)
            thr = policy.threshold(run(com.z[com.commission])[0])
            a, p = run(s.z[~s.commission])
            dec[name].append(device_decision(a, p, thr))
    d = {k: np.concatenate(v) for k, v in dec.items()}
    return {"windows": len(d["fp32"]),
            "int8_vs_fp32": round(float(np.mean(d["int8"] == d["fp32"])), 4),
            "tflite_vs_fp32": round(float(np.mean(d["tflite"] == d["fp32"])), 4)}


def run_all(data_dir: Path | None, report: Path, *, quick: bool = False,
            seed: int = 7) -> dict[str, Any]:
    from agent.features import DEFAULT_SPEC
    from models.eval_life import femto_lobo, sim_fleet
    from models.report import write_report

    data = data_dir or SHARED
    if not (data / "cwru").is_dir():
        raise DataError(f"{data} has no cwru/ folder", hint="pass --data-dir ../shared/data")
    n = 24 if quick else 72
    results: dict[str, Any] = {"cwru_crossload": cwru_crossload(data / "cwru", DEFAULT_SPEC,
                                                                 seed)}
    results["transfer"] = transfer(data / "cwru", DEFAULT_SPEC, seed, n)
    if (data / "femto").is_dir():
        results["femto"] = femto_lobo(data / "femto", seed, n)
    results["sim_fleet"] = sim_fleet(seed, n, quick=quick)
    summary = headline(results)
    write_report(report, results, summary)
    SUMMARY.write_text(json.dumps({"headline": summary}, indent=2, sort_keys=True) + "\n")
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True, default=float) + "\n")
    return summary


def headline(r: dict[str, Any]) -> dict[str, Any]:
    cl = r["cwru_crossload"]
    out: dict[str, Any] = {
        "cwru_crossload_files_right": sum(v["files_right"] for v in cl.values()),
        "cwru_crossload_files": sum(v["files"] for v in cl.values()),
        "cwru_crossload_normal_alert_windows": sum(v["normal_alert_windows"]
                                                   for v in cl.values()),
        "sim_to_cwru_file_accuracy": r["transfer"]["sim_to_cwru"]["file_accuracy"],
        "cwru_to_sim_file_accuracy": r["transfer"]["cwru_to_sim"]["file_accuracy"],
        "cwru_to_sim_file_accuracy_cwru_labels":
            r["transfer"]["cwru_to_sim"]["on_labels_cwru_has"]["file_accuracy"],
        "parity_int8_vs_fp32": r["transfer"]["parity"]["int8_vs_fp32"],
        "parity_tflite_vs_fp32": r["transfer"]["parity"]["tflite_vs_fp32"],
    }
    if "femto" in r:
        out.update(r["femto"]["headline"])
    out.update(r["sim_fleet"]["headline"])
    return out
