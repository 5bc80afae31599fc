"""Validate the feature engine on real bearing data and write docs/validation.md's block.

Run: python scripts/validate_features.py [--data ../shared/data] [--doc docs/validation.md]

CWRU: every drive-end record, resampled to DEFAULT_SPEC's rate, cut into windows with the
spec's overlap, the in-file RPM. Per window, the defect family whose envelope score (mean SNR
of harmonics 1-3: env_bpfo_harm_snr, env_bpfi_harm_snr, env_2bsf_harm_snr) is largest; per
record, the family with the largest median score. FEMTO: SNAPSHOT_SPEC on every horizontal
snapshot; a small plot-ready CSV per bearing in docs/femto/ and the monotonicity of each
candidate health indicator. Rewrites only the block between the features markers.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import scipy.stats

from agent.features import DEFAULT_SPEC, SNAPSHOT_SPEC, FeatureSpec, extract, resample

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {"OR": "env_bpfo_harm_snr", "IR": "env_bpfi_harm_snr", "B": "env_2bsf_harm_snr"}
FAULT_NAMES = {"IR": "inner race (BPFI)", "OR": "outer race @6 (BPFO)", "B": "ball (2xBSF)"}
BEGIN, END = "<!-- BEGIN features -->", "<!-- END features -->"
COMMAND = "python scripts/validate_features.py"


@dataclass(frozen=True)
class CwruResult:
    record: str
    fault: str
    size_in: str
    load_hp: int
    rpm: float
    windows: int
    window_hits: int
    file_pick: str
    medians: dict[str, float]


def windows_of(x: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    n = spec.window_samples
    count = (x.size - n) // spec.hop_samples + 1
    view = np.lib.stride_tricks.sliding_window_view(x, n)[:: spec.hop_samples][:count]
    return np.ascontiguousarray(view, dtype=np.float32)


def load_cwru(path: Path) -> tuple[np.ndarray, float, float]:
    mat = scipy.io.loadmat(str(path))
    key = next(k for k in mat if k.endswith("_DE_time"))
    rpm_keys = [k for k in mat if k.endswith("RPM")]
    rpm = float(np.ravel(mat[rpm_keys[0]])[0]) if rpm_keys else 1797.0
    signal = np.ravel(mat[key]).astype(np.float64)
    rate_hz = 48000.0 if path.name.startswith("normal") else 12000.0
    return signal, rate_hz, rpm


def cwru_record(path: Path, spec: FeatureSpec) -> CwruResult | None:
    match = re.search(r"_(IR|OR|B)(\d{3})(?:@\d+)?_(\d)_(\d+)\.mat$", path.name)
    if not match:
        return None
    fault, size, load, record = match.groups()
    signal, rate_hz, rpm = load_cwru(path)
    feats = extract(spec, windows_of(resample(signal, rate_hz, spec.sample_rate_hz), spec), rpm)
    cols = spec.index([FAMILIES[f] for f in FAMILIES])
    scores = feats[:, cols]
    picks = np.array(list(FAMILIES))[np.argmax(scores, axis=1)]
    medians = dict(zip(FAMILIES, np.median(scores, axis=0).tolist(), strict=True))
    return CwruResult(record, fault, f"0.{size}", int(load), rpm, len(picks),
                      int((picks == fault).sum()), max(medians, key=lambda k: medians[k]),
                      medians)


def cwru_results(data: Path, spec: FeatureSpec) -> list[CwruResult]:
    results = [cwru_record(p, spec) for p in sorted((data / "cwru").glob("*.mat"))]
    return [r for r in results if r is not None]


def cwru_table(results: list[CwruResult]) -> list[str]:
    """Per fault type and load: windows and records where the labelled family is strongest."""
    lines = ["| fault | load (hp) | records | windows: labelled family strongest | "
             "records: labelled family strongest (median) |", "|---|---|---|---|---|"]
    total_w = total_hit = total_files = total_ok = 0
    for fault in ("IR", "OR", "B"):
        for load in sorted({r.load_hp for r in results}):
            rows = [r for r in results if r.fault == fault and r.load_hp == load]
            if not rows:
                continue
            wins = sum(r.windows for r in rows)
            hits = sum(r.window_hits for r in rows)
            ok = sum(r.file_pick == fault for r in rows)
            total_w, total_hit = total_w + wins, total_hit + hits
            total_files, total_ok = total_files + len(rows), total_ok + ok
            lines.append(f"| {FAULT_NAMES[fault]} | {load} | "
                         f"{', '.join(r.record for r in rows)} | {hits}/{wins} "
                         f"({100 * hits / wins:.0f} %) | {ok}/{len(rows)} |")
    lines.append(f"| **all** | | | {total_hit}/{total_w} ({100 * total_hit / total_w:.0f} %) | "
                 f"{total_ok}/{total_files} |")
    return lines


def cwru_detail(results: list[CwruResult]) -> list[str]:
    lines = ["| record | fault | size (in) | load (hp) | rpm | BPFO score | BPFI score | "
             "2xBSF score | pick |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = r.medians
        lines.append(f"| {r.record} | {r.fault} | {r.size_in} | {r.load_hp} | {r.rpm:.0f} | "
                     f"{m['OR']:.2f} | {m['IR']:.2f} | {m['B']:.2f} | {r.file_pick} |")
    return lines


def normal_scores(data: Path, spec: FeatureSpec) -> str:
    path = data / "cwru" / "normal_0_97.mat"
    if not path.exists():
        return "normal_0_97.mat not found."
    signal, rate_hz, rpm = load_cwru(path)
    feats = extract(spec, windows_of(resample(signal, rate_hz, spec.sample_rate_hz), spec), rpm)
    parts = []
    for fault, name in FAMILIES.items():
        col = feats[:, spec.index([name])[0]]
        parts.append(f"{fault} median {np.median(col):.2f} (95th pct {np.percentile(col, 95):.2f})")
    return (f"Healthy record 97 (48 kHz resampled to {spec.sample_rate_hz:g} Hz, "
            f"{feats.shape[0]} windows): " + "; ".join(parts) + ".")


FEMTO_RPM = {"1": 1800.0, "2": 1650.0, "3": 1500.0}
FEMTO_COLUMNS = ("rms_g", "peak_g", "kurtosis", "crest_factor", "vel_rms_mm_s",
                 "spectral_centroid_hz", "env_band_kurtosis", "env_bpfo_harm_snr",
                 "env_bpfi_harm_snr", "env_2bsf_harm_snr", "env_ftf_harm_snr")
FEMTO_GROUPS = 100


def monotonicity(series: np.ndarray) -> float:
    """|#rises - #falls| / (n - 1): 1 for a monotonic series, near 0 for noise."""
    steps = np.sign(np.diff(series))
    return float(abs(steps.sum()) / max(1, steps.size))


