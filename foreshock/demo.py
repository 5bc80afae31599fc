"""``foreshock demo``: the whole system on one machine, every stage the real one.

    simulated nodes --binary frames--> agents (features, int8 ONNX model, decisions,
    SQLite outbox, MQTT link) --> broker --> gateway (SQLite store) --> live view

With no ``--broker`` an embedded pure-Python broker (amqtt, MQTT 3.1.1) is started on a free
loopback port; with ``--broker mqtt://host:port`` an existing broker is used (MQTT 5 and
shared subscriptions where it supports them). Odd-numbered machines are healthy, even ones
carry an outer-race bearing fault that grows to failure over the run (time-accelerated).

The summary compares, per device, what each agent wrote to its outbox with what the gateway
stored. Exit 0 only if every faulty machine alerted, no healthy one did, and nothing was lost.

This module is a composition root: it imports the other packages, lazily.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from foreshock.errors import ConfigError

log = logging.getLogger(__name__)
SITE = "demo"
HEALTHY, FAULTY = "healthy", "outer-race-growing"
MIN_DURATION_S = 15.0

app = typer.Typer(add_completion=False, no_args_is_help=False)


@dataclass
class Machine:
    device_id: str
    scenario: str
    agent: Any
    source: Any
    node: Any
    thread: threading.Thread | None = None
    figures: dict[str, int] = field(default_factory=dict)

    @property
    def faulty(self) -> bool:
        return self.scenario == FAULTY


@dataclass
class Summary:
    duration_s: float
    broker: str
    devices: list[dict[str, Any]] = field(default_factory=list)
    gateway: dict[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return sum(d["lost"] for d in self.devices)

    @property
    def ok(self) -> bool:
        right = all(d["alerted"] == d["faulty"] for d in self.devices)
        pending = sum(d["still_in_outbox"] for d in self.devices)
        return right and self.lost == 0 and pending == 0 and bool(self.devices)


@app.command()
def demo(
    duration_s: float = typer.Option(60.0, "--duration-s", help="How long the machines run."),
    devices: int = typer.Option(2, "--devices", help="Number of simulated machines (>= 2)."),
    broker: str = typer.Option("", "--broker", help="Use this broker (mqtt://host:port) "
                               "instead of the embedded one."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="Keep outboxes and the "
                                          "gateway database here (default: a temp dir)."),
    summary_json: Path | None = typer.Option(None, "--summary-json",
                                             help="Also write the summary as JSON here."),
    live: bool = typer.Option(True, "--live/--no-live", help="Live control-room view."),
) -> None:
    """Run broker, gateway, simulated machines, agents and a live view; print a summary."""
    if duration_s < MIN_DURATION_S or duration_s > 86400:
        raise ConfigError(f"--duration-s {duration_s:g} is out of range; "
                          f"allowed {MIN_DURATION_S:g}..86400")
    if not 2 <= devices <= 50:
        raise ConfigError(f"--devices {devices} is out of range; allowed 2..50 "
                          "(one healthy and one faulty machine at least)")
    if not os.environ.get("FORESHOCK_DEBUG"):
        logging.getLogger().setLevel(logging.WARNING)  # the view and summary speak instead
    workdir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="foreshock-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        summary = DemoRun(duration_s, devices, broker, workdir).run(live and sys.stdout.isatty())
    finally:
        if state_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print_summary(summary)
    if summary_json:
        summary_json.write_text(json.dumps(dataclasses.asdict(summary) | {
            "lost": summary.lost, "ok": summary.ok}, indent=2))
    raise typer.Exit(0 if summary.ok else 1)


class DemoRun:
    """Starts every part, runs for ``duration_s``, stops them in order, and counts."""

    def __init__(self, duration_s: float, devices: int, broker_url: str, workdir: Path) -> None:
        self.duration_s = duration_s
        self.n_devices = devices
        self.broker_url = broker_url
        self.workdir = workdir
        self.embedded: Any = None
        self.gateway: Any = None
        self.machines: list[Machine] = []
        self.stop = threading.Event()

    def run(self, live: bool) -> Summary:
        try:
            self._start_broker()
            self._start_gateway()
            self._start_machines()
            self._watch(live)
            self._stop_machines()
            self._settle()
            return self._summary()
        finally:
            self._shutdown()

    # -- start ------------------------------------------------------------------------------
    def _start_broker(self) -> None:
        if self.broker_url:
            return
        from foreshock.embedded_broker import EmbeddedBroker

        self.embedded = EmbeddedBroker()
        self.embedded.start()
        self.broker_url = self.embedded.url
        log.info("embedded broker on %s", self.broker_url)

    @property
    def _protocol(self) -> str:
        """amqtt speaks MQTT 3.1.1 only; a real broker gets MQTT 5."""
        return "3.1.1" if self.embedded is not None else "5"

    def _start_gateway(self) -> None:
        from gateway.config import GatewayConfig
        from gateway.service import Gateway

        db_url = f"sqlite:///{self.workdir / 'gateway.sqlite'}"
        share = "" if self.embedded is not None else "foreshock-demo"
        config = GatewayConfig.for_site(self.broker_url, SITE, db_url, protocol=self._protocol,
                                        share_group=share, client_id="foreshock-demo-gateway")
        self.gateway = Gateway(config)
        self.gateway.start()

    def _start_machines(self) -> None:
        for i in range(self.n_devices):
            scenario = FAULTY if i % 2 else HEALTHY
            self.machines.append(self._machine(f"machine-{i + 1:02d}", scenario, seed=i + 1))
        for m in self.machines:
            m.thread = threading.Thread(target=m.agent.run, args=(self.stop,),
                                        name=f"agent-{m.device_id}", daemon=True)
            m.thread.start()

    def _machine(self, device_id: str, scenario_name: str, seed: int) -> Machine:
        from agent.config import AgentConfig
        from agent.service import Agent
        from firmware_sim.node import NodeSource, SimNode
        from firmware_sim.scenario import Scenario

        scenario = demo_scenario(Scenario.load(scenario_name), self.duration_s)
        node = SimNode(scenario, device_id, seed=seed)
        source = NodeSource(node, realtime=True)
        bundle, key = default_bundle()
        config = AgentConfig.for_device(
            device_id, SITE, self.broker_url, self.workdir / device_id,
            model={"bundle": str(bundle), "trusted_keys": [str(key)]},
            decision={"commission_s": commission_s(self.duration_s)},
            link={"protocol": self._protocol, "client_id": f"foreshock-demo-{device_id}"},
            service={"health_interval_s": 5.0},
        )
        agent = Agent(config, source)
        return Machine(device_id, scenario_name, agent, source, node)

    # -- run --------------------------------------------------------------------------------
    def _watch(self, live: bool) -> None:
        from gateway.watch import WatchModel, render, subscriptions

        model = WatchModel(site=SITE)
        client = _subscriber(self.broker_url, self._protocol, model, subscriptions(SITE))
        deadline = time.monotonic() + self.duration_s
        try:
            if live:
                from rich.live import Live

                with Live(render(model), refresh_per_second=2, transient=False) as view:
                    while time.monotonic() < deadline and self._agents_alive():
                        time.sleep(0.5)
                        view.update(render(model))
            else:
                next_line = time.monotonic()
                while time.monotonic() < deadline and self._agents_alive():
                    if time.monotonic() >= next_line:
                        typer.echo(self._progress_line(deadline), err=True)
                        next_line += 5.0
                    time.sleep(0.2)
        finally:
            client.loop_stop()
            client.disconnect()

    def _agents_alive(self) -> bool:
        return all(m.thread is not None and m.thread.is_alive() for m in self.machines)

    def _progress_line(self, deadline: float) -> str:
        left = max(0.0, deadline - time.monotonic())
        parts = []
        for m in self.machines:
            c = m.agent.counters
            parts.append(f"{m.device_id}: {c['windows_processed']} windows, "
                         f"{c['alerts']} alert records")
        return f"demo: {left:4.0f} s left | " + " | ".join(parts)

    def _stop_machines(self) -> None:
        """Stop the sources; each agent processes what is queued, drains and closes."""
        self.stop.set()
        for m in self.machines:
            if m.thread is not None:
                m.thread.join(60)
                if m.thread.is_alive():
                    log.error("agent %s did not stop in 60 s", m.device_id)

    def _settle(self, timeout_s: float = 30.0) -> None:
        """Wait until the gateway has stored what the agents delivered (or no more arrives)."""
        for m in self.machines:
            m.figures = outbox_figures(m)
        expected = sum(f["written"] - f["dropped"] - f["pending"]
                       for m in self.machines for f in [m.figures])
        deadline = time.monotonic() + timeout_s
        last, still = -1, 0
        while time.monotonic() < deadline:
            stored = self.gateway.store.count("records")
            if stored >= expected:
                return
            still = still + 1 if stored == last else 0
            if still >= 10:  # nothing new for 5 s
                return
            last = stored
            time.sleep(0.5)

    def _summary(self) -> Summary:
        summary = Summary(self.duration_s, self.broker_url)
        store = self.gateway.store
        for m in self.machines:
            fig = m.figures
            stored = {kind: len(store.records(device=m.device_id, kind=kind))
                      for kind in ("telemetry", "alert", "event", "health")}
            alerts = store.alerts(device=m.device_id)
            raised = [a for a in alerts if a["status"] == "raised"]
            delivered = fig["written"] - fig["dropped"] - fig["pending"]
            summary.devices.append({
                "device": m.device_id, "scenario": m.scenario, "faulty": m.faulty,
                "windows": m.agent.counters["windows_processed"],
                "dropped_windows": m.agent.counters["dropped_windows"],
                "alerts_raised": len(raised), "alerted": bool(raised),
                "first_alert_s": (round(raised[0]["ts"] - m.agent.started_ts, 1)
                                  if raised else None),
                "failure_at_s": m.node.failure_at_s,
                "alert_faults": sorted({a["fault"] for a in alerts}),
                "alert_summary": (raised[0]["explanation"] or {}).get("summary")
                if raised else None,
                "records_written": fig["written"], "dropped_by_policy": fig["dropped"],
                "still_in_outbox": fig["pending"], "records_stored": sum(stored.values()),
                "stored_by_kind": stored,
                "lost": max(0, delivered - sum(stored.values())),
                "model": m.agent.model_info,
            })
        stats = self.gateway.stats()
        summary.gateway = {"messages": stats.messages, "records_stored": stats.records_stored,
                           "duplicates_dropped": stats.duplicates_dropped,
                           "invalid": stats.invalid, "gaps": stats.gaps}
        return summary

    def _shutdown(self) -> None:
        self.stop.set()
        if self.gateway is not None:
            self.gateway.stop()
        if self.embedded is not None:
            self.embedded.stop()


def demo_scenario(scenario: Any, duration_s: float) -> Any:
    """Fit a built-in scenario to the run: the fault fails just after the run ends."""
    life = scenario.life
    accel = life.life_s / (duration_s * 1.02)
    faults = tuple(dataclasses.replace(f, onset_frac=max(f.onset_frac, 0.35))
                   for f in scenario.faults)
    return dataclasses.replace(scenario, duration_s=0.0, faults=faults,
                               life=dataclasses.replace(life, time_acceleration=accel))


def commission_s(duration_s: float) -> float:
    """The first quarter of the run (at most 10 minutes) is the machines' baseline."""
    return min(600.0, max(4.0, duration_s * 0.25))


