"""A real mosquitto started from `foreshock gateway broker-config` output: client certificates
from the site CA, the CRL, and per-device ACLs (a device acts only as itself)."""

from __future__ import annotations

import getpass
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from foreshock import topics
from gateway.brokerconf import BrokerOptions, render_acl, write_broker_config
from gateway.ca import SiteCa, key_pem, new_key, write_private, write_public

SITE = "plant1"
WAIT_S = 5.0


def make_ca(root: Path, site: str = SITE) -> SiteCa:
    ca = SiteCa(root)
    ca.init(site, hosts=("127.0.0.1", "localhost"))
    return ca


def device_identity(ca: SiteCa, device: str, out: Path) -> Path:
    """Key made 'on the device', CSR signed by the CA: out/key.pem, out/cert.pem, ca.crt."""
    key = new_key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
           .sign(key, hashes.SHA256()))
    cert = ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM))
    write_private(out / "key.pem", key_pem(key))
    write_public(out / "cert.pem", cert.public_bytes(serialization.Encoding.PEM))
    write_public(out / "ca.crt", ca.cert_path.read_bytes())
    return out


def broker_options(ca: SiteCa, out: Path) -> BrokerOptions:
    return BrokerOptions(ca_dir=ca.root, out_dir=out, port="{port}", bind="127.0.0.1",
                         user=getpass.getuser(), viewers=("_viewer",))


def start_broker(make_mosquitto: Callable[[str], Any], ca: SiteCa, out: Path) -> Any:
    opts = broker_options(ca, out)
    write_broker_config(opts)
    return make_mosquitto((out / "mosquitto.conf").read_text())


@dataclass
class Peer:
    """A paho-mqtt 2 client with TLS; records connects, disconnects and messages."""

    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    refused: list[Any] = field(default_factory=list)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    settled: threading.Event = field(default_factory=threading.Event)

    def wait_for(self, topic: str, timeout_s: float = WAIT_S) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(t == topic for t, _ in self.messages):
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(broker: Any, ident: Path, client_id: str, ca_file: Path | None = None,
            wait: bool = True) -> Peer:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(ca_file or ident / "ca.crt"), certfile=str(ident / "cert.pem"),
                   keyfile=str(ident / "key.pem"))
    peer = Peer(client)

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            peer.refused.append(rc)
        else:
            peer.connected.set()
        peer.settled.set()

    def on_disconnect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        peer.refused.append(rc)
        peer.settled.set()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        peer.messages.append((msg.topic, msg.payload))

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    client.reconnect_delay_set(0.2, 0.5)
    try:
        client.connect(broker.host, broker.port, keepalive=10)
    except OSError as exc:  # the TLS handshake itself refused the certificate
        peer.refused.append(exc)
        return peer
    client.loop_start()
    if wait:
        peer.settled.wait(WAIT_S)
    return peer


def subscribe(peer: Peer, *filters: str) -> None:
    done = threading.Event()
    peer.client.on_subscribe = lambda *_a: done.set()
    for f in filters:
        done.clear()
        peer.client.subscribe(f, qos=1)
        assert done.wait(WAIT_S), f"no SUBACK for {f}"


@pytest.fixture
def site(tmp_path: Path, make_mosquitto: Callable[[str], Any]) -> Any:
    ca = make_ca(tmp_path / "ca")
    broker = start_broker(make_mosquitto, ca, tmp_path / "broker")
    gw = ca.identity_dir("_gateway")
    peers: list[Peer] = []

    class Site:
        def __init__(self) -> None:
            self.ca, self.broker, self.gateway_ident = ca, broker, gw

        def device(self, name: str) -> Path:
            return device_identity(ca, name, tmp_path / "devices" / name)

        def connect(self, ident: Path, client_id: str, **kw: Any) -> Peer:
            peer = connect(broker, ident, client_id, **kw)
            peers.append(peer)
            return peer

    yield Site()
    for p in peers:
        p.stop()


def test_device_connects_with_its_certificate_and_gateway_ingests(site: Any) -> None:
    a = site.connect(site.device("pump-07"), "whatever")
    assert a.connected.is_set(), f"device refused: {a.refused}"
    gw = site.connect(site.gateway_ident, "gw-1")
    subscribe(gw, topics.device_filter("telemetry", SITE, share_group="ingest"))
    a.client.publish(topics.record(SITE, "pump-07", "telemetry"), b"{}", qos=1)
    assert gw.wait_for(topics.record(SITE, "pump-07", "telemetry"))


