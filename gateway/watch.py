"""``foreshock watch``: a live control-room view of one site, from MQTT alone.

Works over SSH with nothing but broker access: it subscribes (not shared) to the site's
device topics and keeps a :class:`WatchModel` — devices, online state, latest scores,
open alerts with their explanation, rollout progress — which :func:`render` turns into a
rich renderable. The demo feeds the same model from its own subscriber and renders it the
same way. Payloads that fail validation are counted, never shown.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from foreshock import messages, topics
from foreshock.errors import MessageError
from foreshock.messages import Record
from gateway.store_sql import outbox_depth

log = logging.getLogger(__name__)
WATCH_KINDS = ("state", "telemetry", "alert", "event", "health", "model/status")
SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "alarm": "red", "critical": "bold red"}
ZONE_STYLE = {"A": "green", "B": "green", "C": "yellow", "D": "red", "?": "dim"}


@dataclass
class DeviceView:
    """What the control room knows about one device."""

    site: str
    device: str
    online: bool | None = None
    agent_version: str = ""
    model: str = ""
    last_seen_ts: float = 0.0
    scores: dict[int, dict[str, Any]] = field(default_factory=dict)
    outbox_depth: int | None = None
    data_quality: str = ""


@dataclass
class WatchModel:
    """State of a site built from its MQTT messages; ``feed`` is thread-safe."""

    site: str = "+"
    devices: dict[tuple[str, str], DeviceView] = field(default_factory=dict)
    open_alerts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    rollout: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    messages: int = 0
    invalid: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def feed(self, topic: str, payload: bytes, received_ts: float | None = None) -> bool:
        """Apply one MQTT message; False (and counted) when it is not valid."""
        now = time.time() if received_ts is None else received_ts
        if topics.is_control(topic):
            return True  # the gateway's re-publication of an alert the device also sent
        with self._lock:
            self.messages += 1
            try:
                site, device, kind = topics.parse(topic)
                self._apply(site, device, kind, payload, now)
            except (ValueError, MessageError, KeyError, TypeError) as exc:
                self.invalid += 1
                log.debug("watch ignores %s: %s", topic, exc)
                return False
        return True

    def _device(self, site: str, device: str) -> DeviceView:
        return self.devices.setdefault((site, device), DeviceView(site, device))

    def _apply(self, site: str, device: str, kind: str, payload: bytes, now: float) -> None:
        if kind == "model/status":
            status = messages.loads(payload)
            if not isinstance(status.get("status"), str):
                raise MessageError("model status without a status")
            self.rollout[(site, device)] = {**status, "received_ts": now}
            return
        if kind == "state":
            self._state(site, device, messages.decode_state(payload), now)
            return
        batch = messages.decode_batch(payload)
        if (batch.site, batch.device, batch.kind) != (site, device, kind):
            raise MessageError("batch does not match its topic")
        view = self._device(site, device)
        view.last_seen_ts = now
        for record in sorted(batch.records, key=lambda r: r.ts):
            self._record(view, kind, record, now)

    def _state(self, site: str, device: str, state: dict[str, Any], now: float) -> None:
        view = self._device(site, device)
        view.online = bool(state["online"])
        view.agent_version = str(state.get("agent_version") or "")
        model = state.get("model") or {}
        if isinstance(model, dict) and model.get("name"):
            view.model = f"{model.get('name')} {model.get('version', '')}".strip()
        view.last_seen_ts = now

    def _record(self, view: DeviceView, kind: str, record: Record,
                now: float) -> None:
        body = record.body
        key = (view.site, view.device)
        if kind == "telemetry":
            view.scores[int(body["channel"])] = {**body, "ts": record.ts}
        elif kind == "alert":
            akey = (view.device, str(body["incident"]))
            if body["status"] == "cleared":
                self.open_alerts.pop(akey, None)
            else:
                self.open_alerts[akey] = {**body, "site": key[0], "device": view.device,
                                          "ts": record.ts}
        elif kind == "health":
            depth = outbox_depth(body)
            if depth is not None:
                view.outbox_depth = depth
        elif kind == "event" and body["type"] == "data_quality":
            detail = body.get("detail") or {}
            view.data_quality = str(detail.get("state") or detail.get("status") or "issue")

    def snapshot(self) -> WatchModel:
        """A consistent copy for rendering while ``feed`` keeps running."""
        with self._lock:
            return WatchModel(self.site, {k: _copy(v) for k, v in self.devices.items()},
                              dict(self.open_alerts), dict(self.rollout), self.messages,
                              self.invalid)


def _copy(view: DeviceView) -> DeviceView:
    return DeviceView(view.site, view.device, view.online, view.agent_version, view.model,
                      view.last_seen_ts, dict(view.scores), view.outbox_depth,
                      view.data_quality)


def render(model: WatchModel, now: float | None = None) -> RenderableType:
    """The whole view: header, devices, open alerts, rollout."""
    now = time.time() if now is None else now
    snap = model.snapshot()
    online = sum(1 for d in snap.devices.values() if d.online)
    header = Text(f"Foreshock site {snap.site}: {online}/{len(snap.devices)} devices online, "
                  f"{len(snap.open_alerts)} open alerts, {snap.messages} messages"
                  + (f", {snap.invalid} invalid" if snap.invalid else ""), style="bold")
    parts: list[RenderableType] = [header, _devices_table(snap, now), _alerts_table(snap, now)]
    if snap.rollout:
        parts.append(_rollout_table(snap, now))
    return Group(*parts)


def _devices_table(snap: WatchModel, now: float) -> Table:
    table = Table("device", "state", "model", "channel", "score", "fault", "zone",
                  "v mm/s", "outbox", "quality", "seen", title="Devices", title_justify="left")
    for (_, name), d in sorted(snap.devices.items()):
        state = Text({True: "online", False: "OFFLINE", None: "?"}[d.online],
                     style={True: "green", False: "red", None: "dim"}[d.online])
        channels = sorted(d.scores.items()) or [(-1, {})]
        for i, (ch, s) in enumerate(channels):
            first = i == 0
            zone = str(s.get("zone", ""))
            table.add_row(
                name if first else "", state if first else "", d.model if first else "",
                "" if ch < 0 else str(ch), _num(s.get("anomaly_score")),
                str(s.get("fault", "")), Text(zone, style=ZONE_STYLE.get(zone, "")),
                _num(s.get("velocity_rms_mm_s")),
                ("-" if d.outbox_depth is None else str(d.outbox_depth)) if first else "",
                d.data_quality if first else "", _age(now, d.last_seen_ts) if first else "")
    return table


def _alerts_table(snap: WatchModel, now: float) -> Table:
    table = Table("device", "incident", "severity", "status", "fault", "zone", "score",
                  "why", "age", title="Open alerts", title_justify="left")
    for alert in sorted(snap.open_alerts.values(), key=lambda a: -float(a["ts"])):
        sev = str(alert["severity"])
        table.add_row(alert["device"], str(alert["incident"]),
                      Text(sev, style=SEVERITY_STYLE.get(sev, "")), str(alert["status"]),
                      str(alert["fault"]), str(alert["zone"]),
                      f"{_num(alert['anomaly_score'])}/{_num(alert['threshold'])}",
                      explain(alert.get("explanation") or {}), _age(now, float(alert["ts"])))
    return table


def _rollout_table(snap: WatchModel, now: float) -> Table:
    table = Table("device", "bundle", "status", "progress", "detail", "age",
                  title="Model rollout", title_justify="left")
    for (_, name), s in sorted(snap.rollout.items()):
        bundle = s.get("bundle") or {}
        progress = s.get("progress")
        table.add_row(name, f"{bundle.get('name', '')} {bundle.get('version', '')}".strip(),
                      str(s["status"]),
                      f"{100 * progress:.0f}%" if isinstance(progress, (int, float)) else "",
                      _short(s.get("detail") or ""), _age(now, float(s["received_ts"])))
    return table


def explain(explanation: dict[str, Any], max_chars: int = 70) -> str:
    """A one-line summary of an alert's explanation (its ``summary`` if it has one)."""
    if isinstance(explanation.get("summary"), str):
        return _short(explanation["summary"], max_chars)
    return _short(explanation, max_chars)