def default_bundle() -> tuple[Path, Path]:
    """The newest shipped bundle and the public key it is signed with."""
    import models

    root = Path(models.__file__).resolve().parent / "bundles"
    versions = sorted((root / "foreshock-default").glob("*/manifest.json"),
                      key=lambda p: tuple(int(x) for x in p.parent.name.split(".")[:3]))
    if not versions:
        raise ConfigError(f"no default model bundle under {root}",
                          hint="rebuild it with: foreshock model build --default")
    return versions[-1].parent, root / "foreshock-dev.pub"


def _subscriber(url: str, protocol: str, model: Any, filters: list[str]) -> Any:
    from urllib.parse import urlsplit

    import paho.mqtt.client as mqtt

    parts = urlsplit(url)
    version = mqtt.MQTTv311 if protocol == "3.1.1" else mqtt.MQTTv5
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=version,
                         client_id=f"foreshock-demo-watch-{time.time_ns() % 10**8}")

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        for f in filters:
            c.subscribe(f, qos=0)

    client.on_connect = on_connect
    client.on_message = lambda c, u, msg: model.feed(msg.topic, msg.payload)
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    client.loop_start()
    return client


def outbox_figures(machine: Machine) -> dict[str, int]:
    """Records the agent wrote, dropped by its budget policy, and still holds, read back
    from its outbox file after it closed."""
    from agent.outbox import Outbox

    outbox = Outbox(machine.agent.outbox.path, machine.agent.config.outbox)
    try:
        counters = outbox.counters()
        depth = outbox.depth()
    finally:
        outbox.close()
    return {
        "written": sum(c.get("written", 0) for c in counters.values()),
        "dropped": sum(c.get("dropped_by_policy", 0) + c.get("expired", 0)
                       for c in counters.values()),
        "pending": sum(d.rows for d in depth.values()),
    }


