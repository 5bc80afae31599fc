"""The body of ``scripts/evaluate_learning.py`` (which documents the sections), by what it
does:

- :mod:`.common`: the shipped bundle, simulated machines, feature pools, a compressed
  machine-week and :class:`Streamer`, shared by every section;
- :mod:`.fleet`: 1. speed and load changes, 2. faults growing after a settling run-in;
- :mod:`.femto`: 3. FEMTO run-to-failure, leave one bearing out;
- :mod:`.closed_loop`: 4. operator feedback, retrain, both bundles on a fresh fleet;
- :mod:`.loop_agents` and :mod:`.rollout`: 5. the closed loop through the staged rollout on
  running agents (the disturbed nodes and the counter; the loop, its broker);
- :mod:`.report`: running the sections, the markdown and writing the learning block.

The names below are the script's public names (tests load the script as a module).
"""

from .closed_loop import closed_loop, disturbed_sets, flagged, fleet_rates, mark_feedback
from .common import HOUR_S, ROOT, SHARED, SHIPPED, Streamer, bundle, machine, pool, week
from .femto import (
    FEMTO_ADAPTATION,
    FEMTO_THRESHOLDS,
    femto,
    femto_run,
    femto_settings,
    femto_summary,
)
from .fleet import growing_week, speed_load
from .loop_agents import (
    LOOP_FAULTY,
    LOOP_KINDS,
    LOOP_ONSET_S,
    LOOP_SPEED,
    LOOP_TIMEOUT_S,
    LOOP_WINDOWS,
    Counter,
    disturbed_node_class,
    fault_through_switch,
    loop_scenarios,
    stream_state,
    wait_for,
)
from .report import BEGIN, END, markdown, run, write_block
from .rollout import Broker, rollout_loop, rollout_section

__all__ = [
    "BEGIN", "END", "FEMTO_ADAPTATION", "FEMTO_THRESHOLDS", "HOUR_S", "LOOP_FAULTY",
    "LOOP_KINDS", "LOOP_ONSET_S", "LOOP_SPEED", "LOOP_TIMEOUT_S", "LOOP_WINDOWS", "ROOT",
    "SHARED", "SHIPPED", "Broker", "Counter", "Streamer", "bundle", "closed_loop",
    "disturbed_node_class", "disturbed_sets", "fault_through_switch", "femto", "femto_run",
    "femto_settings", "femto_summary", "flagged", "fleet_rates", "growing_week",
    "loop_scenarios", "machine", "mark_feedback", "markdown", "pool", "rollout_loop",
    "rollout_section", "run", "speed_load", "stream_state", "wait_for", "week",
    "write_block",
]
