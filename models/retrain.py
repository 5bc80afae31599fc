"""Retraining from the fleet's labelled feature store (``foreshock model build --from-gateway``).

1. Read the operator labels (one per incident, the latest) with their alerts' baseline z
   (``gateway.feedback``; features, never raw waveforms). ``false_alarm`` rows become
   *normal* windows; ``confirmed`` and ``maintenance_done`` rows become windows of the
   alert's fault (``unknown`` faults count as faulty for the anomaly head only).
2. Hold back every ``holdout_every``-th labelled incident (a stable hash of its id), so the
   current bundle and the candidate are judged on the same unseen feedback.
3. Train a candidate on the shipped training data plus the remaining feedback
   (:func:`models.train.fit_detector`, the same code as the shipped bundle).
4. Set the candidate's anomaly floor: the training rule on its normal windows (shipped data
   and false-alarm labels), but never above the level at which it would fail the fault
   evidence checks of step 5 (flag fewer confirmed labels or detect fewer fault machines
   than the current bundle, or lose more than ``max_recall_drop`` of fault-window recall),
   and never more than
   ``max_floor_ratio`` times above or below the current floor in one retrain. A handful of
   false-alarm labels (which are, by selection, the loudest normal windows) therefore
   cannot lift the threshold over known faults.
5. Judge both bundles, each at its own floor, on the same evidence:

   * the held-back feedback: false alarms still flagged, confirmed alerts still flagged;
   * the fault evidence: every confirmed-fault label (trained on or held back) and the
     fault windows of the shipped/simulated training machines (windows flagged, and
     machines detected by the device's 3-of-5 rule);
   * the normal windows of the training machines (windows flagged).

   The candidate is accepted only if it loses no held-back confirmed detection, no
   confirmed-fault label, no detected fault machine, at most ``max_recall_drop`` of the
   fault-window recall, flags at most ``max_normal_rise`` more normal windows, and flags
   strictly fewer held-back false alarms (or equally few with more detections); only then
   is the signed bundle written.

``models`` may not import ``gateway``: :func:`read_feedback` reads the ``feedback`` table
with plain read-only SQL (SQLite path/url or PostgreSQL url/dsn, as ``open_store``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from foreshock import bundle as fb
from foreshock.errors import ConfigError, DataError
from models.export import LABELS
from models.runtime import OnnxRunner
from models.train import INPUT_FEATURES, Z_CLIP, MachineSet, TrainConfig, fit_detector

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]
FAULTY = ("confirmed", "maintenance_done")


@dataclass(frozen=True)
class Labelled:
    """Feedback as training rows: z over INPUT_FEATURES, label index (-1 faulty, unknown),
    faulty flag, the incident id."""

    z: F32
    labels: npt.NDArray[np.int64]
    faulty: npt.NDArray[np.bool_]
    incidents: tuple[str, ...]

    def take(self, mask: npt.NDArray[np.bool_]) -> Labelled:
        return Labelled(self.z[mask], self.labels[mask], self.faulty[mask],
                        tuple(i for i, m in zip(self.incidents, mask, strict=True) if m))


def read_feedback(db_url: str) -> list[dict[str, Any]]:
    """The latest label per incident with its features, from a gateway store url
    (``sqlite:///path``, a path, or a PostgreSQL url/dsn; read-only)."""
    sql = "SELECT incident, label, fault, features FROM feedback ORDER BY ts, id"
    try:
        if db_url.startswith(("postgresql://", "postgres://")) or "dbname=" in db_url:
            import psycopg

            with psycopg.connect(db_url) as conn:
                rows = conn.execute(sql).fetchall()
        else:
            import sqlite3

            path = db_url.removeprefix("sqlite:///").partition("?")[0]
            if not Path(path).is_file():
                raise ConfigError(f"no gateway store at {path}")
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                rows = conn.execute(sql).fetchall()
    except ConfigError:
        raise
    except Exception as exc:  # sqlite3 / psycopg errors: one line for the user
        raise ConfigError(f"cannot read feedback from {db_url}: {exc}",
                          hint="is it a gateway store of schema version >= 2?") from None
    latest: dict[str, dict[str, Any]] = {}
    for incident, label, fault, features in rows:
        feats = json.loads(features) if isinstance(features, str) else features
        latest[incident] = {"incident": incident, "label": label, "fault": fault,
                            "features": feats}
    return list(latest.values())


def labelled(rows: list[dict[str, Any]]) -> Labelled:
    z = np.zeros((len(rows), len(INPUT_FEATURES)), np.float32)
    labels = np.zeros(len(rows), np.int64)
    faulty = np.zeros(len(rows), bool)
    for i, row in enumerate(rows):
        feats = row["features"] or {}
        z[i] = [float(feats.get(n, 0.0)) for n in INPUT_FEATURES]
        if row["label"] in FAULTY:
            faulty[i] = True
            labels[i] = LABELS.index(row["fault"]) if row["fault"] in LABELS[1:] else -1
    z = np.clip(np.nan_to_num(z), -Z_CLIP, Z_CLIP)
    return Labelled(z, labels, faulty, tuple(r["incident"] for r in rows))


def split(data: Labelled, holdout_every: int) -> tuple[Labelled, Labelled]:
    """(train, held back): an incident is held back when its hash falls in 1/holdout_every."""
    held = np.array([int(hashlib.sha256(i.encode()).hexdigest()[:8], 16) % holdout_every == 0
                     for i in data.incidents], bool)
    return data.take(~held), data.take(held)


def judge(runner: OnnxRunner, floor: float, held: Labelled) -> dict[str, Any]:
    """False alarms and confirmed alerts that still score above the bundle's floor."""
    if held.z.shape[0] == 0:
        return {"false_alarms": 0, "false_alarms_flagged": 0, "confirmed": 0,
                "confirmed_flagged": 0, "floor": floor}
    scores = runner(held.z)[0]
    flagged = scores > floor
    return {"false_alarms": int((~held.faulty).sum()),
            "false_alarms_flagged": int((flagged & ~held.faulty).sum()),
            "confirmed": int(held.faulty.sum()),
            "confirmed_flagged": int((flagged & held.faulty).sum()), "floor": floor}


def better(candidate: dict[str, Any], current: dict[str, Any]) -> bool:
    """The held-back feedback rule: no confirmed detection lost, fewer false alarms (or as
    many with more detections)."""
    lost = candidate["confirmed_flagged"] < current["confirmed_flagged"]
    fewer = candidate["false_alarms_flagged"] < current["false_alarms_flagged"]
    same_more = (candidate["false_alarms_flagged"] == current["false_alarms_flagged"]
                 and candidate["confirmed_flagged"] > current["confirmed_flagged"])
    return not lost and (fewer or same_more)


@dataclass(frozen=True)
class Limits:
    """How far one retrain may move the bundle (module doc, steps 4 and 5)."""

    max_floor_ratio: float = 1.5     # floor within current / r .. current * r
    max_recall_drop: float = 0.02    # fault-window recall may drop at most this much
    max_normal_rise: float = 0.01    # normal windows flagged may rise at most this much
    k: int = 3                       # the device's debounce: k of n windows above
    n: int = 5


@dataclass(frozen=True)
class Evidence:
    """What a candidate must keep detecting (and not start flagging): the training
    machines' fault windows (one array per machine, in time order) and normal windows,
    and every confirmed-fault label."""

    faults: tuple[F32, ...]
    normal: F32
    confirmed: F32

    @classmethod
    def of(cls, sets: list[MachineSet], data: Labelled) -> Evidence:
        faults = tuple(np.clip(s.z[s.labels > 0], -Z_CLIP, Z_CLIP).astype(np.float32)
                       for s in sets if (s.labels > 0).any())
        normal = np.concatenate([s.z[s.labels == 0] for s in sets] or
                                [np.zeros((0, len(INPUT_FEATURES)), np.float32)])
        return cls(faults, np.clip(normal, -Z_CLIP, Z_CLIP).astype(np.float32),
                   data.z[data.faulty])

    def scores(self, runner: OnnxRunner) -> tuple[list[npt.NDArray[np.float32]],
                                                  npt.NDArray[np.float32],
                                                  npt.NDArray[np.float32]]:
        def run(z: F32) -> npt.NDArray[np.float32]:
            return runner(z)[0] if len(z) else np.zeros(0, np.float32)
        return [run(f) for f in self.faults], run(self.normal), run(self.confirmed)


def judge_evidence(scores: tuple[list[npt.NDArray[np.float32]], npt.NDArray[np.float32],
                                 npt.NDArray[np.float32]], floor: float,
                   limits: Limits) -> dict[str, Any]:
    """Fault machines detected (k of n), fault-window recall, confirmed labels flagged and
    normal windows flagged, at ``floor``."""
    from models.policy import first_kofn

    faults, normal, confirmed = scores
    flagged = [f > floor for f in faults]
    windows = sum(len(f) for f in faults)
    return {"fault_machines": len(faults),
            "fault_machines_detected": sum(first_kofn(f, limits.k, limits.n) is not None
                                           for f in flagged),
            "fault_window_recall": round(float(sum(int(f.sum()) for f in flagged))
                                         / max(1, windows), 4),
            "confirmed_labels": len(confirmed),
            "confirmed_labels_flagged": int((confirmed > floor).sum()),
            "normal_windows_flagged": round(float((normal > floor).mean())
                                            if len(normal) else 0.0, 4),
            "floor": floor}


def detecting_floor(scores: npt.NDArray[np.float32], k: int, n: int) -> float:
    """The highest floor at which ``scores`` (one machine, in time order) still raise a
    k-of-n detection: the best k-th largest score of any n consecutive windows."""
    if len(scores) < k:
        return -np.inf
    from numpy.lib.stride_tricks import sliding_window_view

    padded = np.r_[scores, np.full(max(0, n - len(scores)), -np.inf, np.float32)]
    runs = np.sort(sliding_window_view(padded, n), axis=1)[:, n - k]
    return float(runs.max())


def _kth_largest(values: list[float] | npt.NDArray[np.float32], k: int) -> float:
    """The k-th largest value (k >= 1), or +inf when k < 1 (no constraint)."""
    if k < 1:
        return float("inf")
    ordered = np.sort(np.asarray(values, np.float64))[::-1]
    return float(ordered[min(k, len(ordered)) - 1]) if len(ordered) else float("-inf")


def choose_floor(rule_floor: float, current_floor: float,
                 scores: tuple[list[npt.NDArray[np.float32]], npt.NDArray[np.float32],
                               npt.NDArray[np.float32]],
                 current: dict[str, Any], limits: Limits) -> float:
    """The candidate's floor: its training rule, capped at the highest floor at which it
    still passes the fault-evidence checks of :func:`refusal` (as many confirmed labels
    flagged and fault machines detected as the current bundle, fault-window recall at most
    ``max_recall_drop`` lower); within ``max_floor_ratio`` of the current floor."""
    faults, _, confirmed = scores
    floor = rule_floor
    windows = np.concatenate(faults) if faults else np.zeros(0, np.float32)
    recall = max(0.0, float(current["fault_window_recall"]) - limits.max_recall_drop)
    keep = int(np.ceil(recall * len(windows) - 1e-9))
    floor = min(floor, _kth_largest(windows, keep),
                _kth_largest([detecting_floor(f, limits.k, limits.n) for f in faults],
                             int(current["fault_machines_detected"])),
                _kth_largest(confirmed, int(current["confirmed_labels_flagged"])))
    floor -= 1e-4     # flagged means strictly above
    floor = min(max(floor, current_floor / limits.max_floor_ratio),
                current_floor * limits.max_floor_ratio)
    return round(float(floor), 4)


def refusal(held_cand: dict[str, Any], held_cur: dict[str, Any], ev_cand: dict[str, Any],
            ev_cur: dict[str, Any], limits: Limits) -> str:
    """Why the candidate may not replace the current bundle ('' when it may)."""
    if ev_cand["fault_machines_detected"] < ev_cur["fault_machines_detected"]:
        return (f"it detects {ev_cand['fault_machines_detected']} of "
                f"{ev_cand['fault_machines']} known fault machines, the current bundle "
                f"{ev_cur['fault_machines_detected']}")
    if ev_cand["confirmed_labels_flagged"] < ev_cur["confirmed_labels_flagged"]:
        return (f"it flags {ev_cand['confirmed_labels_flagged']} of "
                f"{ev_cand['confirmed_labels']} confirmed-fault labels, the current bundle "
                f"{ev_cur['confirmed_labels_flagged']}")
    if ev_cand["fault_window_recall"] < ev_cur["fault_window_recall"] - limits.max_recall_drop:
        return (f"its fault-window recall {ev_cand['fault_window_recall']:.1%} is below the "
                f"current {ev_cur['fault_window_recall']:.1%}")
    if ev_cand["normal_windows_flagged"] > ev_cur["normal_windows_flagged"] + \
            limits.max_normal_rise:
        return (f"it flags {ev_cand['normal_windows_flagged']:.1%} of normal training "
                f"windows, the current bundle {ev_cur['normal_windows_flagged']:.1%}")
    if not better(held_cand, held_cur):
        return "it is not better on the held-back feedback"
    return ""


def feedback_set(train: Labelled) -> MachineSet:
    """Feedback rows as one training machine (faulty rows with unknown fault: label -1 is
    dropped by the classifier; they still count through their neighbours' normal rows)."""
    labels = np.where(train.faulty, train.labels, 0).astype(np.int64)
    return MachineSet("fleet-feedback", train.z, labels, np.arange(len(labels), dtype=float),
                      ~train.faulty)


def bundle_runner(bundle: Path) -> tuple[OnnxRunner, float, dict[str, Any]]:
    manifest = json.loads((bundle / fb.MANIFEST).read_text())
    det = manifest["models"]["detector"]
    if list(det["input_features"]) != list(INPUT_FEATURES):
        raise ConfigError(f"{bundle}: its input features differ from this trainer's")
    floor = float(manifest["thresholds"]["anomaly"]["value"])
    return OnnxRunner(bundle / det["file"]), floor, manifest


def next_version(version: str) -> str:
    major, minor, patch = fb.parse_semver(version)
    return f"{major}.{minor}.{patch + 1}"


@dataclass(frozen=True)
class RetrainResult:
    """``current``/``candidate``: their judgement on the held-back feedback;
    ``evidence``: both on the fault and normal evidence; ``reason``: why refused ('')."""

    accepted: bool
    current: dict[str, Any]
    candidate: dict[str, Any]
    train_feedback: int
    held_feedback: int
    out: Path | None
    evidence: dict[str, dict[str, Any]]
    reason: str = ""


def retrain(db_url: str, current: Path, out: Path, key: Path, *, sets: list[MachineSet],
            spec: Any, seed: int = 7, holdout_every: int = 3,
            rows: list[dict[str, Any]] | None = None,
            limits: Limits | None = None) -> RetrainResult:
    """Train, judge against ``current`` on held-back feedback and on the fault evidence,
    write ``out`` only if the candidate is better and loses no detection."""
    from models.build import BundleInfo, write_bundle

    limits = limits or Limits()
    rows_ = rows if rows is not None else read_feedback(db_url)
    data = labelled(rows_)
    if data.z.shape[0] < 2:
        raise DataError(f"{db_url}: {data.z.shape[0]} labelled alerts; need at least 2")
    train, held = split(data, holdout_every)
    cur_runner, cur_floor, manifest = bundle_runner(current)
    baseline = judge(cur_runner, cur_floor, held)
    evidence = Evidence.of(sets, data)
    cur_scores = evidence.scores(cur_runner)
    ev_current = judge_evidence(cur_scores, cur_floor, limits)
    train_sets = [*sets, feedback_set(train)]
    weights = fit_detector(train_sets, TrainConfig(seed=seed))
    staging = out.with_name(out.name + ".candidate")
    info = BundleInfo(manifest["name"], next_version(manifest["version"]),
                      f"{manifest.get('description', '')} Retrained with fleet feedback.")
    metrics: dict[str, Any] = {"feedback": {"train": int(train.z.shape[0]),
                                            "held_back": int(held.z.shape[0]),
                                            "current": baseline}}
    cand_manifest = write_bundle(staging, weights, spec, train_sets, info, metrics, None,
                                 training={"from_gateway": True,
                                           "feedback_incidents": len(rows_)}, seed=seed)
    cand_runner = OnnxRunner(staging / cand_manifest["models"]["detector"]["file"])
    rule_floor = float(cand_manifest["thresholds"]["anomaly"]["value"])
    ev_scores = evidence.scores(cand_runner)
    cand_floor = choose_floor(rule_floor, cur_floor, ev_scores, ev_current, limits)
    candidate = judge(cand_runner, cand_floor, held)
    ev_candidate = {**judge_evidence(ev_scores, cand_floor, limits), "rule_floor": rule_floor}
    reason = refusal(candidate, baseline, ev_candidate, ev_current, limits)
    both = {"current": ev_current, "candidate": ev_candidate}
    if not reason:
        metrics["feedback"]["candidate"] = candidate
        metrics["fault_evidence"] = both
        cand_manifest["metrics"] = metrics
        _keep_policy(cand_manifest, manifest)
        _set_floor(cand_manifest, cand_floor)
        fb.write_manifest(staging, cand_manifest)
        fb.sign(staging, fb.load_private_key(key))
        _remove(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(out)
    else:
        log.warning("candidate refused: %s", reason)
        _remove(staging)
    return RetrainResult(not reason, baseline, candidate, int(train.z.shape[0]),
                         int(held.z.shape[0]), None if reason else out, both, reason)


def _keep_policy(candidate: dict[str, Any], current: dict[str, Any]) -> None:
    """The candidate decides by the current bundle's policy (commissioning rule, debounce,
    fault probability; ``models.policy.Policy.bundle_thresholds``): only its floor moves."""
    import copy

    table = current.get("thresholds")
    if isinstance(table, dict) and isinstance(table.get("anomaly"), dict):
        candidate["thresholds"] = copy.deepcopy(table)


def _set_floor(manifest: dict[str, Any], floor: float) -> None:
    anomaly = manifest["thresholds"]["anomaly"]
    anomaly["value"] = floor
    if isinstance(anomaly.get("adapt"), dict) and "floor" in anomaly["adapt"]:
        anomaly["adapt"]["floor"] = floor


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