def print_summary(summary: Summary) -> None:
    typer.echo("")
    typer.echo(f"Foreshock demo summary ({summary.duration_s:g} s, broker {summary.broker})")
    header = (f"{'device':<12} {'scenario':<20} {'windows':>7} {'alerts':>6} "
              f"{'first alert s':>13} {'written':>7} {'stored':>7} {'lost':>4}")
    typer.echo(header)
    for d in summary.devices:
        first = "-" if d["first_alert_s"] is None else f"{d['first_alert_s']:.1f}"
        typer.echo(f"{d['device']:<12} {d['scenario']:<20} {d['windows']:>7} "
                   f"{d['alerts_raised']:>6} {first:>13} {d['records_written']:>7} "
                   f"{d['records_stored']:>7} {d['lost']:>4}")
    g = summary.gateway
    typer.echo(f"gateway: {g.get('messages', 0)} messages, {g.get('records_stored', 0)} "
               f"records stored, {g.get('duplicates_dropped', 0)} duplicates dropped, "
               f"{g.get('invalid', 0)} invalid")
    typer.echo(f"messages lost: {summary.lost}")
    verdict = "PASS" if summary.ok else "FAIL"
    typer.echo(f"{verdict}: faulty machines alerted, healthy ones quiet, nothing lost"
               if summary.ok else
               f"{verdict}: expected alerts on faulty machines only and no loss")