def test_unknown_ca_certificate_is_refused(site: Any, tmp_path: Path) -> None:
    rogue_ca = make_ca(tmp_path / "rogue-ca")
    rogue = device_identity(rogue_ca, "pump-07", tmp_path / "rogue")
    peer = site.connect(rogue, "pump-07", ca_file=site.ca.cert_path)
    assert not peer.connected.is_set()
    good = site.connect(site.device("pump-08"), "pump-08")
    assert good.connected.is_set()


def test_revoked_certificate_is_refused_after_broker_restart(site: Any,
                                                             tmp_path: Path) -> None:
    victim, keeper = site.device("pump-07"), site.device("pump-08")
    assert site.connect(victim, "v1").connected.is_set()
    site.ca.revoke("pump-07")
    write_broker_config(broker_options(site.ca, tmp_path / "broker"))
    site.broker.restart()
    assert not site.connect(victim, "v2").connected.is_set()
    assert site.connect(keeper, "k1").connected.is_set()


def test_device_cannot_publish_on_another_devices_topics(site: Any) -> None:
    gw = site.connect(site.gateway_ident, "gw")
    subscribe(gw, f"{topics.ROOT}/#")
    intruder = site.connect(site.device("A"), "A")
    for kind in ("telemetry", "alert"):
        intruder.client.publish(topics.record(SITE, "B", kind), b"forged", qos=1)
    intruder.client.publish(topics.state(SITE, "B"), b"forged", qos=1, retain=True)
    # mosquitto 2.0 over TLS drops a client after a denied publish; a fresh connection of
    # the same device publishing its own telemetry is the positive control.
    honest = site.connect(site.device("A"), "A2")
    honest.client.publish(topics.record(SITE, "A", "telemetry"), b"own", qos=1)
    assert gw.wait_for(topics.record(SITE, "A", "telemetry"))
    assert not [t for t, _ in gw.messages if "/B/" in t], gw.messages


def test_device_cannot_read_another_devices_commands(site: Any) -> None:
    b = site.connect(site.device("B"), "B")
    subscribe(b, topics.commands(SITE, "B"))
    a = site.connect(site.device("A"), "A")
    subscribe(a, topics.commands(SITE, "B"), "#", f"$share/x/{topics.commands(SITE, 'B')}",
              topics.model_chunk(SITE, "B"))
    gw = site.connect(site.gateway_ident, "gw")
    gw.client.publish(topics.command(SITE, "B", "ping"), b"{}", qos=1)
    gw.client.publish(topics.model_chunk(SITE, "B"), b"chunk", qos=1)
    assert b.wait_for(topics.command(SITE, "B", "ping"))
    time.sleep(0.3)
    assert a.messages == []


def test_device_cannot_take_over_another_devices_session(site: Any) -> None:
    b = site.connect(site.device("B"), "B")
    disconnected = threading.Event()
    b.client.on_disconnect = lambda *_a: disconnected.set()
    a = site.connect(site.device("A"), "B")  # same client id: broker uses the CN instead
    assert a.connected.is_set()
    assert not disconnected.wait(0.5)


def test_viewer_reads_but_cannot_command(site: Any) -> None:
    viewer_ident = site.ca.issue("_viewer", "viewer")
    viewer = site.connect(viewer_ident, "v")
    b = site.connect(site.device("B"), "B")
    subscribe(b, topics.commands(SITE, "B"))
    subscribe(viewer, f"{topics.ROOT}/#")
    b.client.publish(topics.record(SITE, "B", "health"), b"{}", qos=1)
    assert viewer.wait_for(topics.record(SITE, "B", "health"))
    viewer.client.publish(topics.command(SITE, "B", "rollback"), b"{}", qos=1)
    gw = site.connect(site.gateway_ident, "gw")
    gw.client.publish(topics.command(SITE, "B", "ping"), b"{}", qos=1)
    assert b.wait_for(topics.command(SITE, "B", "ping"))
    assert [t for t, _ in b.messages] == [topics.command(SITE, "B", "ping")]


def test_acl_confines_devices_with_patterns() -> None:
    text = render_acl(BrokerOptions(ca_dir=Path("/x")), ["plant1"])
    assert "pattern write foreshock/v1/plant1/%u/telemetry" in text
    assert "pattern read foreshock/v1/plant1/%u/cmd/#" in text
    assert "\ntopic write foreshock/v1/plant1/+" not in text
