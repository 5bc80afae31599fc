"""Key and config permissions checked at start, secrets kept out of logs and status output,
and model bundles refused when tampered, unsigned by the pinned key, or older."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from test_inference import build_bundle
from test_security_broker import make_ca
from typer.testing import CliRunner

from agent import security
from agent.config import AgentConfig
from agent.provision import app as device_app
from agent.sources import ReplaySource
from foreshock import bundle as fb
from foreshock.errors import BundleError, ConfigError

runner = CliRunner()


def key_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "device.key"
    path.write_text("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n"
                    "-----END PRIVATE KEY-----\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_group_or_world_readable_key_is_refused(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path, mode)
    with pytest.raises(ConfigError) as err:
        security.check_private_file_permissions(path)
    assert str(path) in str(err.value) and f"chmod 600 {path}" in str(err.value)
    assert "\n" not in str(err.value)


def test_private_key_0600_is_accepted_and_missing_key_named(tmp_path: Path) -> None:
    assert security.check_private_file_permissions(key_file(tmp_path, 0o600))
    with pytest.raises(ConfigError, match="does not exist"):
        security.check_private_file_permissions(tmp_path / "nope.key")


def test_startup_check_covers_config_and_link_key(tmp_path: Path) -> None:
    key = key_file(tmp_path, 0o600)
    config = tmp_path / "agent.toml"
    config.write_text(f'[link]\nbroker_url = "mqtts://h:8883"\ntls_key_path = "{key}"\n'
                      'tls_cert_path = "/c"\n')
    config.chmod(0o640)
    link = AgentConfig.load(config).link
    security.check_startup_files(config, link)
    config.chmod(0o666)
    with pytest.raises(ConfigError, match="chmod 640"):
        security.check_startup_files(config, link)
    config.chmod(0o640)
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="TLS private key"):
        security.check_startup_files(config, link)


def test_redact_removes_key_material_passwords_and_url_credentials() -> None:
    pem = "-----BEGIN EC PRIVATE KEY-----\nSECRETBODY\n-----END EC PRIVATE KEY-----"
    text = security.redact(f"loaded {pem} from mqtts://bob:hunter2@gw:8883 password=pw123")
    for secret in ("SECRETBODY", "hunter2", "pw123"):
        assert secret not in text
    assert "gw:8883" in text
    data = security.redact({"link": {"password": "pw", "tls_key_path": "/etc/k",
                                     "broker_url": "mqtts://u:p@h"}, "n": [1, "token=abc"]})
    assert data == {"link": {"password": "[REDACTED]", "tls_key_path": "/etc/k",
                             "broker_url": "mqtts://[REDACTED]@h"},
                    "n": [1, "token=[REDACTED]"]}


def test_log_redaction_filter_cleans_every_module() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("foreshock.test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    security.install_log_redaction(logger)
    child = logging.getLogger("foreshock.test.redaction.child")
    child.info("connecting to %s with password=%s", "mqtts://dev:s3cr3t@gw:8883", "s3cr3t")
    logger.removeHandler(handler)
    out = stream.getvalue()
    assert "s3cr3t" not in out and "gw:8883" in out


def test_provisioning_never_prints_or_logs_key_material(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    ca = make_ca(tmp_path / "ca")
    root = tmp_path / "img"
    caplog.set_level(logging.DEBUG)
    result = runner.invoke(device_app, [
        "provision", "--device-id", "pump-07", "--site", "plant1", "--broker",
        "mqtts://gw:8883", "--root", str(root), "--ca-dir", str(ca.root), "--no-systemd"])
    assert result.exit_code == 0, result.output
    body = "".join((root / "etc/foreshock/tls/device.key").read_text().splitlines()[1:-1])
    ca_body = "".join(ca.key_path.read_text().splitlines()[1:-1])
    seen = result.output + caplog.text
    assert body[:40] not in seen and ca_body[:40] not in seen
    assert "PRIVATE KEY" not in seen


def test_agent_status_output_has_no_secrets(tmp_path: Path) -> None:
    from agent.cli import app as agent_app
    from agent.service import Agent

    cfg = AgentConfig.for_device("pump-07", "plant1", "mqtts://dev:hunter2@gw:8883",
                                 tmp_path / "state")
    agent = Agent(cfg, ReplaySource([]), store=False)
    agent.write_status()
    for extra in ([], ["--json"]):
        out = runner.invoke(agent_app, ["status", "--state-dir", str(tmp_path / "state"),
                                        *extra])
        assert out.exit_code == 0, out.output
        assert "hunter2" not in out.output and "pump-07" in out.output
    agent.close()


# ----- model bundles ------------------------------------------------------------------------

def test_bundle_with_a_bad_signature_is_refused(tmp_path: Path) -> None:
    path, _pub = build_bundle(tmp_path)
    other = fb.generate_signing_key().public_key()
    with pytest.raises(BundleError, match="signature"):
        security.verify_bundle_for_install(path, [fb.public_key_pem(other)], None)
    # a manifest edited after signing fails against the right key too
    good_pub = (tmp_path / "key.pub").read_bytes()
    manifest = json.loads((path / fb.MANIFEST).read_text())
    manifest["version"] = "9.9.9"
    (path / fb.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="signature"):
        security.verify_bundle_for_install(path, [good_pub], None)


def test_bundle_with_a_file_hash_mismatch_is_refused(tmp_path: Path) -> None:
    path, pub = build_bundle(tmp_path)
    assert security.verify_bundle_for_install(path, [pub], None).version == "1.2.3"
    model = path / "detector.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="SHA-256 mismatch"):
        security.verify_bundle_for_install(path, [pub], None)


def test_downgraded_or_same_bundle_version_is_refused(tmp_path: Path) -> None:
    path, pub = build_bundle(tmp_path)
    with pytest.raises(BundleError, match="downgrade"):
        security.verify_bundle_for_install(path, [pub], installed_version="1.10.0")
    with pytest.raises(BundleError, match="already installed"):
        security.verify_bundle_for_install(path, [pub], installed_version="1.2.3")
    assert security.verify_bundle_for_install(path, [pub], "1.2.2").version == "1.2.3"
    security.check_not_downgrade("1.9.9", "1.10.0")  # semver order, not string order


def test_bundle_signed_by_the_site_key_verifies_with_the_pinned_copy(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    path, _ = build_bundle(tmp_path / "b")
    fb.sign(path, fb.load_private_key(tmp_path / "model-signing" / "model-signing.key"))
    manifest = security.verify_bundle_for_install(path, [ca.signing_pub_path], "1.0.0")
    assert manifest.name == "tiny"
    assert (tmp_path / "model-signing" / "model-signing.key").stat().st_mode & 0o777 == 0o600
    assert not (ca.root / "model-signing.key").exists()  # kept apart from the CA key
