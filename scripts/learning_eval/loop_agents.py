"""Section 5's instruments: the disturbed simulated machines the running agents read, the
counter of what the agents score and raise, and what the faulty machine's agent did across
the model switch."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import numpy as np

LOOP_KINDS = {"bench-0": "benign", "bench-1": "benign", "bench-2": "outer_race"}
LOOP_ONSET_S = 10.0      # stream seconds: commissioning (4 s) is over, the disturbance begins
LOOP_WINDOWS = 40        # post-onset windows counted per device and model
LOOP_SPEED = 3.0         # simulated seconds per wall second
LOOP_TIMEOUT_S = 25.0
LOOP_FAULTY = "bench-2"


def disturbed_node_class() -> Any:
    """``DisturbedNode``, defined lazily: firmware_sim is only needed by this section."""
    from firmware_sim.node import SimNode

    class DisturbedNode(SimNode):
        """A healthy node whose signal comes from ``later`` (a louder or a faulty twin)
        from ``LOOP_ONSET_S`` of stream time on, to the end (through the rollout)."""

        def __init__(self, base: Any, later: Any, device: str, seed: int) -> None:
            super().__init__(base, device, seed=seed)
            self.later = SimNode(later, device, seed=seed + 100)

        def _physics(self, n: int, rate_hz: float) -> Any:
            if self.stream_time_s < LOOP_ONSET_S:
                return super()._physics(n, rate_hz)
            return self.later._physics(n, rate_hz)

    return DisturbedNode


class Counter:
    """Post-onset windows and those above the agent's threshold, per device and model
    version (every window the agents score, counted by their ``on_result``); every
    incident record (version, status, incident id) and commissioning window per device
    and model version; each device's stream key."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], list[bool]] = {}
        self.start_s: dict[str, float] = {}
        self.alerts: dict[str, list[tuple[str, str, str]]] = {}
        self.commissioning: dict[tuple[str, str], int] = {}
        self.keys: dict[str, tuple[str, int]] = {}
        self.lock = threading.Lock()

    def hook(self, agent_box: list[Any], device: str) -> Any:
        def on_result(r: Any) -> None:
            version = agent_box[0].model_info["version"] if agent_box else "?"
            with self.lock:
                self.keys.setdefault(device, (r.window.device_id, r.window.channel))
                if r.alert is not None:
                    self.alerts.setdefault(device, []).append(
                        (version, r.alert["status"], r.alert["incident"]))
                if r.commissioning:
                    self.commissioning[device, version] = \
                        self.commissioning.get((device, version), 0) + 1
            start_s = self.start_s.setdefault(device, r.window.end_s)
            if r.commissioning or np.isnan(r.anomaly) or \
                    r.window.end_s - start_s < LOOP_ONSET_S:
                return
            with self.lock:
                self.seen.setdefault((device, version), []).append(
                    r.anomaly > r.threshold)
        return on_result

    def incidents(self, device: str) -> list[tuple[str, str, str]]:
        with self.lock:
            return list(self.alerts.get(device, []))

    def count(self, device: str, version: str) -> int:
        with self.lock:
            return len(self.seen.get((device, version), []))

    def rate(self, device: str, version: str, skip: int = 0) -> float:
        with self.lock:
            flags = self.seen.get((device, version), [])[skip:skip + LOOP_WINDOWS]
        return float(np.mean(flags)) if flags else float("nan")


def loop_scenarios(kind: str) -> tuple[Any, Any]:
    """(before, after) simulator scenarios: a louder neighbour (noise x2.5) or a fault."""
    from firmware_sim.scenario import FaultSpec, Scenario

    base = dataclasses.replace(Scenario.load("healthy"), duration_s=0.0)
    if kind == "benign":
        machine_ = dataclasses.replace(base.machine, noise_g=base.machine.noise_g * 2.5)
        return base, dataclasses.replace(base, machine=machine_)
    fault = FaultSpec(kind=kind, severity=0.3)  # type: ignore[arg-type]
    return base, dataclasses.replace(base, faults=(fault,))


def wait_for(check: Any, timeout_s: float = LOOP_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def stream_state(agent: Any, key: tuple[str, int]) -> dict[str, Any]:
    """The faulty stream's incident, threshold and baselines (decider and operating-state
    bank) on a running agent, copied."""
    s = agent.pipeline.decider.stream(key)
    bank = agent.learning
    states = bank.streams.get(f"{key[0]}/{key[1]}", {}) if bank is not None else {}
    return {"incident": s.incident.id if s.incident is not None else None,
            "threshold": float(s.threshold),
            "median": None if s.baseline is None else np.array(s.baseline.median, copy=True),
            "states": {name: np.array(b.median, copy=True) for name, b in states.items()}}


def fault_through_switch(counter: Any, store: Any, site: str, old: str, new: str,
                         before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the faulty machine's agent did across the model switch, from its own incident
    records (``on_result``), the gateway's stored alerts and events, and its baselines."""
    device = LOOP_FAULTY
    seen = counter.incidents(device)
    stored = [a for a in store.alerts(device=device) if a["site"] == site]
    events = [r.body for r in store.records(device=device, kind="event") if r.site == site]
    stream = _switch_stream(events, new)
    commissioned = [e["detail"] for e in events
                    if e["detail"].get("status") == "commissioned"]
    on_new = [st for version, st, _ in seen if version == new]
    return {
        "incident": before["incident"],
        "incident_after": after["incident"],
        "incidents_seen": sorted({inc for _, _, inc in seen}),
        "raised": sum(st == "raised" for _, st, _ in seen),
        "cleared": sum(st == "cleared" for _, st, _ in seen),
        "records_on_new": len(on_new),
        "updated_on_new": on_new.count("updated"),
        "stored_incidents": sorted({a["incident"] for a in stored}),
        "stored_raised": sum(a["status"] == "raised" for a in stored),
        "stored_cleared": sum(a["status"] == "cleared" for a in stored),
        "stored_on_new": sum((a["model"] or {}).get("version") == new for a in stored),
        "commissioning_windows_after": sum(
            n for (d, version), n in counter.commissioning.items()
            if d == device and version != old),
        "commissioned_events": len(commissioned),
        "switch_baseline": stream.get("baseline"),
        "switch_incident": stream.get("incident"),
        "threshold_source": stream.get("threshold_source"),
        "threshold_old": before["threshold"],
        "threshold_new": after["threshold"],
        **_baselines_kept(before, after),
    }


def _switch_stream(events: list[dict[str, Any]], new: str) -> dict[str, Any]:
    """The stream as the agent reported it in its ``loaded`` model event for ``new``."""
    loaded = [e["detail"] for e in events if e.get("type") == "model"
              and e["detail"].get("status") == "loaded"]
    switch: dict[str, Any] = next(
        (e for e in loaded if e.get("running", {}).get("version") == new), {})
    return next(iter(switch.get("streams", {}).values()), {})


def _baselines_kept(before: dict[str, Any], after: dict[str, Any]) -> dict[str, bool]:
    """Whether the decider's and the operating-state bank's baseline medians are the same
    after the switch (:func:`stream_state` before and after)."""
    return {
        "baseline_kept": before["median"] is not None and after["median"] is not None
        and bool(np.array_equal(before["median"], after["median"])),
        "state_baselines_kept": bool(before["states"]) and
        before["states"].keys() == after["states"].keys() and
        all(np.array_equal(v, after["states"][k]) for k, v in before["states"].items()),
    }
