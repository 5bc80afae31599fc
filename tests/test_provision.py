"""`foreshock device provision` and `foreshock device check` on a real image directory, against
a real TLS mosquitto built by `foreshock gateway broker-config`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_security_broker import broker_options, make_ca, start_broker
from typer.testing import CliRunner

from agent.config import AgentConfig
from agent.provision import app
from foreshock.errors import ConfigError
from gateway.brokerconf import write_broker_config
from gateway.ca import SiteCa, cert_pem

runner = CliRunner()
DEVICE = "pump-07"


def provision(root: Path, *extra: str, broker: str = "mqtts://127.0.0.1:8883",
              device: str = DEVICE) -> Any:
    return runner.invoke(app, ["provision", "--device-id", device, "--site", "plant1",
                               "--broker", broker, "--root", str(root), *extra])


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else b"")
            for p in sorted(root.rglob("*")) if not p.is_dir() or p.is_symlink()}


@pytest.fixture
def ca(tmp_path: Path) -> SiteCa:
    return make_ca(tmp_path / "ca")


def test_provision_writes_a_config_the_agent_loads(tmp_path: Path, ca: SiteCa) -> None:
    root = tmp_path / "img"
    result = provision(root, "--ca-dir", str(ca.root))
    assert result.exit_code == 0, result.output
    cfg = AgentConfig.load(root / "etc/foreshock/agent.toml")
    assert (cfg.device.device_id, cfg.device.site) == (DEVICE, "plant1")
    assert cfg.link.broker_url == "mqtts://127.0.0.1:8883"
    assert cfg.link.tls_key_path == "/etc/foreshock/tls/device.key"
    assert [str(k) for k in cfg.model.trusted_keys] == ["/etc/foreshock/model-signing.pub"]
    assert (cfg.source.type, cfg.source.params) == ("serial", {"port": "/dev/ttyUSB0"})
    assert (root / "etc/foreshock/tls/device.key").stat().st_mode & 0o777 == 0o600
    assert (root / "etc/foreshock/model-signing.pub").read_bytes() == \
        ca.signing_pub_path.read_bytes()
    wants = root / "etc/systemd/system/multi-user.target.wants/foreshock-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/foreshock-agent.service"
    assert DEVICE in [c["cn"] for c in ca.entries()]


def test_provision_is_idempotent(tmp_path: Path, ca: SiteCa) -> None:
    root = tmp_path / "img"
    assert provision(root, "--ca-dir", str(ca.root)).exit_code == 0
    before = tree(root)
    again = provision(root, "--ca-dir", str(ca.root))
    assert again.exit_code == 0, again.output
    assert tree(root) == before
    steps = [line for line in again.output.splitlines() if line.startswith(("unchanged",
                                                                             "created"))]
    assert steps and all(line.startswith("unchanged") for line in steps), again.output


def test_dry_run_writes_nothing_and_lists_every_file(tmp_path: Path, ca: SiteCa) -> None:
    root = tmp_path / "img"
    dry = provision(root, "--ca-dir", str(ca.root), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert not root.exists()
    real = provision(root, "--ca-dir", str(ca.root))
    written = {line.split(None, 1)[1].split(" (")[0] for line in real.output.splitlines()
               if line.startswith("created")}
    listed = dry.output
    assert written and all(path.rstrip("/") in listed for path in written), (written, listed)


def test_offline_flow_resumes_with_the_same_key(tmp_path: Path, ca: SiteCa) -> None:
    root, usb = tmp_path / "img", tmp_path / "usb"
    first = provision(root, "--csr-out", str(usb / "pump-07.csr"),
                      "--model-key", str(ca.signing_pub_path))
    assert first.exit_code == 0, first.output
    key_before = (root / "etc/foreshock/tls/device.key").read_bytes()
    assert not (root / "etc/foreshock/agent.toml").exists()  # stopped: waiting for the cert
    cert = ca.sign_csr((usb / "pump-07.csr").read_bytes())
    (usb / "pump-07.crt").write_bytes(cert_pem(cert) + ca.cert_path.read_bytes())
    second = provision(root, "--cert-in", str(usb / "pump-07.crt"),
                       "--model-key", str(ca.signing_pub_path))
    assert second.exit_code == 0, second.output
    assert (root / "etc/foreshock/tls/device.key").read_bytes() == key_before
    assert "unchanged  " + str(root / "etc/foreshock/tls/device.key") in second.output
    AgentConfig.load(root / "etc/foreshock/agent.toml")


def test_interrupted_run_resumes_and_keeps_operator_settings(tmp_path: Path,
                                                             ca: SiteCa) -> None:
    root = tmp_path / "img"
    assert provision(root, "--ca-dir", str(ca.root)).exit_code == 0
    key = (root / "etc/foreshock/tls/device.key").read_bytes()
    config = root / "etc/foreshock/agent.toml"
    text = config.read_text().replace('type = "serial"', 'type = "udp"')
    config.write_text(text.replace('port = "/dev/ttyUSB0"', "port = 9000")
                      + "\n[decision]\ncommission_s = 900.0\n")
    (root / "etc/systemd/system/foreshock-agent.service").unlink()
    (root / "etc/foreshock/model-signing.pub").unlink()
    again = provision(root, "--ca-dir", str(ca.root), broker="mqtts://gw.plant1:8883")
    assert again.exit_code == 0, again.output
    assert (root / "etc/foreshock/tls/device.key").read_bytes() == key
    cfg = AgentConfig.load(config)
    assert cfg.source.type == "udp" and cfg.source.params == {"port": 9000}
    assert cfg.decision.commission_s == 900.0
    assert cfg.link.broker_url == "mqtts://gw.plant1:8883"
    assert (root / "etc/systemd/system/foreshock-agent.service").exists()
    assert sum(line.startswith("created") for line in again.output.splitlines()) == 2


def test_source_option_sets_the_source(tmp_path: Path, ca: SiteCa) -> None:
    root = tmp_path / "img"
    result = provision(root, "--ca-dir", str(ca.root), "--no-systemd",
                       "--source", "udp:0.0.0.0:9000")
    assert result.exit_code == 0, result.output
    cfg = AgentConfig.load(root / "etc/foreshock/agent.toml")
    assert (cfg.source.type, cfg.source.params) == ("udp", {"host": "0.0.0.0", "port": 9000})
    bad = provision(tmp_path / "img2", "--ca-dir", str(ca.root), "--source", "carrier-pigeon")
    assert isinstance(bad.exception, ConfigError) and not (tmp_path / "img2").exists()


def test_certificate_for_another_key_is_refused(tmp_path: Path, ca: SiteCa) -> None:
    other = tmp_path / "other"
    assert provision(other, "--ca-dir", str(ca.root), "--no-systemd").exit_code == 0
    root = tmp_path / "img"
    result = provision(root, "--cert-in", str(other / "etc/foreshock/tls/device.crt"),
                       "--ca-cert", str(ca.cert_path), "--model-key", str(ca.signing_pub_path))
    assert isinstance(result.exception, ConfigError)
    assert "not for this device's key" in str(result.exception)
    assert not (root / "etc/foreshock/tls/device.crt").exists()


def test_plain_mqtt_broker_is_refused(tmp_path: Path, ca: SiteCa) -> None:
    result = provision(tmp_path / "img", "--ca-dir", str(ca.root), broker="mqtt://h:1883")
    assert isinstance(result.exception, ConfigError)
    assert not (tmp_path / "img").exists()


def check(root: Path) -> Any:
    return runner.invoke(app, ["check", "--root", str(root), "--timeout-s", "3"])


def test_check_against_a_real_broker(tmp_path: Path, ca: SiteCa,
                                     make_mosquitto: Callable[[str], Any]) -> None:
    broker = start_broker(make_mosquitto, ca, tmp_path / "broker")
    root = tmp_path / "img"
    url = f"mqtts://127.0.0.1:{broker.port}"
    assert provision(root, "--ca-dir", str(ca.root), broker=url).exit_code == 0
    ok = check(root)
    assert ok.exit_code == 0, ok.output
    assert "ok    broker" in ok.output and "ok    service" in ok.output

    key = root / "etc/foreshock/tls/device.key"
    key.chmod(0o644)
    loose = check(root)
    assert loose.exit_code == 1 and "chmod 600" in loose.output
    key.chmod(0o600)

    ca.revoke(DEVICE)
    write_broker_config(broker_options(ca, tmp_path / "broker"))
    broker.restart()
    revoked = check(root)
    assert revoked.exit_code == 1
    assert "FAIL  broker" in revoked.output and "revoked" in revoked.output


def test_check_reports_a_missing_config_with_a_hint(tmp_path: Path) -> None:
    result = check(tmp_path / "nothing")
    assert result.exit_code == 1
    assert "FAIL  config" in result.output and "foreshock device provision" in result.output
