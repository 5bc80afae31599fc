"""Operator feedback on alerts: confirmed, false alarm, maintenance done.

A label is stored in the ``feedback`` table (schema migration 2) with the labelled alert's
features: the baseline z-scores the agent put in the alert's explanation (``features_z``,
every feature; older agents: ``top_features`` only). Never raw waveforms. This is the
fleet's labelled feature store that ``foreshock model build --from-gateway`` trains from.

Ways in:

* ``foreshock gateway feedback ALERT_ID|--incident ID --label L`` (this module's
  :func:`record`), where ALERT_ID is the ``id`` of a stored alert record; with a broker
  (``--broker``, or ``--config``'s ``broker_url``) it also publishes the signed
  ``cmd/feedback`` below to the alert's device (:func:`publish_command`), and a running
  gateway that sees it does not record it twice;
* the command topic ``foreshock/v1/<site>/<device>/cmd/feedback`` with a
  ``foreshock.command/1`` message, ``args = {"incident": ..., "label": ..., "note": ...}``
  (:func:`feedback_command` builds it, e.g. from ``foreshock watch``): the device gets it
  (``maintenance_done`` lets the agent re-learn its baseline) and the gateway's ingestor
  records it (:func:`record_command`).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from foreshock import messages, topics
from foreshock.errors import ConfigError, LinkError, MessageError
from gateway.config import GatewayConfig
from gateway.store import Store

log = logging.getLogger(__name__)
LABELS = ("confirmed", "false_alarm", "maintenance_done")
ALERT_COLS = ("id", "site", "device", "incident", "status", "channel", "anomaly_score",
              "threshold", "fault", "ts", "explanation", "model")
FEEDBACK_COLS = ("id", "site", "device", "incident", "alert_id", "channel", "label", "ts",
                 "source", "operator", "note", "fault", "anomaly_score", "threshold",
                 "alert_ts", "features", "model")


@dataclass(frozen=True)
class Feedback:
    """One stored label (``features``: feature name -> baseline z of the labelled alert)."""

    id: int
    site: str
    device: str
    incident: str
    alert_id: int | None
    channel: int
    label: str
    ts: float
    source: str
    operator: str
    note: str
    fault: str
    anomaly_score: float | None
    threshold: float | None
    alert_ts: float | None
    features: dict[str, float]
    model: dict[str, Any]


def check_label(label: str) -> str:
    if label not in LABELS:
        raise ConfigError(f"label {label!r} is not one of {', '.join(LABELS)}")
    return label


def features_of(explanation: dict[str, Any]) -> dict[str, float]:
    """Feature name -> baseline z from an alert explanation (all features when the agent
    sent ``features_z``, else its top features)."""
    full = explanation.get("features_z")
    if isinstance(full, dict) and full:
        return {str(k): float(v) for k, v in full.items() if isinstance(v, (int, float))}
    out = {}
    for item in explanation.get("top_features") or []:
        if isinstance(item, dict) and isinstance(item.get("z"), (int, float)):
            out[str(item.get("name"))] = float(item["z"])
    return out


def find_alert(store: Store, *, alert_id: int | None = None,
               incident: str | None = None) -> dict[str, Any]:
    """The alert record with ``alert_id``, or the incident's most anomalous raised/updated
    record; ConfigError when there is none."""
    cols = ", ".join(ALERT_COLS)
    if alert_id is not None:
        rows = store._query(f"SELECT {cols} FROM alerts WHERE id = ?", (alert_id,))
        what = f"alert {alert_id}"
    elif incident:
        rows = store._query(f"SELECT {cols} FROM alerts WHERE incident = ? AND status <> "
                            "'cleared' ORDER BY anomaly_score DESC, ts LIMIT 1", (incident,))
        what = f"incident {incident!r}"
    else:
        raise ConfigError("give an alert id or --incident")
    if not rows:
        raise ConfigError(f"no stored {what}", hint="see `foreshock gateway export --kind "
                          "alerts` for stored alerts")
    row = dict(zip(ALERT_COLS, rows[0], strict=True))
    row["explanation"], row["model"] = _obj(row["explanation"]), _obj(row["model"])
    return row


def record(store: Store, *, label: str, operator: str, ts: float, alert_id: int | None = None,
           incident: str | None = None, note: str = "", source: str = "cli") -> Feedback:
    """Label an alert (or an incident) and store it with the alert's features."""
    check_label(label)
    a = find_alert(store, alert_id=alert_id, incident=incident)
    values = (a["site"], a["device"], a["incident"], a["id"], a["channel"], label, ts, source,
              operator, note, a["fault"], a["anomaly_score"], a["threshold"], a["ts"],
              store._json(features_of(a["explanation"])), store._json(a["model"]))
    with store._tx() as cur:
        store._exec(cur, f"INSERT INTO feedback ({', '.join(FEEDBACK_COLS[1:])}) VALUES "
                    f"({', '.join('?' * len(values))})", values)
    log.info("feedback %s on %s/%s incident %s by %s", label, a["site"], a["device"],
             a["incident"], operator)
    return rows(store, incident=a["incident"])[-1]


