"""docs/evaluation.md from the evaluation results (models.evaluate.run_all)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.export import LABELS

TARGETS = ("Targets (issue 5): CWRU cross-load: every file right, zero alerts on the healthy "
           "record. Transfer both ways: at least 90 % of files right. FEMTO learning set: an "
           "alert before failure on every bearing, no first-half alert on at least 5 of 6, and "
           "at least 10 minutes of clean warning on at least 4 of 6.")


def _confusion(m: list[list[int]]) -> list[str]:
    short = ["normal", "inner", "outer", "ball", "imbal.", "misal."]
    lines = ["| true \\ predicted | " + " | ".join(short) + " |",
             "|---" * (len(short) + 1) + "|"]
    lines += [f"| {short[i]} | " + " | ".join(str(v) for v in row) + " |"
              for i, row in enumerate(m) if sum(row)]
    return lines


def _classification(title: str, r: dict[str, Any]) -> list[str]:
    out = [f"### {title}", "",
           f"Files right: **{r['files_right']} / {r['files']}** ({r['file_accuracy']:.1%}); "
           f"windows right: {r['window_accuracy']:.1%}; anomaly threshold floor "
           f"{r['threshold_floor']}; healthy-record windows in a debounced alert: "
           f"{r['normal_alert_windows']} of {r['normal_windows']}.", "",
           "| label | files | files right | window accuracy |", "|---|---|---|---|"]
    out += [f"| {k} | {v['files']} | {v['files_right']} | {v['window_accuracy']:.1%} |"
            for k, v in r["per_label"].items()]
    out += ["", "Window confusion matrix:", "", *_confusion(r["confusion_windows"]), ""]
    if r["wrong_files"]:
        out += ["Wrong files: " + "; ".join(r["wrong_files"]), ""]
    return out


def _fmt_s(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f}"


def _femto(f: dict[str, Any]) -> list[str]:
    rows = f["bearings"]
    out = []
    if rows and "design" in rows[0]:
        out += ["Also chosen on the other five bearings: the anomaly head (the learned share "
                "of its weights; 0 = the physics prior alone, uniform over the damage "
                "features) and the channels streamed (one agent stream each; an incident on "
                "any is an alert). Score peaks: the highest score held k of n windows in the "
                "first half of life and in the clean-warning window (second half, >= 10 min "
                "before the end); a clean warning needs a threshold between the two.", ""]
    out += ["| bearing | life s | head share, channels | policy (quantile, factor, margin, k/n) "
            "| model first alert s | model lead s | first half? | score peaks first half / "
            "warning window | RMS rule first alert s | RMS lead s | first half? |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, b, p = r["model"], r["rms_rule"], r["policy"]
        d = r.get("design")
        design = "—" if d is None else (f"{d['anomaly_share']:g}, "
                                        + "+".join(c[0].upper() for c in d["channels"]))
        pk = r.get("score_peaks")
        peaks = "—" if pk is None else f"{_fmt_f(pk['first_half'])} / " \
                                        f"{_fmt_f(pk['warning_window'])}"
        out.append(f"| {r['bearing']} | {r['life_s']:.0f} | {design} | {p['quantile']}, "
                   f"{p['factor']}, {p['margin']}, {p['k']}/{p['n']} "
                   f"| {_fmt_s(m['first_alert_s'])} | {_fmt_s(m['lead_s'])} | "
                   f"{'yes' if m['first_half_alert'] else 'no'} | {peaks} | "
                   f"{_fmt_s(b['first_alert_s'])} | {_fmt_s(b['lead_s'])} | "
                   f"{'yes' if b['first_half_alert'] else 'no'} |")
    h = f["headline"]
    n = h.get("femto_bearings", len(rows))
    out += ["", "| | alert before failure | no first-half alert | >= 10 min clean warning |",
            "|---|---|---|---|"]
    for key, name in (("model", "detector (int8)"), ("rms_rule", "day-one RMS rule")):
        out.append(f"| {name} | {h[f'femto_{key}_alert_before_failure']} / {n} | "
                   f"{h[f'femto_{key}_no_first_half_alert']} / {n} | "
                   f"{h[f'femto_{key}_clean_warning_10min']} / {n} |")
    return out


def _fmt_f(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def _fleet(f: dict[str, Any]) -> list[str]:
    out = ["| machine | bearing | rpm | rate Hz | fault | first alert s | lead s | "
           "alert before onset | fault named |", "|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['machine']} | {r['bearing']} | {r['rpm']} | {r['sample_rate_hz']:.0f} | "
            f"{r['fault']} | {_fmt_s(r['first_alert_s'])} | {_fmt_s(r['lead_s'])} | "
            f"{'yes' if r['alert_before_onset'] else 'no'} | {r['fault_named'] or '—'} |"
            for r in f["machines"]]
    return out


def _transfer(t: dict[str, Any]) -> list[str]:
    lines = ["## Transfer", "", "Train on simulated machines only (firmware_sim: SKF-6205, "
              "6203, 6204 and FEMTO geometries, 600-3600 rpm, 12-48 kHz, defect modulation, "
              "amplitude spread and slip drawn per machine), test on every CWRU file; train "
              "on CWRU only, test on simulated machines with other bearings, speeds and "
              "sample rates (seed 107; the classifier's prior strength was chosen without "
              "them, `python -m models.select`).", ""]
    lines += _classification("simulator -> CWRU", t["sim_to_cwru"])
    lines += _classification("CWRU -> simulated machines", t["cwru_to_sim"])
    c = t["cwru_to_sim"]["on_labels_cwru_has"]
    lines += [f"On the labels CWRU has (normal, inner, outer, ball): {c['files_right']} / "
              f"{c['files']} files right. CWRU has no imbalance or misalignment records: a "
              "CWRU-only model names those from the classifier's physics prior (1x, 2x "
              "orders; docs/models.md), never from CWRU data.", "",
              "### Decision parity (simulator-trained model on the CWRU windows)", "",
              f"{t['parity']['windows']} windows: int8 vs fp32 same decision "
              f"{t['parity']['int8_vs_fp32']:.2%}, TFLite vs fp32 "
              f"{t['parity']['tflite_vs_fp32']:.2%} (decision = what the device reports: no "
              "alert, alert naming a fault, or alert with the fault unknown when no fault "
              "reaches probability 0.5; each runtime with its own commissioning threshold).",
              ""]
    return lines


def verdicts(h: dict[str, Any]) -> list[str]:
    """Each target of the issue, met or not, from the headline figures."""
    def mark(ok: bool) -> str:
        return "met" if ok else "**not met**"

    n = h.get("femto_bearings", 0)
    rows = [
        ("CWRU cross-load: every file right",
         f"{h['cwru_crossload_files_right']} / {h['cwru_crossload_files']}",
         h["cwru_crossload_files_right"] == h["cwru_crossload_files"]),
        ("CWRU cross-load: no alert on the healthy record",
         f"{h['cwru_crossload_normal_alert_windows']} alert windows",
         h["cwru_crossload_normal_alert_windows"] == 0),
        ("Transfer simulator -> CWRU: >= 90 % of files", f"{h['sim_to_cwru_file_accuracy']:.0%}",
         h["sim_to_cwru_file_accuracy"] >= 0.9),
        ("Transfer CWRU -> simulated machines: >= 90 % of files",
         f"{h['cwru_to_sim_file_accuracy']:.0%} (labels CWRU has: "
         f"{h['cwru_to_sim_file_accuracy_cwru_labels']:.0%})",
         h["cwru_to_sim_file_accuracy"] >= 0.9),
        ("int8 / TFLite decision parity >= 99 %",
         f"{h['parity_int8_vs_fp32']:.2%} / {h['parity_tflite_vs_fp32']:.2%}",
         min(h["parity_int8_vs_fp32"], h["parity_tflite_vs_fp32"]) >= 0.99),
    ]
    if n:
        rows += [
            ("FEMTO: alert before failure on every bearing",
             f"{h['femto_model_alert_before_failure']} / {n}",
             h["femto_model_alert_before_failure"] == n),
            ("FEMTO: no first-half alert on >= 5 of 6",
             f"{h['femto_model_no_first_half_alert']} / {n}",
             h["femto_model_no_first_half_alert"] >= 5),
            ("FEMTO: >= 10 min clean warning on >= 4 of 6",
             f"{h['femto_model_clean_warning_10min']} / {n}",
             h["femto_model_clean_warning_10min"] >= 4),
        ]
    out = ["| target | measured | |", "|---|---|---|"]
    out += [f"| {name} | {value} | {mark(ok)} |" for name, value, ok in rows]
    return out


#: Blocks written into the report by other scripts, kept verbatim on every rewrite.
KEPT_BLOCKS = (("<!-- BEGIN learning -->", "<!-- END learning -->"),)  # evaluate_learning.py


def kept_blocks(text: str) -> list[str]:
    """The marker-delimited blocks of ``text`` (markers included) that a rewrite keeps."""
    out = []
    for begin, end in KEPT_BLOCKS:
        start = text.find(begin)
        stop = text.find(end, start + len(begin)) if start >= 0 else -1
        if start >= 0 and stop >= 0:
            out.append(text[start:stop + len(end)])
    return out


def write_report(path: Path, results: dict[str, Any], headline: dict[str, Any]) -> None:
    """Write the report; blocks other scripts own (:data:`KEPT_BLOCKS`) stay as they were."""
    kept = kept_blocks(path.read_text()) if path.is_file() else []
    lines = ["# Evaluation", "",
             "Generated by `foreshock model evaluate` (models/evaluate.py); do not edit by "
             "hand. Every model is trained from scratch for its experiment with a fixed seed "
             "and run as the device runs it: int8 QDQ ONNX through onnxruntime, threshold "
             "adapted from the test machine's own commissioning windows, alerts debounced "
             "k-of-n. Labels: " + ", ".join(LABELS) + ".", "", TARGETS, "",
             "## Targets", "", *verdicts(headline), "", "## Headline", "",
             "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(headline.items())]
    lines += ["", "## CWRU cross-load (drive end, 12 kHz faults, 48 kHz healthy record)", "",
              "The machine is commissioned on the first half of the healthy record; its second "
              "half is the false-alarm test. No window of a test record is in training.", ""]
    for key, r in results["cwru_crossload"].items():
        lines += _classification(key.replace("_", " "), r)
    lines += _transfer(results["transfer"])
    if "femto" in results:
        lines += ["## FEMTO learning set, leave one bearing out", "",
                  "Detector trained on the simulator only. Commissioning: the held-out "
                  "bearing's first 10 minutes. Alert policy (threshold factor, k-of-n) chosen "
                  "on the other five bearings. First-half alert = first alert before half of "
                  "life; clean warning = first alert in the second half and >= 10 min before "
                  "the end of life.", "", *_femto(results["femto"]), ""]
    lines += ["## Simulated fleet: lead time on degrading machines", "",
              "Faults grow from 30 % of life to failure; commissioning on the first 20 %.", "",
              *_fleet(results["sim_fleet"]), ""]
    for block in kept:
        lines += [block, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
