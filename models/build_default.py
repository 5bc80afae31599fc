"""Rebuild the default bundle with one seeded command::

    python -m models.build_default [--out DIR] [--key PATH] [--reduced]
    foreshock model build --default

Training data: a seeded simulated fleet (firmware_sim: several bearings, speeds, sample
rates, resonances, every fault label) plus the CWRU records in ``../shared/data/cwru`` when
present. Signing: ``--key`` or ``$FORESHOCK_MODEL_KEY``, else a development key generated
once at ``~/.config/foreshock/model-dev.key`` (outside the repository; only its public half
is committed, as ``models/bundles/foreshock-dev.pub``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.build import BundleInfo, ensure_key, public_of, write_bundle
from models.simdata import random_machines
from models.train import TrainConfig, fit_detector
from models.trainsets import cwru_sets, sim_sets

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = Path(__file__).resolve().parent / "bundles"
DEFAULT_NAME = "foreshock-default"
DEFAULT_VERSION = "0.1.1"
DEV_PUBLIC_KEY = BUNDLES / "foreshock-dev.pub"
SHARED_DATA = ROOT.parent / "shared" / "data"
DEV_KEY = Path.home() / ".config" / "foreshock" / "model-dev.key"
#: Fixed creation time so a rebuild with the same seed gives the same manifest.
CREATED = "2026-11-27T00:00:00+00:00"


@dataclass(frozen=True)
class DefaultBuild:
    seed: int = 7
    sim_machines: int = 72
    sim_seconds: float = 6.0
    reduced: bool = False  # fewer simulated machines, for fast tests

    @property
    def n_machines(self) -> int:
        return 18 if self.reduced else self.sim_machines


def default_key() -> Path:
    env = os.environ.get("FORESHOCK_MODEL_KEY")
    return Path(env) if env else DEV_KEY


def training_sets(cfg: DefaultBuild, spec: Any, data_dir: Path | None) -> tuple[list[Any],
                                                                                  dict[str, Any]]:
    machines = random_machines(cfg.n_machines, cfg.seed,
                               faults=("normal", "inner_race", "outer_race", "ball",
                                       "imbalance", "misalignment"), varied=True)
    sets = sim_sets(machines, spec, seconds=cfg.sim_seconds, seed=cfg.seed)
    info: dict[str, Any] = {"seed": cfg.seed, "sim_machines": len(machines),
                            "sim_seconds_per_recording": cfg.sim_seconds,
                            "sources": ["firmware_sim"]}
    cwru = (data_dir or SHARED_DATA) / "cwru"
    if cwru.is_dir():
        sets += cwru_sets(cwru, spec)
        info["sources"].append("cwru (0 and 1 hp, drive end)")
    return sets, info


def build_default(out: Path | None = None, key: Path | None = None,
                  cfg: DefaultBuild = DefaultBuild(), data_dir: Path | None = None,
                  version: str = DEFAULT_VERSION) -> tuple[Path, dict[str, Any]]:
    from agent.features import DEFAULT_SPEC

    np.random.seed(cfg.seed)
    out = out or BUNDLES / DEFAULT_NAME / version
    key = ensure_key(key or default_key())
    sets, info = training_sets(cfg, DEFAULT_SPEC, data_dir)
    weights = fit_detector(sets, TrainConfig(seed=cfg.seed))
    from models.metrics import quick_metrics

    metrics = quick_metrics(weights, sets)
    metrics.update(evaluation_headline())
    manifest = write_bundle(out, weights, DEFAULT_SPEC, sets,
                            BundleInfo(DEFAULT_NAME, version, "Default detector: machine-"
                                       "baseline anomaly score and fault classifier on "
                                       "speed-normalised features", CREATED),
                            metrics, key, training=info, seed=cfg.seed)
    in_repo = BUNDLES in out.resolve().parents
    pub = DEV_PUBLIC_KEY if in_repo else out.resolve().parent / "signing.pub"
    pub.write_bytes(public_of(key))
    return out, manifest


def evaluation_headline() -> dict[str, Any]:
    """Headline of the last ``foreshock model evaluate`` (models/evaluation_summary.json)."""
    from models.evaluate import SUMMARY

    if not SUMMARY.is_file():
        return {}
    try:
        return {"evaluation": json.loads(SUMMARY.read_text())["headline"],
                "evaluation_report": "docs/evaluation.md"}
    except (ValueError, KeyError):
        return {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild the default Foreshock model bundle.")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--key", type=Path, default=None)
    parser.add_argument("--reduced", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out, manifest = build_default(args.out, args.key, DefaultBuild(reduced=args.reduced),
                                  args.data_dir)
    print(f"built {out}: {manifest['metrics']}")


if __name__ == "__main__":
    main()
