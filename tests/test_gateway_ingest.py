"""Gateway ingest against a real mosquitto: shared subscriptions, replay, bad payloads."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from foreshock import messages, topics
from foreshock.errors import ConfigError
from foreshock.messages import Batch, Record
from gateway.config import GatewayConfig
from gateway.service import Gateway
from gateway.store import open_store

T0 = 1_764_250_000.0


def telemetry(seq: int) -> Record:
    return Record(seq, T0 + seq, {
        "channel": 0, "window_ts": T0 + seq, "anomaly_score": 0.1, "fault": "normal",
        "fault_probability": 0.9, "rms_g": 0.2, "velocity_rms_mm_s": 1.1, "zone": "A"})


def alert(seq: int) -> Record:
    return Record(seq, T0 + seq, {
        "incident": "inc-9", "status": "raised", "severity": "warning", "channel": 1,
        "anomaly_score": 3.5, "threshold": 3.0, "fault": "inner_race", "zone": "B",
        "explanation": {"defect": "bpfi", "z": 6.1}, "model": {"name": "m", "version": "1.0.0"}})


class Device:
    """A plain paho client publishing like an agent would (QoS 1, waits for PUBACK)."""

    def __init__(self, broker_url: str, site: str, device: str, boot: str = "boot-1") -> None:
        host, port = broker_url.removeprefix("mqtt://").split(":")
        self.site, self.device, self.boot = site, device, boot
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=f"dev-{uuid.uuid4().hex[:8]}")
        self.client.connect(host, int(port))
        self.client.loop_start()

    def send(self, kind: str, records: list[Record]) -> None:
        batch = Batch(self.site, self.device, self.boot, kind, tuple(records), time.time())
        self.raw(topics.record(self.site, self.device, kind), messages.encode_batch(batch))

    def raw(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_for(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def site() -> str:
    return f"s{uuid.uuid4().hex[:8]}"


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for g in started:
        g.stop()


def start(gws: list[Gateway], cfg: GatewayConfig) -> Gateway:
    g = Gateway(cfg)
    g.start()
    gws.append(g)
    return g


def test_two_instances_on_a_shared_subscription_store_each_message_once(
        mosquitto: Any, site: str, tmp_path: Path, gateways: list[Gateway]) -> None:
    db = f"sqlite:///{tmp_path / 'gw.db'}"
    a = start(gateways, GatewayConfig.for_site(mosquitto.url, site, db, client_id=f"{site}-a"))
    b = start(gateways, GatewayConfig.for_site(mosquitto.url, site, db, client_id=f"{site}-b"))
    dev = Device(mosquitto.url, site, "pump-1")
    n_messages = 40
    for m in range(n_messages):
        dev.send("telemetry", [telemetry(m * 10 + i) for i in range(10)])
    dev.close()
    wait_for(lambda: a.stats().messages + b.stats().messages >= n_messages)
    time.sleep(0.3)  # a second delivery, if any, would land now
    sa, sb = a.stats(), b.stats()
    assert sa.messages + sb.messages == n_messages
    assert sa.messages > 0 and sb.messages > 0, "the broker should split the load"
    assert sa.records_stored + sb.records_stored == n_messages * 10
    assert sa.duplicates_dropped + sb.duplicates_dropped == 0
    store = open_store(db)
    assert store.count() == n_messages * 10 and store.gaps() == []
    store.close()


def test_backlog_replay_after_broker_outage_adds_no_duplicates(
        mosquitto_private: Any, site: str, tmp_path: Path, gateways: list[Gateway]) -> None:
    db = f"sqlite:///{tmp_path / 'gw.db'}"
    gw = start(gateways, GatewayConfig.for_site(mosquitto_private.url, site, db))
    dev = Device(mosquitto_private.url, site, "fan-3")
    for start_seq in range(0, 50, 10):
        dev.send("telemetry", [telemetry(i) for i in range(start_seq, start_seq + 10)])
    wait_for(lambda: gw.stats().records_stored == 50)
    dev.close()
    mosquitto_private.kill()
    mosquitto_private.start()
    gw._subscribed.clear()
    wait_for(gw._subscribed.is_set, 15)
    # the agent did not see PUBACKs for 30..49 before the outage, so it sends them again
    dev = Device(mosquitto_private.url, site, "fan-3")
    for start_seq in range(30, 100, 10):
        dev.send("telemetry", [telemetry(i) for i in range(start_seq, start_seq + 10)])
    dev.close()
    wait_for(lambda: gw.stats().messages == 12)
    stats = gw.stats()
    assert stats.records_stored == 100 and stats.duplicates_dropped == 20
    assert gw.store.count() == 100 and gw.store.gaps() == []


def test_invalid_payloads_are_counted_and_the_gateway_keeps_running(
        mosquitto: Any, site: str, tmp_path: Path, gateways: list[Gateway]) -> None:
    gw = start(gateways, GatewayConfig.for_site(mosquitto.url, site,
                                                f"sqlite:///{tmp_path / 'gw.db'}"))
    dev = Device(mosquitto.url, site, "press-1")
    tele = topics.record(site, "press-1", "telemetry")
    good = Batch(site, "press-1", "b", "telemetry", (telemetry(1),)).to_json()
    dev.raw(tele, b"\x00\xffnot json")
    dev.raw(tele, b"[1, 2]")
    dev.raw(tele, messages.dumps({**good, "schema": "foreshock.batch/9"}))
    dev.raw(tele, messages.dumps({**good, "records": [{"seq": 1, "ts": 1.0, "body": {}}]}))
    dev.raw(tele, messages.dumps({**good, "device": "someone-else"}))
    dev.raw(topics.record(site, "press-1", "alert"), messages.dumps(good))  # kind mismatch
    dev.raw(topics.state(site, "press-1"), b'{"schema": "foreshock.state/1"}')
    dev.send("telemetry", [telemetry(2)])
    wait_for(lambda: gw.stats().records_stored == 1)
    stats = gw.stats()
    assert stats.invalid == 7 and stats.invalid_by_device == {"press-1": 7}
    assert stats.messages == 8
    dev.close()


def test_alerts_republished_on_control_topic_and_state_tracked(
        mosquitto: Any, site: str, tmp_path: Path, gateways: list[Gateway]) -> None:
    gw = start(gateways, GatewayConfig.for_site(mosquitto.url, site,
                                                f"sqlite:///{tmp_path / 'gw.db'}"))
    seen: list[bytes] = []
    host, port = mosquitto.url.removeprefix("mqtt://").split(":")
    room = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    room.on_message = lambda c, u, m: seen.append(bytes(m.payload))
    room.connect(host, int(port))
    room.subscribe(topics.control_alert(site), qos=1)
    room.loop_start()
    time.sleep(0.3)
    dev = Device(mosquitto.url, site, "gear-2")
    dev.raw(topics.state(site, "gear-2"), messages.state_message(
        site, "gear-2", online=True, boot_id="boot-1", ts=time.time(), agent_version="0.1.0",
        model={"name": "m", "version": "1.0.0"}))
    dev.send("alert", [alert(5), alert(6)])
    dev.send("alert", [alert(5)])  # a duplicate is not re-published
    wait_for(lambda: len(seen) == 2)
    time.sleep(0.3)
    room.loop_stop()
    room.disconnect()
    dev.close()
    assert len(seen) == 2
    first = messages.decode_batch(seen[0])
    assert first.device == "gear-2" and first.records[0].body["explanation"]["defect"] == "bpfi"
    assert gw.stats().alerts_published == 2
    fleet = gw.store.devices(site)
    assert fleet[0].online is True and fleet[0].last_alert_incident == "inc-9"


def test_config_loads_from_toml_and_rejects_bad_keys(tmp_path: Path) -> None:
    sample = Path(__file__).resolve().parent.parent / "gateway" / "gateway.toml.sample"
    cfg = GatewayConfig.load(sample)
    assert cfg.share_group == "foreshock-gateway"
    bad = tmp_path / "gw.toml"
    bad.write_text('[gateway]\nbroker_url = "mqtt://h:1883"\nsite = "bad site"\n')
    with pytest.raises(ConfigError, match="site"):
        GatewayConfig.load(bad)
    bad.write_text('[gateway]\nbrokr_url = "mqtt://h"\n')
    with pytest.raises(ConfigError, match="brokr_url"):
        GatewayConfig.load(bad)
    with pytest.raises(ConfigError, match="broker_url"):
        GatewayConfig.for_site("http://x", "plant1", "sqlite:///x.db")


def test_model_status_is_recorded_for_the_fleet_view(
        mosquitto: Any, site: str, tmp_path: Path, gateways: list[Gateway]) -> None:
    from gateway.store import RolloutRow

    gw = start(gateways, GatewayConfig.for_site(mosquitto.url, site,
                                                f"sqlite:///{tmp_path / 'gw.db'}"))
    gw.store.save_rollout(RolloutRow("r9", "m", "2.0.0", site, 1, 20.0, "canary", T0, T0))
    dev = Device(mosquitto.url, site, "kiln-1")
    status = {"schema": "foreshock.model_status/1", "site": site, "device": "kiln-1",
              "rollout_id": "r9", "bundle": {"name": "m", "version": "2.0.0"},
              "status": "shadow", "ts": T0}
    dev.raw(topics.model_status(site, "kiln-1"), messages.dumps(status))
    dev.raw(topics.model_status(site, "kiln-1"), messages.dumps({**status, "status": "meh"}))
    dev.close()
    wait_for(lambda: gw.stats().messages == 2)
    wait_for(lambda: len(gw.store.rollout_devices("r9")) == 1)
    assert gw.store.rollout_devices("r9")[0].status == "shadow"
    assert gw.stats().invalid == 1


def test_store_failure_leaves_message_unacked_and_it_is_redelivered(
        mosquitto: Any, site: str, postgres_dsn: str, gateways: list[Gateway]) -> None:
    import psycopg

    gw = start(gateways, GatewayConfig.for_site(mosquitto.url, site, postgres_dsn,
                                                client_id=f"{site}-pg", store_retry_s=0.3))
    dev = Device(mosquitto.url, site, "chiller-1")
    dev.send("telemetry", [telemetry(i) for i in range(10)])
    wait_for(lambda: gw.stats().records_stored == 10)
    backend_pid = gw.store.conn.info.backend_pid  # type: ignore[attr-defined]
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))
    dev.send("telemetry", [telemetry(i) for i in range(10, 20)])
    dev.close()
    wait_for(lambda: gw.stats().store_errors >= 1)
    wait_for(lambda: gw.stats().records_stored == 20, 20)
    assert gw.store.count() == 20 and gw.store.gaps() == []
    assert gw.stats().duplicates_dropped == 0


def test_retained_fleet_summary_matches_its_schema(
        mosquitto: Any, site: str, tmp_path: Path, gateways: list[Gateway]) -> None:
    import json

    import jsonschema

    gw = start(gateways, GatewayConfig.for_site(mosquitto.url, site,
                                                f"sqlite:///{tmp_path / 'gw.db'}",
                                                fleet_interval_s=0.2))
    dev = Device(mosquitto.url, site, "boiler-1")
    dev.raw(topics.state(site, "boiler-1"), messages.state_message(
        site, "boiler-1", online=True, boot_id="boot-1", ts=time.time(), agent_version="0.1.0",
        model={"name": "m", "version": "1.0.0"}))
    dev.send("alert", [alert(3)])
    wait_for(lambda: gw.stats().records_stored == 1)
    time.sleep(0.5)
    got: list[bytes] = []
    dev.client.on_message = lambda c, u, m: got.append(bytes(m.payload))
    dev.client.subscribe(topics.control_fleet(site), qos=1)  # retained: arrives at once
    wait_for(lambda: bool(got))
    dev.close()
    summary = json.loads(got[0])
    schema = json.loads((Path(__file__).resolve().parent.parent / "docs" / "schemas"
                         / "fleet.json").read_text())
    jsonschema.validate(summary, schema)
    (device,) = summary["devices"]
    assert device["device"] == "boiler-1" and device["online"] is True
    assert device["last_alert"]["incident"] == "inc-9"
    dev2 = Device(mosquitto.url, site, "boiler-1")  # clean up the retained summary
    dev2.client.publish(topics.control_fleet(site), b"", retain=True).wait_for_publish(5)
    dev2.close()


class Burst:
    """Holds the gateway's writer thread in a message hook (after the first message's
    commit) so the messages published meanwhile wait in its queue, then lets it go."""

    def __init__(self, gw: Gateway) -> None:
        import threading

        self.gw = gw
        self.entered, self.release = threading.Event(), threading.Event()
        gw.hooks.append(self._hook)

    def _hook(self, topic: str, payload: bytes) -> None:
        self.entered.set()
        self.release.wait(30)

    def queued(self, n: int) -> None:
        wait_for(lambda: self.gw._queue.qsize() == n)


def publish_all(dev: Device, items: list[tuple[str, bytes]]) -> list[Any]:
    """Publish without waiting for each PUBACK (the broker's, not the gateway's)."""
    return [dev.client.publish(topic, payload, qos=1) for topic, payload in items]


def tele_payload(site: str, device: str, seqs: range, note: str = "") -> tuple[str, bytes]:
    records = tuple(Record(r.seq, r.ts, {**r.body, "note": note}) if note else r
                    for r in (telemetry(s) for s in seqs))
    batch = Batch(site, device, "boot-1", "telemetry", records, time.time())
    return topics.record(site, device, "telemetry"), messages.encode_batch(batch)


def redelivered(mosquitto: Any, site: str, db: str, client_id: str,
                gateways: list[Gateway], **kw: Any) -> Gateway:
    """A second gateway under the same client id (the same MQTT session) that has taken
    whatever the broker delivers again (unacknowledged messages come first, before a
    marker message published after it subscribed)."""
    gw = start(gateways, GatewayConfig.for_site(mosquitto.url, site, db, client_id=client_id,
                                                **kw))
    marker = Device(mosquitto.url, site, "marker-1")
    marker.send("telemetry", [telemetry(0)])
    marker.close()
    wait_for(lambda: len(gw.store.records(device="marker-1")) == 1)
    return gw


def test_a_burst_is_stored_in_one_transaction_and_acked(
        mosquitto: Any, site: str, tmp_path: Path, gateways: list[Gateway]) -> None:
    db = f"sqlite:///{tmp_path / 'gw.db'}"
    gw = start(gateways, GatewayConfig.for_site(mosquitto.url, site, db,
                                                client_id=f"{site}-g"))
    burst = Burst(gw)
    dev = Device(mosquitto.url, site, "mill-1")
    infos = publish_all(dev, [tele_payload(site, "mill-1", range(0, 5))])
    assert burst.entered.wait(10)  # the writer holds the first message
    n = 30
    infos += publish_all(dev, [tele_payload(site, "mill-1", range(5 * m, 5 * m + 5))
                               for m in range(1, n + 1)])
    burst.queued(n)
    burst.release.set()
    wait_for(lambda: gw.stats().records_stored == 5 * (n + 1))
    for info in infos:
        info.wait_for_publish(10)
    dev.close()
    stats = gw.stats()
    assert (stats.messages, stats.groups, stats.largest_group) == (n + 1, 2, n)
    assert stats.groups_split == 0 and stats.store_errors == 0 and stats.invalid == 0
    assert gw.store.count() == 5 * (n + 1) and gw.store.gaps() == []
    gw.stop()
    again = redelivered(mosquitto, site, db, f"{site}-g", gateways)
    assert again.stats().messages == 1, "the burst was acknowledged: nothing came again"


def test_a_group_with_an_invalid_and_a_refused_message_is_split_and_both_are_dropped(
        mosquitto: Any, site: str, postgres_dsn: str, gateways: list[Gateway]) -> None:
    # PostgreSQL refuses a NUL character in JSON text: the store fails on one message's data
    gw = start(gateways, GatewayConfig.for_site(mosquitto.url, site, postgres_dsn,
                                                client_id=f"{site}-pg", store_retry_s=600))
    burst = Burst(gw)
    dev = Device(mosquitto.url, site, "kiln-2")
    tele = topics.record(site, "kiln-2", "telemetry")
    publish_all(dev, [tele_payload(site, "kiln-2", range(0, 2))])
    assert burst.entered.wait(10)
    publish_all(dev, [tele_payload(site, "kiln-2", range(2, 4)),
                      (tele, b"[1, 2]"),
                      tele_payload(site, "kiln-2", range(4, 6)),
                      tele_payload(site, "kiln-2", range(6, 8), note="nul \x00 here"),
                      tele_payload(site, "kiln-2", range(8, 10))])
    burst.queued(5)
    burst.release.set()
    wait_for(lambda: gw.stats().invalid == 2 and gw.stats().messages == 6)
    dev.close()
    stats = gw.stats()
    assert stats.groups_split == 1 and stats.store_errors == 0
    assert stats.gaps == 1        # records 6 and 7 never stored: the fleet view shows the gap
    assert stats.invalid_by_device == {"kiln-2": 2}
    assert stats.records_stored == 8 and stats.duplicates_dropped == 0
    # the first message's group, then the good and the invalid ones one by one
    assert stats.groups == 1 + 4
    seqs = [r.seq for r in gw.store.records(device="kiln-2")]
    assert seqs == [0, 1, 2, 3, 4, 5, 8, 9]
    gw.stop()
    again = redelivered(mosquitto, site, postgres_dsn, f"{site}-pg", gateways,
                        store_retry_s=600)
    # the refused one was counted invalid and acknowledged: nothing comes again (it would
    # fail the same way on every redelivery, for ever)
    assert again.stats().messages == 1 and again.stats().store_errors == 0
    assert [r.seq for r in again.store.records(device="kiln-2")] == seqs


def test_stop_stores_and_acks_what_is_queued(
        mosquitto: Any, site: str, tmp_path: Path, gateways: list[Gateway]) -> None:
    import threading

    db = f"sqlite:///{tmp_path / 'gw.db'}"
    gw = start(gateways, GatewayConfig.for_site(mosquitto.url, site, db,
                                                client_id=f"{site}-s"))
    burst = Burst(gw)
    dev = Device(mosquitto.url, site, "lathe-1")
    publish_all(dev, [tele_payload(site, "lathe-1", range(0, 3))])
    assert burst.entered.wait(10)
    publish_all(dev, [tele_payload(site, "lathe-1", range(3 * m, 3 * m + 3))
                      for m in range(1, 11)])
    burst.queued(10)
    stopper = threading.Thread(target=gw.stop)
    stopper.start()
    wait_for(gw._stopping.is_set)
    burst.release.set()
    stopper.join(30)
    dev.close()
    assert not stopper.is_alive()
    assert gw.stats().records_stored == 33 and gw.stats().messages == 11
    again = redelivered(mosquitto, site, db, f"{site}-s", gateways)
    assert again.stats().messages == 1, "stop() acknowledged what it stored"
    assert again.store.count() == 34


def test_messages_of_a_replaced_connection_are_dropped_not_acked(
        mosquitto: Any, site: str, tmp_path: Path, gateways: list[Gateway]) -> None:
    db = f"sqlite:///{tmp_path / 'gw.db'}"
    gw = start(gateways, GatewayConfig.for_site(mosquitto.url, site, db,
                                                client_id=f"{site}-r"))
    burst = Burst(gw)
    dev = Device(mosquitto.url, site, "saw-1")
    publish_all(dev, [tele_payload(site, "saw-1", range(0, 5))])
    assert burst.entered.wait(10)  # stored, not yet acknowledged
    n = 12
    publish_all(dev, [tele_payload(site, "saw-1", range(5 * m, 5 * m + 5))
                      for m in range(1, n + 1)])
    burst.queued(n)
    gw._recover()  # the reconnect a store failure schedules: a new connection
    # the broker delivers the unacknowledged ones again: the held one and the n queued
    burst.queued(n + n + 1)
    burst.release.set()
    wait_for(lambda: gw.stats().records_stored == 5 * (n + 1))
    dev.close()
    stats = gw.stats()
    # the n copies from the old connection were dropped unstored (stored, they would
    # have come back as duplicates); the held message came again and is a duplicate
    assert stats.duplicates_dropped == 5 and stats.messages == n + 2
    assert gw.store.count() == 5 * (n + 1)
