"""The MQTT link against a real mosquitto: backlog counts, broker restart mid-stream, last
will, birth message, commands, backoff. Outboxes are real SQLite files under tmp_path."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.link import Link, LinkConfig, backoff_s
from agent.outbox import Outbox
from foreshock import messages, topics
from foreshock.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONF_TEMPLATE = Path(__file__).with_name("mosquitto.conf.in")
NOW = 1_764_250_000.0
SITE = "plant1"

TELEMETRY = {"channel": 0, "window_ts": NOW, "anomaly_score": 0.1, "fault": "normal",
             "fault_probability": 0.9, "rms_g": 0.2, "velocity_rms_mm_s": 1.1, "zone": "A"}
ALERT = {"incident": "inc-1", "status": "raised", "severity": "alarm", "channel": 0,
         "anomaly_score": 3.2, "threshold": 2.0, "fault": "outer_race", "zone": "C",
         "explanation": {}, "model": {"name": "m", "version": "1"}}


def wait_for(pred: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


class Collector:
    """A control-room subscriber (paho, MQTT 5) that keeps every message it receives.

    With a fixed client id and a session expiry it keeps its session across its own and
    the broker's restarts (when the broker persists), so nothing queued for it is lost."""

    def __init__(self, broker: Any, topic_filter: str, *, persistent: bool = False) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"collector-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(1, 2)
        self.subscribed = threading.Event()
        self.topic_filter = topic_filter
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600 if persistent else 0
        self.client.connect(broker.host, broker.port, clean_start=not persistent,
                            properties=props)
        self.client.loop_start()
        assert self.subscribed.wait(10), "collector could not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(msg)

    def batches(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return [(m.topic, bytes(m.payload)) for m in self.messages
                    if topics.parse(m.topic)[2] in topics.RECORD_KINDS]

    def records(self) -> list[tuple[str, str, int]]:
        """(kind, boot_id, seq) of every record received, duplicates included."""
        out = []
        for _topic, payload in self.batches():
            batch = messages.decode_batch(payload)
            out += [(batch.kind, batch.boot_id, r.seq) for r in batch.records]
        return out

    def states(self) -> list[dict[str, Any]]:
        with self.lock:
            return [messages.decode_state(bytes(m.payload)) for m in self.messages
                    if m.topic.endswith("/state")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def device() -> str:
    return f"dev-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def collectors() -> Iterator[list[Collector]]:
    made: list[Collector] = []
    yield made
    for c in made:
        c.close()


@pytest.fixture
def links() -> Iterator[list[Link]]:
    made: list[Link] = []
    yield made
    for link in made:
        link.stop()


def make_link(links: list[Link], broker: Any, device: str, boot_id: str,
              **overrides: Any) -> Link:
    config = LinkConfig(broker.url, SITE, device, **{"backoff_min_s": 0.05,
                                                      "backoff_max_s": 0.5, **overrides})
    link = Link(config, boot_id=boot_id, model={"name": "bearing-mlp", "version": "3"})
    links.append(link)
    link.start()
    return link


def fill(outbox: Outbox, telemetry: int, alerts: int = 0) -> set[tuple[str, str, int]]:
    expected = set()
    for start in range(0, telemetry, 1000):
        n = min(1000, telemetry - start)
        seqs = outbox.put_many("telemetry", [(TELEMETRY, NOW + start + i) for i in range(n)])
        expected |= {("telemetry", outbox.boot_id, s) for s in seqs}
    for i in range(alerts):
        expected.add(("alert", outbox.boot_id, outbox.put("alert", ALERT, NOW + i)))
    return expected


def test_backlog_arrives_exactly_once_in_bounded_batches_alerts_first(
        mosquitto: Any, tmp_path: Path, device: str, collectors: list[Collector],
        links: list[Link]) -> None:
    col = Collector(mosquitto, f"{topics.device_root(SITE, device)}/#")
    collectors.append(col)
    outbox = Outbox(tmp_path / "outbox.db", boot_id="boot-1")
    expected = fill(outbox, 3000)
    expected |= {("event", "boot-1", outbox.put("event", {"type": "outbox", "detail": {}}, NOW)),
                 ("health", "boot-1", outbox.put("health", {"uptime_s": 1.0, "counters": {}},
                                                 NOW))}
    expected |= fill(outbox, 0, alerts=5)
    link = make_link(links, mosquitto, device, "boot-1", batch_max_records=200,
                     batch_max_bytes=20_000, max_inflight=4)
    assert link.wait_connected(10)
    assert link.drain(outbox, timeout_s=30) == len(expected)
    assert wait_for(lambda: len(col.records()) >= len(expected))
    time.sleep(0.2)
    got = col.records()
    assert Counter(got) == Counter(expected)  # exactly once, none missing
    batches = col.batches()
    assert all(len(p) <= 20_000 for _, p in batches)
    assert all(len(messages.decode_batch(p).records) <= 200 for _, p in batches)
    assert topics.parse(batches[0][0])[2] == "alert"
    assert sum(d.rows for d in outbox.depth().values()) == 0
    stats = link.stats()
    assert stats["published_msgs"] == len(batches)
    assert stats["published_records"] == stats["acked_records"] == len(expected)
    assert 1 <= stats["inflight_peak"] <= 4
    assert outbox.counters()["telemetry"]["acked"] == 3000
    outbox.close()


def test_inflight_window_respects_the_brokers_receive_maximum(
        make_mosquitto: Callable[[str], Any], tmp_path: Path, device: str,
        links: list[Link]) -> None:
    broker = make_mosquitto(CONF_TEMPLATE.read_text().replace(
        "max_inflight_messages 100", "max_inflight_messages 3"))
    outbox = Outbox(tmp_path / "outbox.db", boot_id="boot-w")
    expected = fill(outbox, 2000)
    link = make_link(links, broker, device, "boot-w", max_inflight=16, batch_max_records=20)
    assert link.wait_connected(10)
    assert link.drain(outbox, timeout_s=20) == len(expected)
    assert link.stats()["inflight_peak"] == 3 and link.stats()["reconnects"] == 0


def test_puback_with_a_failure_reason_acks_nothing(
        make_mosquitto: Callable[[str], Any], tmp_path: Path, device: str,
        links: list[Link]) -> None:
    acl = tmp_path / "acl"
    acl.write_text(f"topic readwrite {topics.record(SITE, device, 'telemetry')}\n"
                   f"topic readwrite {topics.state(SITE, device)}\n")  # no alert topic
    # mosquitto 2.0.11 with max_queued_messages 0 drops a client right after denying its
    # publish ("Bad socket read/write"); the link copes, but this test is about the PUBACK
    conf = CONF_TEMPLATE.read_text().replace("max_queued_messages 0", "")
    broker = make_mosquitto(conf + f"acl_file {acl}\nuser root\n")
    outbox = Outbox(tmp_path / "outbox.db", boot_id="boot-a")
    expected = fill(outbox, 100, alerts=2)
    link = make_link(links, broker, device, "boot-a")
    assert link.wait_connected(10)
    assert link.drain(outbox, timeout_s=5) == 100  # MQTT 5 PUBACK 0x87 for the alerts
    assert link.stats()["rejected_msgs"] == 1
    assert outbox.depth()["alert"].rows == 2 and outbox.depth()["telemetry"].rows == 0
    acl.write_text(acl.read_text() + f"topic readwrite {topics.record(SITE, device, 'alert')}\n")
    broker.restart()
    assert wait_for(lambda: link.stats()["reconnects"] >= 1, 20) and link.wait_connected(10)
    assert link.drain(outbox, timeout_s=5) == 2
    assert sum(d.rows for d in outbox.depth().values()) == 0
    assert outbox.counters()["alert"]["acked"] == 2
    assert len(expected) == 102
    outbox.close()


def test_nothing_is_acked_without_a_puback(
        mosquitto_private: Any, tmp_path: Path, device: str, collectors: list[Collector],
        links: list[Link]) -> None:
    outbox = Outbox(tmp_path / "outbox.db", boot_id="boot-p")
    expected = fill(outbox, 3000, alerts=3)
    link = make_link(links, mosquitto_private, device, "boot-p", batch_max_records=100,
                     max_inflight=8)
    assert link.wait_connected(10)
    assert mosquitto_private.proc is not None
    os.kill(mosquitto_private.proc.pid, signal.SIGSTOP)  # the broker hangs: no PUBACKs
    try:
        assert link.drain(outbox, timeout_s=1.0) == 0
        assert link.stats()["published_msgs"] == 8  # a full window went out, unanswered
    finally:
        mosquitto_private.kill()  # the connection dies with the messages in flight
    assert wait_for(lambda: not link.connected, 10)
    assert link.drain(outbox, timeout_s=1.0) == 0
    assert sum(d.rows for d in outbox.depth().values()) == len(expected)  # all still here
    mosquitto_private.start()
    col = Collector(mosquitto_private, f"{topics.device_root(SITE, device)}/#")
    collectors.append(col)
    assert link.wait_connected(10)
    assert link.drain(outbox, timeout_s=20) == len(expected)
    assert wait_for(lambda: Counter(col.records()) == Counter(expected))
    outbox.close()


def persistent_broker(make_mosquitto: Callable[[str], Any]) -> Any:
    """The test broker config, with persistence so a stopped broker keeps the collector's
    session and the messages queued for it (stop is SIGTERM: mosquitto saves on exit)."""
    text = CONF_TEMPLATE.read_text().replace(
        "persistence false",
        "persistence true\npersistence_location {workdir}/\npersistence_file broker-{port}.db"
        "\nuser root")  # as root, mosquitto would drop to a user that cannot write there
    return make_mosquitto(text)


def test_broker_restart_mid_stream_loses_nothing(
        make_mosquitto: Callable[[str], Any], tmp_path: Path, device: str,
        collectors: list[Collector], links: list[Link]) -> None:
    broker = persistent_broker(make_mosquitto)
    col = Collector(broker, f"{topics.device_root(SITE, device)}/#", persistent=True)
    collectors.append(col)
    outbox = Outbox(tmp_path / "outbox.db", boot_id="boot-r")
    expected = fill(outbox, 20_000, alerts=10)
    link = make_link(links, broker, device, "boot-r", batch_max_records=50, max_inflight=4)
    assert link.wait_connected(10)
    drainer = threading.Thread(target=link.drain, args=(outbox,), kwargs={"timeout_s": 60})
    drainer.start()
    assert wait_for(lambda: len(col.records()) >= 2000)
    broker.stop()
    assert (broker.workdir / f"broker-{broker.port}.db").exists(), "broker did not persist"
    drainer.join(30)
    assert not drainer.is_alive() and not link.connected
    assert outbox.depth()["telemetry"].rows > 0  # the outage really was mid-stream
    broker.start()
    assert link.wait_connected(20)
    while sum(d.rows for d in outbox.depth().values()):
        assert link.wait_connected(20)
        link.drain(outbox, timeout_s=30)
    ok = wait_for(lambda: set(col.records()) >= expected, 30)
    missing = sorted(expected - set(col.records()))
    assert ok, f"{len(missing)} records missing, first {missing[:3]}; {link.stats()}"
    got = col.records()
    assert len(got) >= len(expected)
    assert set(got) == expected  # after de-dup by (boot_id, seq): exactly once, none missing
    assert link.stats()["reconnects"] >= 1
    assert sum(1 for s in col.states() if s["online"] and s["boot_id"] == "boot-r") >= 2
    outbox.close()


DRAIN_CHILD = """
import sys
from agent.link import Link, LinkConfig
from agent.outbox import Outbox
outbox = Outbox(sys.argv[3], boot_id="boot-m")
link = Link(LinkConfig(sys.argv[1], "plant1", sys.argv[2], batch_max_records=20,
                       max_inflight=2), boot_id="boot-m")
link.start()
assert link.wait_connected(10)
print("draining", flush=True)
while True:
    link.drain(outbox, timeout_s=60)
"""


def test_agent_killed_mid_drain_resends_the_rest_after_restart(
        mosquitto: Any, tmp_path: Path, device: str, collectors: list[Collector],
        links: list[Link]) -> None:
    col = Collector(mosquitto, f"{topics.device_root(SITE, device)}/#")
    collectors.append(col)
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, boot_id="boot-m")
    expected = fill(outbox, 20_000, alerts=5)  # about 1,000 small messages: takes a while
    outbox.close()
    proc = subprocess.Popen([sys.executable, "-c", DRAIN_CHILD, mosquitto.url, device,
                             str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "draining"
        assert wait_for(lambda: len(col.records()) >= 1000)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    time.sleep(0.3)
    before = set(col.records())
    outbox = Outbox(path, boot_id="boot-after")
    left = {(k, "boot-m", rid) for k in ("alert", "telemetry")
            for rid, _ in outbox.pending(k, 10**6)}
    assert 0 < len(left) < len(expected)  # killed mid-drain
    assert expected - before <= left  # whatever did not arrive is still stored
    link = make_link(links, mosquitto, device, "boot-after")
    assert link.wait_connected(10)
    assert link.drain(outbox, timeout_s=30) == len(left)
    assert wait_for(lambda: set(col.records()) == expected)
    assert sum(d.rows for d in outbox.depth().values()) == 0
    outbox.close()


LINK_CHILD = """
import sys, time
from agent.link import Link, LinkConfig
link = Link(LinkConfig(sys.argv[1], "plant1", sys.argv[2], keepalive_s=5), boot_id="boot-k",
            model={"name": "m", "version": "7"})
link.start()
assert link.wait_connected(10)
print("up", flush=True)
time.sleep(60)
"""


def test_last_will_marks_device_offline_when_agent_is_killed(
        mosquitto: Any, device: str, collectors: list[Collector]) -> None:
    col = Collector(mosquitto, topics.state(SITE, device))
    collectors.append(col)
    proc = subprocess.Popen([sys.executable, "-c", LINK_CHILD, mosquitto.url, device],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        assert wait_for(lambda: any(s["online"] for s in col.states()))
        birth = col.states()[0]
        assert birth["boot_id"] == "boot-k" and birth["model"] == {"name": "m", "version": "7"}
        assert birth["agent_version"]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert wait_for(lambda: any(not s["online"] for s in col.states()), 20)
    assert col.states()[-1]["online"] is False and col.states()[-1]["boot_id"] == "boot-k"
    late = Collector(mosquitto, topics.state(SITE, device))  # retained for newcomers
    collectors.append(late)
    assert wait_for(lambda: len(late.states()) == 1)
    assert late.states()[0]["online"] is False


def test_clean_stop_publishes_retained_offline_state(
        mosquitto: Any, device: str, collectors: list[Collector], links: list[Link]) -> None:
    link = make_link(links, mosquitto, device, "boot-s")
    assert link.wait_connected(10)
    late = Collector(mosquitto, topics.state(SITE, device))
    collectors.append(late)
    assert wait_for(lambda: any(s["online"] for s in late.states()))
    link.set_model({"name": "bearing-mlp", "version": "4"})
    assert wait_for(lambda: late.states()[-1]["model"].get("version") == "4")
    link.stop()
    assert wait_for(lambda: late.states()[-1]["online"] is False)
    assert not link.connected


def test_commands_and_model_topics_are_delivered_and_resubscribed_after_restart(
        mosquitto_private: Any, device: str, links: list[Link]) -> None:
    got: list[tuple[str, bytes]] = []
    link = make_link(links, mosquitto_private, device, "boot-c")
    link.subscribe_commands(lambda topic, payload: got.append((topic, payload)))
    assert link.wait_connected(10)

    def send() -> list[tuple[str, bytes]]:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        pub.connect(mosquitto_private.host, mosquitto_private.port)
        pub.loop_start()
        cmd = messages.command_message("ping", {}, issued_by="t", ts=NOW, command_id="c1")
        sent = [(topics.command(SITE, device, "ping"), cmd),
                (topics.model_offer(SITE, device), b'{"offer": 1}'),
                (topics.model_chunk(SITE, device), b"\x00\x01chunk")]
        for topic, payload in [*sent, (topics.command(SITE, "other", "ping"), cmd)]:
            pub.publish(topic, payload, qos=1).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
        return sent

    assert wait_for(lambda: link.stats()["subscriptions"] >= 1)  # SUBACK received
    sent = send()
    assert wait_for(lambda: len(got) >= 3)
    mosquitto_private.restart()  # no persistence: the broker forgets every subscription
    assert wait_for(lambda: link.stats()["reconnects"] >= 1, 20) and link.wait_connected(10)
    assert wait_for(lambda: link.stats()["subscriptions"] >= 2)
    sent += send()
    assert wait_for(lambda: len(got) >= 6)
    time.sleep(0.2)
    assert got == sent  # never the other device's command
    # a broker that routes wrongly (the demo's embedded broker has been seen to deliver a
    # device its own state): messages on topics the link never subscribed to reach the
    # link's client; none may reach the command callback, whatever its payload
    cmd = messages.command_message("ping", {}, issued_by="t", ts=NOW, command_id="c2")
    for topic in (topics.state(SITE, device), topics.command(SITE, "other", "ping"),
                  f"{topics.device_root(SITE, device)}/cmd/ping/extra"):
        msg = mqtt.MQTTMessage(topic=topic.encode())
        msg.payload = cmd
        link._on_message(link._current[1], None, msg)
    assert got == sent
    assert link.stats()["stray_messages"] == 3


def test_link_backs_off_while_broker_is_down_and_records_wait(
        mosquitto_private: Any, tmp_path: Path, device: str, links: list[Link]) -> None:
    mosquitto_private.stop()
    outbox = Outbox(tmp_path / "outbox.db", boot_id="boot-d")
    expected = fill(outbox, 100, alerts=1)
    link = make_link(links, mosquitto_private, device, "boot-d", backoff_min_s=0.05,
                     backoff_max_s=0.2)
    assert not link.wait_connected(1.0)
    assert link.stats()["connect_failures"] >= 3
    assert link.drain(outbox, timeout_s=1) == 0
    assert sum(d.rows for d in outbox.depth().values()) == len(expected)
    mosquitto_private.start()
    assert link.wait_connected(10)
    assert link.drain(outbox, timeout_s=10) == len(expected)
    outbox.close()


def test_refused_connection_backs_off_exponentially(
        make_mosquitto: Callable[[str], Any], device: str, links: list[Link]) -> None:
    broker = make_mosquitto(CONF_TEMPLATE.read_text().replace(
        "allow_anonymous true", "allow_anonymous false"))
    link = make_link(links, broker, device, "boot-n", backoff_min_s=0.05, backoff_max_s=0.4)
    assert not link.wait_connected(2.0)
    failures = link.stats()["connect_failures"]
    # 0.05 s doubling to 0.4 s (with jitter) allows at most ~12 tries in 2 s; a backoff
    # that reset after every refused CONNACK would make 40 or more
    assert 3 <= failures <= 15, failures
    assert link.stats()["connects"] == 0


def test_forced_mqtt_311_works(mosquitto: Any, tmp_path: Path, device: str,
                               collectors: list[Collector], links: list[Link]) -> None:
    col = Collector(mosquitto, f"{topics.device_root(SITE, device)}/#")
    collectors.append(col)
    outbox = Outbox(tmp_path / "outbox.db", boot_id="boot-3")
    expected = fill(outbox, 500, alerts=2)
    link = make_link(links, mosquitto, device, "boot-3", protocol="3.1.1")
    assert link.wait_connected(10) and link.protocol == "3.1.1"
    assert link.drain(outbox, timeout_s=10) == len(expected)
    assert wait_for(lambda: set(col.records()) == expected)
    outbox.close()


@given(st.integers(0, 100), st.floats(0.01, 5.0), st.floats(5.0, 300.0), st.integers())
def test_backoff_grows_exponentially_with_jitter_and_is_capped(
        attempt: int, min_s: float, max_s: float, seed: int) -> None:
    delay = backoff_s(attempt, min_s, max_s, random.Random(seed))
    top = min(max_s, min_s * 2.0 ** attempt)
    assert top / 2 <= delay <= top <= max_s


@pytest.mark.parametrize("overrides", [
    {"broker_url": "http://host:1883"}, {"broker_url": "mqtt://"},
    {"broker_url": "mqtt://host:notaport"}, {"site": "bad site"}, {"device_id": ""},
    {"max_inflight": 0}, {"batch_max_records": 20_000}, {"batch_max_bytes": 100},
    {"batch_max_bytes": 3 * 1024 * 1024}, {"keepalive_s": 1}, {"protocol": "4"},
    {"backoff_min_s": 10.0, "backoff_max_s": 1.0}, {"tls_cert_path": "c.pem"},
    {"gateway_timeout_s": 0}, {"require_gateway": "yes"},
])
def test_bad_link_config_is_refused(overrides: dict[str, Any]) -> None:
    base = {"broker_url": "mqtts://broker.example:8883", "site": SITE, "device_id": "d1"}
    with pytest.raises(ConfigError):
        LinkConfig(**{**base, **overrides})


def test_config_defaults_ports_by_scheme() -> None:
    assert LinkConfig("mqtts://b.example", SITE, "d1").port == 8883
    assert LinkConfig("mqtt://b.example", SITE, "d1").port == 1883
    cfg = LinkConfig("mqtts://b.example:9000", SITE, "d1")
    assert (cfg.host, cfg.port, cfg.tls) == ("b.example", 9000, True)


def _cert(subject: str, key: Any, issuer: tuple[str, Any] | None, *, ca: bool,
          ip: str | None = None) -> Any:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]),
                               issuer[1]) if issuer else (name, key)
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a device client certificate."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out: dict[str, Path] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    certs = {"ca": (_cert("foreshock-test-ca", ca_key, None, ca=True), ca_key)}
    for name, ip in (("server", "127.0.0.1"), ("device", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        certs[name] = (_cert(name, key, ("foreshock-test-ca", ca_key), ca=False, ip=ip), key)
    for name, (cert, key) in certs.items():
        out[f"{name}_cert"] = directory / f"{name}.crt"
        out[f"{name}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}_key"] = directory / f"{name}.key"
        out[f"{name}_key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return out


def test_tls_with_client_certificate(make_mosquitto: Callable[[str], Any], tmp_path: Path,
                                     device: str, links: list[Link]) -> None:
    pki = write_pki(tmp_path)
    broker = make_mosquitto(
        "per_listener_settings false\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
        f"cafile {pki['ca_cert']}\ncertfile {pki['server_cert']}\n"
        f"keyfile {pki['server_key']}\nrequire_certificate true\npersistence false\n"
        "user root\nlog_dest stderr\n")  # as root, mosquitto would drop to a user that
    url = f"mqtts://127.0.0.1:{broker.port}"  # could not read the keys under tmp_path
    outbox = Outbox(tmp_path / "outbox.db", boot_id="boot-t")
    expected = fill(outbox, 50, alerts=1)
    good = Link(LinkConfig(url, SITE, device, tls_ca_path=str(pki["ca_cert"]),
                           tls_cert_path=str(pki["device_cert"]),
                           tls_key_path=str(pki["device_key"])), boot_id="boot-t")
    links.append(good)
    good.start()
    assert good.wait_connected(10)
    n = good.drain(outbox, timeout_s=10)
    assert n == len(expected), (good.stats(), good.connected, broker.log.read_text()[-2000:])
    no_cert = Link(LinkConfig(url, SITE, "other", tls_ca_path=str(pki["ca_cert"]),
                              backoff_min_s=0.05, backoff_max_s=0.2, connect_timeout_s=1.0),
                   boot_id="boot-x")
    links.append(no_cert)
    no_cert.start()
    assert wait_for(lambda: no_cert.stats()["connect_failures"] >= 1, 10)
    assert not no_cert.connected and no_cert.stats()["connects"] == 0
    outbox.close()


def test_falls_back_to_mqtt_311_on_a_broker_without_mqtt_5(
        tmp_path: Path, device: str, links: list[Link]) -> None:
    port = _free_port()
    conf = tmp_path / "amqtt.yaml"
    conf.write_text(f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
                    "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                    "    allow_anonymous: true\n")
    amqtt_exe = Path(sys.executable).with_name("amqtt")
    broker = subprocess.Popen([str(amqtt_exe), "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: _listening(port), 20), "amqtt broker did not start"
        outbox = Outbox(tmp_path / "outbox.db", boot_id="boot-f")
        expected = fill(outbox, 20, alerts=1)
        link = Link(LinkConfig(f"mqtt://127.0.0.1:{port}", SITE, device, connect_timeout_s=1.0,
                               backoff_min_s=0.05, backoff_max_s=0.2), boot_id="boot-f")
        links.append(link)
        link.start()
        assert link.wait_connected(15) and link.protocol == "3.1.1"
        assert link.drain(outbox, timeout_s=10) == len(expected)
        outbox.close()
    finally:
        broker.terminate()
        broker.wait(10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


# -- gateway presence gate ---------------------------------------------------------------
def announce(broker: Any, site: str, *, online: bool = True, retain: bool = False) -> None:
    """Publish one gateway presence message the way a gateway does (or retained, stale)."""
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    payload = messages.gateway_presence_message(site, "gw-test", online=online,
                                                ts=time.time(), interval_s=2.0)
    pub.publish(topics.gateway_presence(site), payload, qos=1, retain=retain).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()


def gated_link(links: list[Link], broker: Any, site: str, device: str,
               **overrides: Any) -> Link:
    config = LinkConfig(broker.url, site, device, backoff_min_s=0.05, backoff_max_s=0.5,
                        require_gateway=True, **overrides)
    link = Link(config, boot_id="boot-1")
    links.append(link)
    link.start()
    assert link.wait_connected(10)
    assert wait_for(lambda: link.stats()["subscriptions"] >= 1)  # presence topic subscribed
    return link


def test_gate_holds_the_outbox_until_a_live_gateway_presence(
        mosquitto: Any, tmp_path: Path, device: str, collectors: list[Collector],
        links: list[Link]) -> None:
    site = f"s{uuid.uuid4().hex[:8]}"
    col = Collector(mosquitto, f"{topics.ROOT}/{site}/{device}/#")
    collectors.append(col)
    announce(mosquitto, site, retain=True)  # stale: left behind, says nothing about now
    try:
        outbox = Outbox(tmp_path / "outbox.db", boot_id="boot-1")
        expected = fill(outbox, 50, alerts=2)
        link = gated_link(links, mosquitto, site, device)
        time.sleep(0.3)  # the retained presence has been delivered by now
        assert link.drain(outbox, timeout_s=0.3) == 0
        stats = link.stats()
        assert stats["gateway_present"] == 0 and stats["drains_held"] >= 1
        assert stats["published_msgs"] == 0 and col.records() == []
        assert outbox.depth()["telemetry"].rows == 50
        announce(mosquitto, site)
        assert wait_for(lambda: link.gateway_present, 5)
        assert link.drain(outbox, timeout_s=10) == len(expected)
        assert wait_for(lambda: len(col.records()) >= len(expected))
        assert Counter(col.records()) == Counter(expected)
        announce(mosquitto, site, online=False)  # a gateway leaving closes the gate at once
        assert wait_for(lambda: not link.gateway_present, 5)
        outbox.close()
    finally:
        announce_clear = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        announce_clear.connect(mosquitto.host, mosquitto.port)
        announce_clear.loop_start()
        announce_clear.publish(topics.gateway_presence(site), b"", qos=1,
                               retain=True).wait_for_publish(5)
        announce_clear.disconnect()
        announce_clear.loop_stop()


def test_gate_closes_after_the_timeout_and_after_a_reconnect(
        mosquitto_private: Any, tmp_path: Path, device: str, links: list[Link]) -> None:
    site = f"s{uuid.uuid4().hex[:8]}"
    outbox = Outbox(tmp_path / "outbox.db", boot_id="boot-1")
    fill(outbox, 20)
    link = gated_link(links, mosquitto_private, site, device, gateway_timeout_s=1.0)
    announce(mosquitto_private, site)
    assert wait_for(lambda: link.gateway_present, 5)
    assert link.drain(outbox, timeout_s=10) == 20
    time.sleep(1.3)  # no presence for longer than gateway_timeout_s
    assert not link.gateway_present
    fill(outbox, 30)
    assert link.drain(outbox, timeout_s=0.3) == 0
    assert outbox.depth()["telemetry"].rows == 30  # the backlog waits
    announce(mosquitto_private, site)
    assert wait_for(lambda: link.gateway_present, 5)
    mosquitto_private.restart()  # a presence from before the latest connect does not count
    assert wait_for(lambda: link.stats()["reconnects"] >= 1, 15)
    assert link.wait_connected(10) and not link.gateway_present
    assert link.drain(outbox, timeout_s=0.3) == 0
    assert wait_for(lambda: link.stats()["subscriptions"] >= 2)
    announce(mosquitto_private, site)
    assert wait_for(lambda: link.gateway_present, 5)
    assert link.drain(outbox, timeout_s=10) == 30
    outbox.close()


def test_a_real_gateway_opens_the_gate_and_stores_everything(
        mosquitto: Any, tmp_path: Path, device: str, links: list[Link]) -> None:
    from gateway.config import GatewayConfig
    from gateway.service import Gateway

    site = f"s{uuid.uuid4().hex[:8]}"
    outbox = Outbox(tmp_path / "outbox.db", boot_id="boot-1")
    expected = fill(outbox, 40, alerts=3)
    link = gated_link(links, mosquitto, site, device)
    assert link.drain(outbox, timeout_s=0.2) == 0
    cfg = GatewayConfig.for_site(mosquitto.url, site, f"sqlite:///{tmp_path / 'gw.db'}",
                                 client_id=f"gw-{site}", presence_interval_s=0.5,
                                 fleet_interval_s=0)
    with Gateway(cfg) as gateway:
        assert wait_for(lambda: link.gateway_present, 5)
        assert link.drain(outbox, timeout_s=10) == len(expected)
        assert wait_for(lambda: gateway.stats().records_stored >= len(expected), 10)
    assert wait_for(lambda: not link.gateway_present, 5)  # the gateway said online: false
    outbox.close()


def test_the_gate_is_off_by_default(mosquitto: Any, tmp_path: Path, device: str,
                                    links: list[Link]) -> None:
    outbox = Outbox(tmp_path / "outbox.db", boot_id="boot-1")
    fill(outbox, 10)
    link = make_link(links, mosquitto, device, "boot-1")
    assert link.wait_connected(10) and link.gateway_present
    assert link.drain(outbox, timeout_s=10) == 10
    assert link.stats()["drains_held"] == 0
    outbox.close()
