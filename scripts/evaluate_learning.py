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
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # the package beside this script, also when loaded by path
sys.path.insert(0, str(ROOT))

# The body is the package scripts/learning_eval; its public names are this module's too
# (the tests load this script as a module and use them).
from learning_eval import *  # noqa: E402, F403
from learning_eval import SHARED, markdown, run, write_block  # noqa: E402


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
