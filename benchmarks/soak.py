"""Soak: N simulated devices at a high rate through real agents, mosquitto and a gateway.

    python benchmarks/soak.py                      # 4 devices x 60 s at 2x real time
    python benchmarks/soak.py --devices 8 --duration-s 600 --speed 1 --sample-s 10

Each device is an agent process (tests/chaos/runner.py: simulated node -> features ->
int8 ONNX -> decisions -> SQLite outbox -> MQTT link) writing telemetry for every window and
``--alert-rate-hz`` alerts per second, into one broker and one gateway process. Every
``--sample-s`` the script reads each process's resident memory (VmRSS) and CPU time from
/proc and prints them. At the end it prints, per agent, the RSS slope after the warm-up
(least squares, KiB per minute: flat means ~0), the growth from the first to the last
sample, CPU as % of one core, and the loss count per class (unexpected loss must be 0).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "chaos"), str(ROOT / "tests")]

from harness import KINDS, ChaosRun, problems  # noqa: E402
from proc import Proc  # noqa: E402

TICKS_S = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_S  # utime + stime


def sample(procs: dict[str, Proc]) -> dict[str, tuple[int, float]]:
    out = {}
    for name, proc in procs.items():
        if proc.proc is not None and proc.alive:
            out[name] = (rss_kib(proc.proc.pid), cpu_s(proc.proc.pid))
    return out


def slope_kib_min(times_s: list[float], rss: list[int]) -> float:
    if len(times_s) < 3:
        return float("nan")
    return float(np.polyfit(np.asarray(times_s) / 60.0, np.asarray(rss, float), 1)[0])


def soak(args: argparse.Namespace, workdir: Path) -> int:
    devices = {f"soak-{i + 1:02d}": {"speed": args.speed, "alert_rate_hz": args.alert_rate_hz,
                                     "seed": i + 1, "health_interval_s": 5.0}
               for i in range(args.devices)}
    run = ChaosRun(workdir, f"soak {args.devices} devices").start(devices)
    procs = {**run.agents, "gateway": run.gateway} if run.gateway else dict(run.agents)
    t0 = time.monotonic()
    series: dict[str, list[tuple[float, int, float]]] = {name: [] for name in procs}
    print(f"{'t s':>6} " + " ".join(f"{n + ' MiB':>14}" for n in procs))
    cut_at_s = args.duration_s / 3 if args.partition_s > 0 else float("inf")
    heal_at_s = cut_at_s + args.partition_s
    while (now := time.monotonic() - t0) < args.duration_s:
        if now >= cut_at_s and not run.faults["link_cut"]:
            run.cut_link()
            print(f"{now:6.0f} link cut for {args.partition_s:g} s", flush=True)
        if now >= heal_at_s and run.link is not None and not run.link.open:
            run.heal_link()
            print(f"{now:6.0f} link back", flush=True)
        for name, (rss, cpu) in sample(procs).items():
            series[name].append((now, rss, cpu))
        print(f"{now:6.0f} " + " ".join(
            f"{series[n][-1][1] / 1024:14.1f}" if series[n] else f"{'-':>14}" for n in procs),
            flush=True)
        time.sleep(max(0.0, args.sample_s - (time.monotonic() - t0 - now)))
    for name, (rss, cpu) in sample(procs).items():
        series[name].append((time.monotonic() - t0, rss, cpu))
    result = run.finish()
    report(series, args)
    print("\nrecords per class (sent / stored once / duplicates / policy / lost unexpectedly):")
    for kind in KINDS:
        c = result.classes[kind]
        print(f"  {kind:<9} {c.sent:>7} {c.stored:>7} {c.duplicates:>5} {c.policy:>5} "
              f"{c.lost:>5}")
    print(f"  alerts put {result.alerts_put}, missing {result.alerts_missing}; "
          f"windows processed {result.agent.get('windows_processed', 0)}, "
          f"dropped {result.agent.get('dropped_windows', 0)}")
    issues = problems(result)
    print("unexpected loss: 0" if not issues else "PROBLEMS: " + "; ".join(issues))
    return 1 if issues else 0


def report(series: dict[str, list[tuple[float, int, float]]],
           args: argparse.Namespace) -> None:
    print(f"\n{'process':<10} {'RSS start MiB':>13} {'RSS end MiB':>11} "
          f"{'slope KiB/min':>13} {'CPU % core':>10}")
    for name, pts in series.items():
        if len(pts) < 2:
            continue
        warm = [p for p in pts if p[0] >= args.warmup_s] or pts
        slope = slope_kib_min([p[0] for p in warm], [p[1] for p in warm])
        cpu_pct = 100.0 * (pts[-1][2] - pts[0][2]) / max(1e-9, pts[-1][0] - pts[0][0])
        print(f"{name:<10} {warm[0][1] / 1024:13.1f} {pts[-1][1] / 1024:11.1f} "
              f"{slope:13.1f} {cpu_pct:10.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--speed", type=float, default=2.0,
                        help="stream speed, x real time (25.6 kHz per device at 1)")
    parser.add_argument("--alert-rate-hz", type=float, default=2.0)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--partition-s", type=float, default=0.0,
                        help="cut the devices' link at a third of the run for this long")
    parser.add_argument("--warmup-s", type=float, default=15.0,
                        help="samples before this are left out of the slope")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="foreshock-soak-") as tmp:
        return soak(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