def trend(series: np.ndarray) -> float:
    """Spearman rank correlation with time; 0 for a constant series."""
    if np.ptp(series) == 0:
        return 0.0
    return float(scipy.stats.spearmanr(np.arange(series.size), series)[0])


def femto_bearing(path: Path, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """Group medians (FEMTO_GROUPS x features) over life, and group mid-times in seconds."""
    data = np.load(path)
    horizontal = data["acc_mg"][:, :, 0].astype(np.float32) / 1000.0
    rate_hz = float(data["sample_rate_hz"])
    windows = resample(horizontal, rate_hz, spec.sample_rate_hz)
    rpm = FEMTO_RPM[path.stem.removeprefix("Bearing")[0]]
    feats = extract(spec, windows, rpm)
    groups = np.array_split(np.arange(feats.shape[0]), min(FEMTO_GROUPS, feats.shape[0]))
    medians = np.stack([np.median(feats[g], axis=0) for g in groups])
    times = np.array([float(np.mean(data["t_s"][g])) for g in groups])
    return medians, times


def femto_section(data: Path, spec: FeatureSpec, out_dir: Path) -> list[str]:
    paths = sorted((data / "femto").glob("Bearing*.npz"))
    if not paths:
        return ["FEMTO data not found."]
    out_dir.mkdir(parents=True, exist_ok=True)
    mono: dict[str, list[float]] = {name: [] for name in spec.feature_names}
    rho: dict[str, list[float]] = {name: [] for name in spec.feature_names}
    for path in paths:
        medians, times = femto_bearing(path, spec)
        cols = spec.index(list(FEMTO_COLUMNS))
        life = times / times[-1]
        table = np.column_stack([times, life, medians[:, cols]])
        header = "t_s,life_fraction," + ",".join(FEMTO_COLUMNS)
        np.savetxt(out_dir / f"{path.stem}.csv", table, delimiter=",", header=header,
                   comments="", fmt="%.5g")
        for i, name in enumerate(spec.feature_names):
            mono[name].append(monotonicity(medians[:, i]))
            rho[name].append(trend(medians[:, i]))
    ranked = sorted(mono, key=lambda n: -float(np.mean(rho[n])))
    lines = ["| feature | " + " | ".join(f"{p.stem} rho / mono" for p in paths)
             + " | mean rho | mean mono |", "|---|" + "---|" * (len(paths) + 2)]
    for name in ranked[:10]:
        cells = [f"{r:+.2f} / {m:.2f}" for r, m in zip(rho[name], mono[name], strict=True)]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | **{np.mean(rho[name]):+.2f}** | {np.mean(mono[name]):.2f} |")
    best = ranked[0]
    lines += ["", f"Best single health indicator by mean trend (Spearman rho with time, "
              f"same sign on every bearing wanted): `{best}` (rho {np.mean(rho[best]):+.2f}, "
              f"monotonicity {np.mean(mono[best]):.2f}). For reference `rms_g`: rho "
              f"{np.mean(rho['rms_g']):+.2f}, monotonicity {np.mean(mono['rms_g']):.2f}; "
              f"`kurtosis`: rho {np.mean(rho['kurtosis']):+.2f}, monotonicity "
              f"{np.mean(mono['kurtosis']):.2f}."]
    return lines


def cwru_section(data: Path, spec: FeatureSpec) -> list[str]:
    results = cwru_results(data, spec)
    return [
        "### CWRU drive end: envelope analysis at the labelled defect frequency", "",
        f"Spec `DEFAULT_SPEC` (hash `{spec.hash}`): records resampled to "
        f"{spec.sample_rate_hz:g} Hz, windows of {spec.window_samples} samples "
        f"({spec.window_s:.2f} s) with {spec.overlap:.0%} overlap, envelope band chosen per "
        "window by spectral kurtosis, in-file RPM, bearing SKF-6205. A family's score is the "
        "mean noise-floor-normalised envelope amplitude (SNR) of its first three harmonics "
        "(`env_bpfo_harm_snr`, `env_bpfi_harm_snr`, `env_2bsf_harm_snr`); the labelled family "
        "is counted right when its score is the largest of the three.", "",
        *cwru_table(results), "",
        *cwru_detail(results), "",
        normal_scores(data, spec), "",
        "Reading: every inner-race record picks BPFI (record 169 on about half its windows). "
        "Outer-race 0.007 and 0.021 in pick BPFO on (nearly) every window; the two 0.014 in "
        "outer-race records (197, 198) show no BPFO "
        "family above the floor (the published CWRU benchmark, Smith and Randall 2015, also "
        "finds these records hard). Ball faults are mostly not diagnosable by the envelope "
        "spectrum on this rig, as known: 2xBSF wins on a minority of windows. On this "
        "bearing 3 x BPFO (10.75 x) and 2 x BPFI (10.83 x) fall within one bin, so inner-race "
        "records also lift the BPFO score.", ""]


def render(data: Path, femto_dir: Path) -> str:
    lines = [
        "## Feature engine (`agent.features`)", "",
        f"Generated by `{COMMAND}` (data from `../shared/data`).", "",
        *cwru_section(data, DEFAULT_SPEC),
        "### FEMTO (PRONOSTIA) run to failure: health indicators over life", "",
        f"Spec `SNAPSHOT_SPEC` (hash `{SNAPSHOT_SPEC.hash}`): one 0.1 s horizontal snapshot "
        f"= one window of {SNAPSHOT_SPEC.window_samples} samples at "
        f"{SNAPSHOT_SPEC.sample_rate_hz:g} Hz, bearing FEMTO. Each life is cut into "
        f"{FEMTO_GROUPS} equal groups of snapshots; plot-ready group medians are in "
        "`docs/femto/Bearing*.csv` (columns: t_s, life_fraction, "
        + ", ".join(FEMTO_COLUMNS) + "). Monotonicity = |rises - falls| / (steps) of the "
        "group medians (1 = monotonic); rho = Spearman rank correlation of the group medians "
        "with time (1 = always rising). Top features by mean rho:", "",
        *femto_section(data, SNAPSHOT_SPEC, femto_dir),
    ]
    return "\n".join(lines)


def write_block(doc: Path, body: str) -> None:
    text = doc.read_text() if doc.exists() else f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Validate features on CWRU and FEMTO data.")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "validation.md")
    parser.add_argument("--femto-dir", type=Path, default=ROOT / "docs" / "femto")
    args = parser.parse_args(argv)
    if not (args.data / "cwru").is_dir():
        print(f"error: no CWRU data under {args.data}; pass --data", file=sys.stderr)
        return 2
    body = render(args.data, args.femto_dir)
    write_block(args.doc, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
