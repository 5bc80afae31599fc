"""Operating-state baselines with guarded adaptation and an append-only audit log.

Reference: docs/learning.md. Pure apart from :class:`AuditLog` and :meth:`StateBank.save` /
:meth:`StateBank.load` (files in the agent's state dir); no clock: every time is data time.

* **States**: per stream, one robust baseline (median, scaled MAD) per speed bin
  (``speed_edges_rpm``, 25 % wide) and, optionally, load bin (``load_edges`` over an
  external load value or a proxy feature that is not a damage indicator).
* **Learning**: a new state is not scored (no alerts) until ``min_state_windows`` windows.
* **Guarded adaptation**: stochastic median/MAD tracking, ``eta`` fitted sd per step, only
  for windows scoring below ``healthy_fraction`` of the threshold, never during an
  incident, at most ``max_updates_per_day`` steps per data day and one hour's share per data
  hour; upward steps on damage features are ``up_ratio`` slower (a growing fault outruns
  its baseline), downward steps follow run-in settling; the scale stays within
  ``[scale_min_ratio, scale_max_ratio]`` (1..2) of its fitted value.
* **Audit and persistence**: every change is a fsynced JSON line (who, when, why) in
  ``baselines.audit.jsonl``; the bank is saved atomically to ``baselines.json``.

Parts: :mod:`agent.baselines.config` (``LearningConfig`` and its defaults),
:mod:`agent.baselines.state` (``StateBaseline``, ``stream_name``),
:mod:`agent.baselines.bank` (``StateBank``: states, learning, z-scores, thresholds and
references, resets, save and load; ``rebaseline_saved``),
:mod:`agent.baselines.adaptation` (the guarded adaptation steps of ``StateBank``) and
:mod:`agent.baselines.store` (``AuditLog``, file names, atomic writes).
"""

from agent.baselines.adaptation import DAY_S, HOUR_S, GuardedAdaptation
from agent.baselines.bank import StateBank, rebaseline_saved
from agent.baselines.config import DAMAGE_FEATURES, SPEED_EDGES_RPM, LearningConfig
from agent.baselines.state import StateBaseline, stream_name
from agent.baselines.store import AUDIT_FILE, BANK_FILE, AuditLog

__all__ = [
    "AUDIT_FILE",
    "BANK_FILE",
    "DAMAGE_FEATURES",
    "DAY_S",
    "HOUR_S",
    "SPEED_EDGES_RPM",
    "AuditLog",
    "GuardedAdaptation",
    "LearningConfig",
    "StateBank",
    "StateBaseline",
    "rebaseline_saved",
    "stream_name",
]
