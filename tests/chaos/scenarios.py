"""The chaos scenarios: each starts a :class:`ChaosRun`, injects its faults, and counts.

Every scenario is bounded (tens of seconds). Times are compressed: a "partition of several
minutes" is the broker down for ``PARTITION_S`` while the node streams faster than real
time and the agent writes telemetry for every window, so the backlog holds as many records
as minutes of a real device at its default rate would (see docs/reliability.md).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from harness import ChaosRun, Result

PARTITION_S = 12.0
DAY_S = 86_400.0


def broker_restarts(workdir: Path, share_group: str = "chaos", cycles: int = 4) -> Result:
    """Two devices; the broker is stopped (SIGTERM) and SIGKILLed in turn, ``cycles``
    times, mid-stream.

    ``share_group``: the gateway's shared-subscription group ("" subscribes unshared)."""
    name = (f"broker stop/kill x{cycles}"
            + (", shared gateway subs" if share_group else ", unshared gateway subs"))
    run = ChaosRun(workdir, name, share_group=share_group).start(
        {"pump-1": {"alert_rate_hz": 4.0}, "pump-2": {"alert_rate_hz": 4.0, "seed": 2}})
    for kill in [False, True] * (cycles // 2):
        run.sleep(2.0)
        run.stop_broker(kill=kill)
        run.sleep(1.5)
        run.start_broker()
    run.sleep(2.0)
    return run.finish()


def agent_kills(workdir: Path, seed: int = 1) -> Result:
    """The agent is SIGKILLed mid-batch three times (broker up, outbox draining) and
    restarted on the same outbox file."""
    rng = random.Random(seed)
    run = ChaosRun(workdir, "agent SIGKILL mid-batch x3").start(
        {"pump-1": {"alert_rate_hz": 10.0, "speed": 2.0}})
    run.sleep(2.0)
    for _ in range(3):
        run.kill_agent("pump-1")
        run.restart_agent("pump-1")
        run.sleep(rng.uniform(1.5, 3.0))
    return run.finish()


def gateway_kills(workdir: Path, seed: int = 2) -> Result:
    """The gateway is SIGKILLed three times while batches arrive, and restarted on the
    same database and MQTT session."""
    rng = random.Random(seed)
    run = ChaosRun(workdir, "gateway SIGKILL x3").start(
        {"pump-1": {"alert_rate_hz": 10.0, "speed": 2.0}})
    for _ in range(3):
        run.sleep(rng.uniform(1.5, 3.0))
        run.kill_gateway()
        run.sleep(1.0)
        run.restart_gateway()
    run.sleep(2.0)
    return run.finish()


def power_cut(workdir: Path, seed: int = 3, cuts: int = 8) -> Result:
    """Power cuts under load (50 alerts/s plus the pipeline's records): the agent kills
    itself with SIGKILL just before or after a random outbox write statement (INSERT,
    DELETE, COMMIT: between the write and the commit's fsync, or after the commit before
    put() returns), or the harness SIGKILLs it at a random moment, whichever comes first.
    Every alert whose put() returned must reach the gateway."""
    rng = random.Random(seed)
    run = ChaosRun(workdir, f"power cut x{cuts}").start(
        {"pump-1": {"alert_rate_hz": 50.0, "speed": 2.0, "self_kill_writes": [10, 150]}})
    for _ in range(cuts):
        run.sleep(rng.uniform(0.5, 2.5))
        run.kill_agent("pump-1")
        run.restart_agent("pump-1")
    run.agents["pump-1"].update_spec(self_kill_writes=None)
    run.kill_agent("pump-1")
    run.restart_agent("pump-1")
    run.sleep(1.0)
    return run.finish()


def disk_budget(workdir: Path) -> Result:
    """Tiny outbox budgets and a long outage: telemetry, events and health are dropped by
    policy and counted; alerts go over their budget and are all kept."""
    budgets = {"telemetry_budget_bytes": 16 * 1024, "event_budget_bytes": 4 * 1024,
               "health_budget_bytes": 8 * 1024, "alert_budget_bytes": 4 * 1024}
    run = ChaosRun(workdir, "disk budget exhausted in outage").start(
        {"pump-1": {"alert_rate_hz": 5.0, "speed": 3.0, "health_interval_s": 0.5,
                    "outbox": budgets}})
    run.sleep(2.0)
    run.cut_link()
    run.sleep(9.0)
    run.heal_link()
    run.sleep(4.0)
    return run.finish()


def clock_jumps(workdir: Path) -> Result:
    """The agent's wall clock steps back 1 h, forward 2 days, back 3 days, forward 1 day;
    the node's frame clock steps back 10 min, forward 1 day and back again."""
    run = ChaosRun(workdir, "wall clock steps (NTP)").start({"pump-1": {
        "alert_rate_hz": 4.0, "speed": 2.0, "health_interval_s": 0.5,
        "clock_jumps": [[2.0, -3600.0], [4.0, 2 * DAY_S], [6.0, -3 * DAY_S],
                        [8.0, DAY_S + 3600.0]],
        "frame_jumps": [[3.0, -600.0], [5.0, DAY_S], [7.0, -DAY_S + 600.0]]}})
    run.sleep(10.0)
    return run.finish()


def partition(workdir: Path) -> Result:
    """The devices' link is cut (a TCP relay resets and refuses) for PARTITION_S at 3x
    real time with telemetry for every window and health every 0.5 s; then the backlog
    drains."""
    run = ChaosRun(workdir, f"partition {PARTITION_S:g} s, backlog").start(
        {"pump-1": {"alert_rate_hz": 2.0, "speed": 3.0, "health_interval_s": 0.5},
         "pump-2": {"alert_rate_hz": 2.0, "speed": 3.0, "seed": 2,
                    "health_interval_s": 0.5}})
    run.sleep(2.0)
    run.cut_link()
    run.sleep(PARTITION_S)
    run.heal_link()
    run.sleep(3.0)
    return run.finish()


def sensor_faults(workdir: Path) -> Result:
    """The ``sensor-faults`` node (corrupt, truncated by dropout/disconnect, duplicated,
    reordered frames, wrong rates) for 60 s of stream at 5x: counted and dropped."""
    run = ChaosRun(workdir, "corrupt/duplicate/reordered frames").start(
        {"flaky-1": {"scenario": "sensor-faults", "stream_s": 60.0, "speed": 5.0,
                     "alert_rate_hz": 2.0}})
    return run.finish(finite=True, timeout_s=60.0)


def broker_restarts_unshared(workdir: Path) -> Result:
    return broker_restarts(workdir, share_group="")


SCENARIOS: dict[str, Callable[[Path], Result]] = {
    "broker_restarts": broker_restarts, "broker_restarts_unshared": broker_restarts_unshared,
    "agent_kills": agent_kills,
    "gateway_kills": gateway_kills, "power_cut": power_cut, "disk_budget": disk_budget,
    "clock_jumps": clock_jumps, "partition": partition, "sensor_faults": sensor_faults,
}