def rows(store: Store, *, device: str | None = None, incident: str | None = None,
         label: str | None = None) -> list[Feedback]:
    """Stored feedback, oldest first, optionally filtered."""
    clauses, params = [], []
    for col, value in (("device", device), ("incident", incident), ("label", label)):
        if value is not None:
            clauses.append(f"{col} = ?")
            params.append(value)
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    out = store._query(f"SELECT {', '.join(FEEDBACK_COLS)} FROM feedback{where} "
                       "ORDER BY ts, id", params)
    return [_feedback(dict(zip(FEEDBACK_COLS, r, strict=True))) for r in out]


def latest_labels(store: Store) -> list[Feedback]:
    """One label per incident: the most recent (an operator may correct a label)."""
    by_incident: dict[str, Feedback] = {}
    for fb in rows(store):
        by_incident[fb.incident] = fb
    return list(by_incident.values())


def feedback_command(site: str, device: str, *, incident: str, label: str, operator: str,
                     ts: float, note: str = "",
                     key: Ed25519PrivateKey | None = None) -> tuple[str, bytes]:
    """(topic, payload) of the ``cmd/feedback`` message for one incident; the agent runs
    it only when signed with ``key`` (the site's command key, docs/gateway.md)."""
    check_label(label)
    payload = messages.command_message("feedback", {"incident": incident, "label": label,
                                                    "note": note}, issued_by=operator, ts=ts,
                                       command_id=uuid.uuid4().hex[:16], key=key)
    return topics.command(site, device, "feedback"), payload


def publish_command(config: GatewayConfig, topic: str, payload: bytes,
                    timeout_s: float = 10.0) -> None:
    """Publish one command (QoS 1) with the gateway's broker identity (``broker_url``,
    ``username``/``password``, TLS files) and wait for the broker's acknowledgement;
    LinkError when the broker cannot be reached, refuses us or does not acknowledge."""
    import threading

    from gateway.config import broker

    addr = broker(config.broker_url)
    client = config.mqtt_client(f"foreshock-feedback-{uuid.uuid4().hex[:8]}")
    connected, refused = threading.Event(), []

    def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(addr.host, addr.port, 30)
    except OSError as exc:
        raise LinkError(f"cannot connect to broker {config.broker_url}: {exc}",
                        hint="check --broker / broker_url and that the broker runs") from None
    client.loop_start()
    try:
        if not connected.wait(timeout_s) or refused:
            raise LinkError(f"broker {config.broker_url} refused the connection: "
                            f"{refused[0] if refused else 'no answer'}")
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise LinkError(f"broker {config.broker_url} did not acknowledge {topic}")
    finally:
        client.disconnect()
        client.loop_stop()


def record_command(store: Store, site: str, device: str, payload: bytes,
                   received_ts: float) -> Feedback:
    """Record a ``cmd/feedback`` message seen on the broker; MessageError when malformed.
    A command the CLI published after storing the same label (same incident, label,
    operator and ``ts``) is not stored again: the stored row is returned."""
    cmd = messages.decode_command(payload)
    args = cmd["args"]
    incident, label = args.get("incident"), args.get("label")
    if cmd["command"] != "feedback" or not isinstance(incident, str) or label not in LABELS:
        raise MessageError("feedback command needs args.incident (string) and args.label "
                           f"in {LABELS}")
    try:
        alert = find_alert(store, incident=incident)
    except ConfigError as exc:
        raise MessageError(str(exc)) from None
    if (alert["site"], alert["device"]) != (site, device):
        raise MessageError(f"incident {incident} is not from {site}/{device}")
    note = args.get("note") if isinstance(args.get("note"), str) else ""
    operator = str(cmd.get("issued_by") or "?")
    sent_ts = cmd.get("ts")
    if isinstance(sent_ts, (int, float)):
        for prior in reversed(rows(store, incident=incident)):
            if (prior.source, prior.label, prior.operator) == ("cli", label, operator) \
                    and abs(prior.ts - float(sent_ts)) < 1e-3:
                return prior
    return record(store, label=label, operator=operator, ts=received_ts, incident=incident,
                  note=note, source="mqtt")


def _feedback(row: dict[str, Any]) -> Feedback:
    row["features"], row["model"] = _obj(row["features"]), _obj(row["model"])
    return Feedback(**row)


def _obj(value: Any) -> Any:
    import json

    return json.loads(value) if isinstance(value, str) else value
