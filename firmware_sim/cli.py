"""``foreshock sim``: run simulated sensor nodes over serial, UDP, MQTT or into a file.

    foreshock sim list
    foreshock sim run --scenario outer-race-growing --transport mqtt --broker mqtt://127.0.0.1:1883
    foreshock sim run --scenario healthy --transport file --out rec.fsf --duration-s 10 --max-speed
"""

from __future__ import annotations

import heapq
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import typer

from firmware_sim.node import SimNode, fleet
from firmware_sim.scenario import Scenario, builtin_names
from firmware_sim.transports import (
    TRANSPORTS,
    FileSink,
    MqttSink,
    SerialSink,
    Sink,
    UdpSink,
)
from foreshock.errors import ConfigError

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Simulated sensor nodes over serial, UDP, MQTT or file.")


@app.command("list")
def list_scenarios() -> None:
    """List the built-in scenarios."""
    for name in builtin_names():
        scenario = Scenario.load(name)
        typer.echo(f"{name:24} {scenario.description}")


@dataclass(frozen=True)
class RunOptions:
    transport: str
    broker: str
    site: str
    host: str
    port: int | None
    out: Path | None


@app.command()
def run(
    scenario: str = typer.Option(..., "--scenario", help="Scenario file or built-in name."),
    transport: str = typer.Option("file", "--transport", help="mqtt, udp, serial or file."),
    broker: str = typer.Option("mqtt://127.0.0.1:1883", "--broker", help="MQTT broker URL."),
    site: str = typer.Option("site1", "--site", help="Site id for MQTT topics."),
    devices: int | None = typer.Option(None, "--devices", help="Nodes (default: scenario)."),
    duration_s: float | None = typer.Option(None, "--duration-s",
                                            help="Stream seconds to run (default: scenario; "
                                                 "0 = until interrupted)."),
    speed: float = typer.Option(1.0, "--speed", help="Stream seconds per wall second."),
    max_speed: bool = typer.Option(False, "--max-speed", help="Send as fast as possible."),
    out: Path | None = typer.Option(None, "--out", help="Recording path (file transport)."),
    host: str = typer.Option("127.0.0.1", "--host", help="UDP destination host."),
    port: int | None = typer.Option(None, "--port", help="UDP destination port."),
    seed: int | None = typer.Option(None, "--seed", help="Seed (default: scenario)."),
    channels: str = typer.Option("0", "--channels",
                                 help="Comma list: 0 vibration, 1 temperature."),
) -> None:
    """Run a scenario's fleet and send its frames over one transport."""
    spec = Scenario.load(scenario)
    options = RunOptions(transport, broker, site, host, port, out)
    chans = _channels(channels)
    if devices is not None and devices < 1:
        raise ConfigError(f"--devices {devices} must be at least 1")
    if not (speed > 0 and math.isfinite(speed)):
        raise ConfigError(f"--speed {speed!r} must be a positive number")
    limit_s = spec.duration_s if duration_s is None else duration_s
    if not (limit_s >= 0 and math.isfinite(limit_s)):
        raise ConfigError(f"--duration-s {duration_s!r} must be >= 0")
    sink = open_sink(options)
    start = time.time()
    nodes = [n for ch in chans for n in fleet(spec, devices, seed=seed, channel=ch,
                                              start_time_s=start)]
    typer.echo(sink.describe(), nl=True)
    sys.stdout.flush()
    try:
        sent = pump(nodes, sink, limit_s, None if max_speed else speed)
    finally:
        sink.close()
    typer.echo(f"sent {sent} frames ({sink.stats['bytes']} bytes) from {len(nodes)} "
               f"node channel(s), dropped {sink.stats['dropped_frames']}")


def _channels(text: str) -> list[int]:
    try:
        chans = sorted({int(c) for c in text.split(",") if c.strip()})
    except ValueError:
        raise ConfigError(f"--channels {text!r} must be a comma list of 0 and 1") from None
    if not chans or any(c not in (0, 1) for c in chans):
        raise ConfigError(f"--channels {text!r} must be a comma list of 0 and 1")
    return chans


def open_sink(options: RunOptions) -> Sink:
    """The transport's sink, or ConfigError naming the missing or bad option."""
    kind = options.transport
    if kind not in TRANSPORTS:
        raise ConfigError(f"--transport {kind!r} is unknown; use one of {', '.join(TRANSPORTS)}")
    if kind == "file":
        if options.out is None:
            raise ConfigError("--transport file needs --out PATH")
        return FileSink(options.out)
    if kind == "udp":
        if options.port is None:
            raise ConfigError("--transport udp needs --port N")
        return UdpSink(options.host, options.port)
    if kind == "mqtt":
        return MqttSink(options.broker, options.site)
    return SerialSink(write_timeout_s=5.0)


def pump(nodes: list[SimNode], sink: Sink, limit_s: float, speed: float | None) -> int:
    """Send every node's frames in stream-time order until ``limit_s`` (0 = for ever).

    With ``speed`` the frames are paced to the wall clock; with None as fast as possible.
    Shows progress on stderr.
    """
    heap = [(*nodes[i].next_frame()[::-1], i) for i in range(len(nodes))]
    heapq.heapify(heap)
    sent, t0 = 0, time.monotonic()
    progress = Progress(limit_s)
    while heap:
        due_s, data, i = heapq.heappop(heap)
        if limit_s and due_s > limit_s + 1e-9:
            continue
        if speed is not None:
            wait_s = due_s / speed - (time.monotonic() - t0)
            if wait_s > 0:
                time.sleep(wait_s)
        sink.send(data, nodes[i].device_id, nodes[i].channel)
        sent += 1
        heapq.heappush(heap, (*nodes[i].next_frame()[::-1], i))
        progress.update(due_s, sent, nodes)
    progress.done(sent)
    return sent


class Progress:
    """A one-line progress display on stderr, refreshed a few times a second."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.tty = sys.stderr.isatty()
        self._last = 0.0
        self._interval_s = 0.25 if self.tty else 5.0

    def update(self, stream_s: float, sent: int, nodes: list[SimNode]) -> None:
        now = time.monotonic()
        if now - self._last < self._interval_s:
            return
        self._last = now
        worst = max(n.severity() for n in nodes)
        total = f"/{self.limit_s:.0f}" if self.limit_s else ""
        pct = f" {100 * stream_s / self.limit_s:5.1f}%" if self.limit_s else ""
        line = (f"sim t={stream_s:7.1f}{total} s{pct}  frames={sent}  "
                f"worst severity={worst:.3f}")
        if self.tty:
            sys.stderr.write("\r" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self, sent: int) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