def _short(value: Any, max_chars: int = 50) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= max_chars else text[:max_chars - 1] + "…"


def _num(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else ""


def _age(now: float, ts: float) -> str:
    if not ts:
        return ""
    seconds = max(0.0, now - ts)
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


def subscriptions(site: str) -> list[str]:
    return [topics.device_filter(kind, site) for kind in WATCH_KINDS]


app = typer.Typer(add_completion=False, help="Live control-room view of a site.")


@app.command()
def watch(broker: str = typer.Option("mqtt://127.0.0.1:1883", "--broker",
                                     help="MQTT broker url (mqtts:// for TLS)."),
          site: str = typer.Option("+", "--site", help="Site id, or + for all sites."),
          refresh_s: float = typer.Option(1.0, "--refresh-s", help="Redraw interval."),
          duration_s: float = typer.Option(0.0, "--duration-s",
                                           help="Exit after this long (0 = until Ctrl-C)."),
          protocol: str = typer.Option("5", "--protocol", help="MQTT protocol: 5 or 3.1.1 "
                                       "(the demo's embedded broker)."),
          mark: str = typer.Option(None, "--mark", help="Instead of watching: label this "
                                   "incident (from the open alerts table) and exit."),
          label: str = typer.Option("false_alarm", "--label", help="With --mark: confirmed, "
                                    "false_alarm or maintenance_done."),
          device: str = typer.Option(None, "--device", help="With --mark: the device."),
          command_key: Path = typer.Option(None, "--command-key", help="With --mark: the "
                                           "ed25519 private key (PEM) that signs the "
                                           "command (default: the site's model-signing "
                                           "key); devices refuse unsigned feedback."),
          ) -> None:
    """Live view of devices, scores, open alerts and rollout progress; with --mark, send
    an operator's label of an incident on cmd/feedback (docs/learning.md)."""
    from rich.console import Console
    from rich.live import Live

    from foreshock.errors import ConfigError
    from gateway.watch_link import WatchSubscriber

    if protocol not in ("5", "3.1.1"):
        raise ConfigError(f"--protocol {protocol!r} is not allowed; use 5 or 3.1.1")
    if mark is not None:
        topic = send_feedback(broker, site, device, mark, label, protocol,
                              command_key=command_key)
        typer.echo(f"sent {label} for incident {mark} on {topic}")
        return
    model = WatchModel(site)
    subscriber = WatchSubscriber(broker, site, model, protocol=protocol)
    subscriber.start()
    deadline = time.monotonic() + duration_s if duration_s > 0 else float("inf")
    try:
        with Live(render(model), console=Console(), refresh_per_second=4,
                  screen=False) as live:
            while time.monotonic() < deadline:
                time.sleep(min(refresh_s, max(0.0, deadline - time.monotonic())))
                live.update(render(model))
    except KeyboardInterrupt:
        pass
    finally:
        subscriber.stop()


def send_feedback(broker: str, site: str, device: str | None, incident: str, label: str,
                  protocol: str = "5", timeout_s: float = 10.0,
                  command_key: Path | None = None) -> str:
    """Publish an operator's label on ``cmd/feedback`` (QoS 1, waits for the broker's ack),
    signed with ``command_key`` (default: the site's model-signing key, see
    :func:`gateway.config.command_key`); the device and the gateway's ingestor act on it.
    Needs an identity the broker lets publish commands (the gateway's)."""
    import getpass

    from foreshock.errors import ConfigError, LinkError
    from gateway.config import command_key as load_command_key
    from gateway.feedback import feedback_command
    from gateway.watch_link import WatchSubscriber

    if site == "+" or not device:
        raise ConfigError("--mark needs --site and --device")
    topic, payload = feedback_command(site, device, incident=incident, label=label,
                                      operator=getpass.getuser(), ts=time.time(),
                                      key=load_command_key(command_key))
    link = WatchSubscriber(broker, site, WatchModel(site), protocol=protocol)
    link.start()
    try:
        info = link.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise LinkError(f"broker {broker} did not acknowledge the feedback")
    finally:
        link.stop()
    return topic
