"""Training sets as per-machine baseline z-scores: simulated fleets and CWRU records."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from foreshock.errors import DataError
from models.datasets import Recording, load
from models.simdata import SimMachine, render, scenario_of
from models.train import MachineSet, features_of, label_index, machine_set

log = logging.getLogger(__name__)

CWRU_NORMAL = "normal_0_97.mat"
#: Windows of a healthy record used as the commissioning baseline; the rest are test normal.
COMMISSION_FRACTION = 0.5


def spec_for(spec: Any, rec: Recording) -> Any:
    """The spec with this machine's bearing (a machine field: the hash does not change)."""
    return dataclasses.replace(spec, bearing=rec.bearing) if rec.bearing else spec


def healthy_and_faulty(name: str, spec: Any, healthy: Recording, faulty: Recording | None,
                       channel: str | None = None) -> MachineSet:
    """Commission on the first part of ``healthy``; z all healthy and faulty windows."""
    sp = spec_for(spec, healthy)
    fh, th = features_of(healthy, sp, channel)
    n_com = max(4, int(len(fh) * COMMISSION_FRACTION))
    commission = np.zeros(len(fh), bool)
    commission[:n_com] = True
    labels = np.zeros(len(fh), np.int64)
    feats, times = [fh], [th]
    if faulty is not None:
        ff, tf = features_of(faulty, spec_for(spec, faulty), channel)
        feats.append(ff)
        times.append(tf + th[-1] + 1.0)
        labels = np.concatenate([labels, np.full(len(ff), label_index(faulty.label))])
        commission = np.concatenate([commission, np.zeros(len(ff), bool)])
    return machine_set(name, sp, np.concatenate(feats), np.concatenate(times), labels,
                       commission)


def sim_sets(machines: list[SimMachine], spec: Any, *, seconds: float = 6.0,
             seed: int = 0) -> list[MachineSet]:
    out = []
    for i, m in enumerate(machines):
        sc = scenario_of(m, seed + i)
        healthy = render(sc, seconds, seed=seed + 2 * i, device_id=m.name, faulty=False)
        faulty = (render(sc, seconds, seed=seed + 2 * i + 1, device_id=m.name)
                  if m.fault != "normal" else None)
        out.append(healthy_and_faulty(m.name, spec, healthy, faulty))
    return out


def cwru_files(data_dir: Path) -> list[Path]:
    files = sorted(Path(data_dir).glob("*.mat"))
    if not any(f.name == CWRU_NORMAL for f in files):
        raise DataError(f"{data_dir}: no {CWRU_NORMAL} (the CWRU healthy baseline)")
    return files


def cwru_sets(data_dir: Path, spec: Any, *, loads: tuple[int, ...] = (0, 1),
              channel: str = "DE") -> list[MachineSet]:
    """One set per fault file, each z-scored against the CWRU healthy record's first half;
    the healthy record itself is one more set (its second half = test normal windows)."""
    files = cwru_files(data_dir)
    normal = load(data_dir / CWRU_NORMAL, channel=channel)
    base = healthy_and_faulty(CWRU_NORMAL, spec, normal, None)
    out = [base]
    for f in files:
        if f.name == CWRU_NORMAL or cwru_load(f) not in loads:
            continue
        rec = load(f, channel=channel)
        out.append(_strip_healthy(healthy_and_faulty(f.name, spec, normal, rec), len(base.z)))
    return out


def cwru_load(path: Path) -> int:
    parts = path.stem.split("_")
    try:
        return int(parts[-2])
    except (IndexError, ValueError):
        return -1


def _strip_healthy(s: MachineSet, n_healthy: int) -> MachineSet:
    """Drop the repeated healthy windows from a CWRU fault set (kept once in the base set)."""
    keep = np.arange(len(s.z)) >= n_healthy
    return MachineSet(s.name, s.z[keep], s.labels[keep], s.t_s[keep], s.commission[keep])
