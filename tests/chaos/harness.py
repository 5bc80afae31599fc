"""Chaos harness: real mosquitto, gateway and agents as processes; faults; the loss count.

A :class:`ChaosRun` owns a work directory, a mosquitto broker configured like production
(persistence on, unlimited queues; see gateway/brokerconf.py), one gateway process and
agent processes (tests/chaos/runner.py). Scenario code starts them, injects faults (kill,
restart, stop the broker) and calls :meth:`ChaosRun.finish`, which stops everything
cleanly, delivers what is left and counts, per message class:

- ``sent``: records the agents wrote (the outbox's persistent ``written`` counter, which
  commits in the same transaction as the record);
- ``stored``: distinct records in the gateway store;
- ``duplicates``: deliveries to the gateway of a record it had already (dropped there);
- ``policy``: records the outbox dropped by its budget or TTL policy (counted);
- ``pending``: records still in an outbox at the end (should be 0);
- ``lost``: ``sent - policy - stored - pending``: lost unexpectedly, must be 0.

``alerts_missing`` counts alerts whose ``put()`` returned a seq (alerts.log) but that are not
in the store: the alert guarantee checked record by record.
"""

from __future__ import annotations

import getpass
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import Mosquitto
from linkcut import LinkCut
from proc import Proc

KINDS = ("telemetry", "alert", "event", "health")
SITE = "chaos"
BROKER_CONF = """per_listener_settings false
listener {port} 127.0.0.1
allow_anonymous true
user @USER@
persistence true
persistence_location {workdir}/
autosave_interval 60
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 100
max_packet_size 8388608
log_dest stderr
log_type error
log_type warning
"""


@dataclass
class ClassCount:
    sent: int = 0
    stored: int = 0
    duplicates: int = 0
    policy: int = 0
    pending: int = 0
    lost: int = 0


@dataclass
class Result:
    scenario: str
    classes: dict[str, ClassCount]
    alerts_put: int = 0
    alerts_missing: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    agent: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    crashed: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(c.lost for c in self.classes.values()) + self.alerts_missing

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "duration_s": round(self.duration_s, 1),
                "classes": {k: vars(c) for k, c in self.classes.items()},
                "alerts_put": self.alerts_put, "alerts_missing": self.alerts_missing,
                "faults": self.faults, "agent": self.agent, "crashed": self.crashed}


