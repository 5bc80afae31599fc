"""Section 3: FEMTO run-to-failure bearings, adaptation on vs off, leave one bearing out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agent.features import SNAPSHOT_SPEC
from models.runtime import OnnxRunner
from models.train import features_of

from .common import HOUR_S, Streamer

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

