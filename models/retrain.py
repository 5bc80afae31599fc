"""Retraining from the fleet's labelled feature store (``foreshock model build --from-gateway``).

1. Read the operator labels (one per incident, the latest) with their alerts' baseline z
   (``gateway.feedback``; features, never raw waveforms). ``false_alarm`` rows become
   *normal* windows; ``confirmed`` and ``maintenance_done`` rows become windows of the
   alert's fault (``unknown`` faults count as faulty for the anomaly head only).
2. Hold back every ``holdout_every``-th labelled incident (a stable hash of its id), so the
   current bundle and the candidate are judged on the same unseen feedback.
3. Train a candidate on the shipped training data plus the remaining feedback
   (:func:`models.train.fit_detector`, the same code as the shipped bundle).
4. Judge both on the held-back feedback with each bundle's own anomaly floor: false alarms
   still flagged, confirmed alerts still flagged. The candidate is accepted only if it flags
   no more false alarms, loses no confirmed detection, and flags strictly fewer false alarms
   (or equally few with more detections); only then is the signed bundle written.

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
    lost = candidate["confirmed_flagged"] < current["confirmed_flagged"]
    fewer = candidate["false_alarms_flagged"] < current["false_alarms_flagged"]
    same_more = (candidate["false_alarms_flagged"] == current["false_alarms_flagged"]
                 and candidate["confirmed_flagged"] > current["confirmed_flagged"])
    return not lost and (fewer or same_more)


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
    accepted: bool
    current: dict[str, Any]
    candidate: dict[str, Any]
    train_feedback: int
    held_feedback: int
    out: Path | None


def retrain(db_url: str, current: Path, out: Path, key: Path, *, sets: list[MachineSet],
            spec: Any, seed: int = 7, holdout_every: int = 3,
            rows: list[dict[str, Any]] | None = None) -> RetrainResult:
    """Train, judge against ``current`` on held-back feedback, write ``out`` only if better."""
    from models.build import BundleInfo, write_bundle

    rows_ = rows if rows is not None else read_feedback(db_url)
    data = labelled(rows_)
    if data.z.shape[0] < 2:
        raise DataError(f"{db_url}: {data.z.shape[0]} labelled alerts; need at least 2")
    train, held = split(data, holdout_every)
    cur_runner, cur_floor, manifest = bundle_runner(current)
    baseline = judge(cur_runner, cur_floor, held)
    weights = fit_detector([*sets, feedback_set(train)], TrainConfig(seed=seed))
    staging = out.with_name(out.name + ".candidate")
    info = BundleInfo(manifest["name"], next_version(manifest["version"]),
                      f"{manifest.get('description', '')} Retrained with fleet feedback.")
    metrics = {"feedback": {"train": int(train.z.shape[0]), "held_back": int(held.z.shape[0]),
                            "current": baseline}}
    cand_manifest = write_bundle(staging, weights, spec, [*sets, feedback_set(train)], info,
                                 metrics, key, training={"from_gateway": True,
                                                         "feedback_incidents": len(rows_)},
                                 seed=seed)
    cand_floor = float(cand_manifest["thresholds"]["anomaly"]["value"])
    candidate = judge(OnnxRunner(staging / cand_manifest["models"]["detector"]["file"]),
                      cand_floor, held)
    accepted = better(candidate, baseline)
    if accepted:
        metrics["feedback"]["candidate"] = candidate
        cand_manifest["metrics"] = metrics
        fb.write_manifest(staging, cand_manifest)
        fb.sign(staging, fb.load_private_key(key))
        _remove(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(out)
    else:
        _remove(staging)
    return RetrainResult(accepted, baseline, candidate, int(train.z.shape[0]),
                         int(held.z.shape[0]), out if accepted else None)


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