class ChaosRun:
    """One scenario's processes and faults; see the module doc."""

    def __init__(self, workdir: Path, name: str, *, share_group: str = "chaos") -> None:
        self.workdir = workdir
        self.name = name
        self.share_group = share_group
        workdir.mkdir(parents=True, exist_ok=True)
        self.broker = Mosquitto(workdir, BROKER_CONF.replace("@USER@", getpass.getuser()))
        self.link: LinkCut | None = None
        self.db = workdir / "gateway.sqlite"
        self.deliveries = workdir / "deliveries.log"
        self.ready = workdir / "gateway.ready"
        self.gateway: Proc | None = None
        self.agents: dict[str, Proc] = {}
        self.faults: Counter[str] = Counter()
        self.started = time.monotonic()

    # -- parts -------------------------------------------------------------------------------
    def start(self, devices: dict[str, dict[str, Any]]) -> ChaosRun:
        """Broker, then gateway (subscribed), then one agent per device spec."""
        self.broker.start()
        self.gateway = Proc("gateway", {"broker_url": self.broker.url, "site": SITE,
                                        "db": str(self.db),
                                        "deliveries": str(self.deliveries),
                                        "ready": str(self.ready),
                                        "share_group": self.share_group},
                            self.workdir, "gateway")
        self._start_gateway()
        self.link = LinkCut(self.broker.port)
        for device, extra in devices.items():
            state = self.workdir / device
            spec = {"device": device, "site": SITE, "broker_url": self.link.url,
                    "state_dir": str(state), "ready": str(state / "ready"), **extra}
            self.agents[device] = Proc("agent", spec, self.workdir, device)
            self.agents[device].start()
        for proc in self.agents.values():
            proc.wait_ready()
        return self

    def _wait_subscribed(self, timeout_s: float = 30.0) -> None:
        """Until the gateway runner says the broker granted its subscriptions."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready.exists():
                return
            time.sleep(0.05)
        raise TimeoutError(f"gateway not subscribed after {timeout_s:g} s")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def kill_agent(self, device: str) -> None:
        """SIGKILL the agent; if it already died (it kills itself in power_cut), count
        where it did, from its kills.log."""
        proc = self.agents[device]
        if proc.alive:
            proc.kill()
            self.faults["agent_sigkill"] += 1
        else:
            proc.kill()
            self.faults["agent_self_kill"] += 1

    def restart_agent(self, device: str, *, wait: bool = True) -> None:
        """Start the agent again on the same outbox; ``wait`` until its loop runs."""
        self.agents[device].start()
        if wait:
            self.agents[device].wait_ready()

    def kill_gateway(self) -> None:
        assert self.gateway is not None
        self.gateway.kill()
        self.faults["gateway_sigkill"] += 1

    def restart_gateway(self) -> None:
        self._start_gateway()

    def _start_gateway(self) -> None:
        assert self.gateway is not None
        self.ready.unlink(missing_ok=True)
        self.gateway.start()
        self._wait_subscribed()

    def stop_broker(self, *, kill: bool = False) -> None:
        if kill:
            self.broker.kill()
            self.faults["broker_sigkill"] += 1
        else:
            self.broker.stop()
            self.faults["broker_stop"] += 1

    def start_broker(self) -> None:
        self.broker.start()

    def cut_link(self) -> None:
        """Partition the devices from the broker (broker and gateway stay up)."""
        assert self.link is not None
        self.link.cut()
        self.faults["link_cut"] += 1

    def heal_link(self) -> None:
        assert self.link is not None
        self.link.heal()

    # -- the end -----------------------------------------------------------------------------
    def finish(self, *, finite: bool = False, timeout_s: float = 60.0) -> Result:
        """Stop the agents (they drain), deliver leftovers, stop the gateway, count."""
        self.broker.start()
        assert self.link is not None
        self.link.heal()
        for proc in self.agents.values():
            if not proc.alive:
                proc.start()  # a killed agent comes back to drain its outbox
            proc.wait_ready()
            if finite:
                proc.wait(timeout_s)
            else:
                proc.stop(timeout_s)
        for device, proc in self.agents.items():
            if self._pending(device):
                drain = Proc("drain", proc.spec, self.workdir, f"{device}-drain")
                drain.start()
                drain.wait(30.0)
        self._settle()
        assert self.gateway is not None
        self.gateway.stop()
        self.link.close()
        self.broker.stop()
        return self.count()

    def _settle(self, quiet_s: float = 1.0, timeout_s: float = 30.0) -> None:
        """Wait until no delivery has reached the gateway for ``quiet_s``."""
        deadline = time.monotonic() + timeout_s
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            size = self.deliveries.stat().st_size if self.deliveries.exists() else 0
            if size != last:
                last, since = size, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            time.sleep(0.2)

    def _outbox(self, device: str) -> Any:
        from agent.outbox import Outbox, OutboxConfig

        return Outbox(self.workdir / device / "outbox.sqlite",
                      OutboxConfig(**self.agents[device].spec.get("outbox", {})))

    def _pending(self, device: str) -> int:
        outbox = self._outbox(device)
        try:
            return sum(d.rows for d in outbox.depth().values())
        finally:
            outbox.close()

    def count(self) -> Result:
        from gateway.store import open_store

        store = open_store(f"sqlite:///{self.db}")
        try:
            classes = {k: ClassCount() for k in KINDS}
            alerts_put = alerts_missing = 0
            for device in self.agents:
                stored = {k: {r.seq for r in store.records(device=device, kind=k)}
                          for k in KINDS}
                self._count_outbox(device, stored, classes)
                put, missing = self._check_alerts(device, store)
                alerts_put, alerts_missing = alerts_put + put, alerts_missing + missing
        finally:
            store.close()
        for kind, n in _duplicates(self.deliveries).items():
            classes[kind].duplicates = n
        faults = Counter(self.faults)
        for device in self.agents:
            log = self.workdir / device / "kills.log"
            if log.exists():
                faults.update(f"killed {line}" for line in log.read_text().splitlines())
        return Result(self.name, classes, alerts_put, alerts_missing, dict(faults),
                      self._agent_counters(), time.monotonic() - self.started,
                      [f"{p.name}: exit {rc}" for p in self._procs() for rc in p.bad_exits]
                      + [f"{p.name}: {p.tracebacks} tracebacks" for p in self._procs()
                         if p.tracebacks])

    def _procs(self) -> list[Proc]:
        return [*self.agents.values(), *([self.gateway] if self.gateway else [])]

    def _count_outbox(self, device: str, stored: dict[str, set[int]],
                      classes: dict[str, ClassCount]) -> None:
        outbox = self._outbox(device)
        try:
            counters = outbox.counters()
            for kind in KINDS:
                c, n = classes[kind], counters.get(kind, {})
                pending = {seq for seq, _ in outbox.pending(kind, 10**7)} - stored[kind]
                policy = n.get("dropped_by_policy", 0) + n.get("expired", 0)
                c.sent += n.get("written", 0)
                c.stored += len(stored[kind])
                c.policy += policy
                c.pending += len(pending)
                c.lost += max(0, n.get("written", 0) - policy - len(stored[kind])
                              - len(pending))
        finally:
            outbox.close()

    def _check_alerts(self, device: str, store: Any) -> tuple[int, int]:
        log = self.workdir / device / "alerts.log"
        if not log.exists():
            return 0, 0
        put = {tuple(line.split("\t")) for line in log.read_text().splitlines() if line}
        have = {(a["boot_id"], str(a["seq"])) for a in store.alerts(device=device)}
        return len(put), len(put - have)

    def _agent_counters(self) -> dict[str, int]:
        """Sums of what the agents' last summaries report (windower and source faults)."""
        out: Counter[str] = Counter()
        for device in self.agents:
            path = self.workdir / device / "summary.json"
            if not path.exists():
                continue
            data = json.loads(path.read_text())
            counters = data["counters"]
            for key in ("windows_processed", "dropped_windows", "outbox_errors"):
                out[key] += int(counters.get(key, 0))
            windower = {**counters.get("windower", {}),
                        **{k[7:]: v for k, v in counters.items() if k.startswith("window.")}}
            for key, value in windower.items():
                if key in ("seq_gaps", "duplicates", "out_of_order", "resets", "rate_changes"):
                    out[key] += int(value)
            out["bad_frames"] += int(data["source"].get("bad_frames", 0))
        return dict(out)


def _duplicates(path: Path) -> dict[str, int]:
    """Deliveries of a record the gateway had already seen, per class."""
    if not path.exists():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.count("\t") == 3]
    total = Counter(line.split("\t", 1)[0] for line in lines)
    unique = Counter(line.split("\t", 1)[0] for line in set(lines))
    return {k: total[k] - unique[k] for k in total}


def problems(result: Result) -> list[str]:
    """What breaks the guarantees: unexpected loss, missing alerts, leftovers, crashes."""
    out = [f"{kind}: {c.lost} lost unexpectedly" for kind, c in result.classes.items()
           if c.lost]
    out += [f"{kind}: {c.pending} still pending" for kind, c in result.classes.items()
            if c.pending]
    if result.classes["alert"].policy:
        out.append(f"alert: {result.classes['alert'].policy} dropped by policy")
    if result.alerts_missing:
        out.append(f"{result.alerts_missing} of {result.alerts_put} alerts whose put() "
                   "returned are not in the gateway store")
    out += [f"crash: {c}" for c in result.crashed]
    for kind in ("telemetry", "alert"):
        if not result.classes[kind].sent:
            out.append(f"{kind}: nothing was sent (the scenario did not run)")
    return out
