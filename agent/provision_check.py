"""The checks of ``foreshock device check``: config, key permissions, certificate validity
and expiry, clock sanity, broker reachability over TLS with the device certificate, and the
systemd service. Each failing check prints a fix hint; any FAIL makes the command exit 1.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent import security
from agent.provision import (
    RENEW_DAYS,
    UNIT_DIR,
    UNIT_NAME,
    check_leaf,
    now_utc,
    same_key,
    wanted_by,
)
from foreshock.errors import ConfigError, ForeshockError

MIN_SANE_CLOCK: Final = datetime(2025, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Check:
    """One line of ``foreshock device check``: status ok / WARN / FAIL, and a fix hint."""

    name: str
    status: str
    detail: str
    hint: str = ""

    def line(self) -> str:
        text = f"{self.status:<5} {self.name:<12} {self.detail}"
        return text + (f"\n      fix: {self.hint}" if self.hint and self.status != "ok" else "")


def run_checks(root: Path, config_path: Path, systemd: bool, timeout_s: float) -> list[Check]:
    """Every check of ``foreshock device check``, in order; later ones need the config."""
    from agent.config import AgentConfig

    try:
        cfg = AgentConfig.load(config_path)
        security.check_config_file_permissions(config_path)
    except ConfigError as exc:
        return [Check("config", "FAIL", str(exc), exc.hint or
                      "foreshock device provision --device-id ID --site SITE --broker URL ...")]
    link = cfg.link
    out = [Check("config", "ok", f"{config_path} ({cfg.device.site}/{cfg.device.device_id})")]
    if not (link.tls_key_path and link.tls_cert_path and link.tls_ca_path):
        return [*out, Check("tls", "FAIL", "[link] has no tls_ca_path/tls_cert_path/"
                            "tls_key_path", "foreshock device provision ... (re-run)")]
    tls = TlsFiles(*(root / str(p).lstrip("/") for p in
                     (link.tls_ca_path, link.tls_cert_path, link.tls_key_path)))
    reprovision = "re-run foreshock device provision (the same command as before)"
    out.append(_guard("key", reprovision, lambda: _check_key(tls)))
    out.append(_guard("certificate", reprovision, lambda: _check_cert(tls, cfg)))
    out.append(_check_clock(tls))
    model_keys = [root / str(k).lstrip("/") for k in cfg.model.trusted_keys]
    out.append(_guard("model key", reprovision + " with --model-key model-signing.pub",
                      lambda: _check_model_keys(model_keys)))
    out.append(_check_broker(link.broker_url, tls, timeout_s))
    if systemd:
        out.append(_check_service(root))
    return out


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def _guard(name: str, hint: str, fn: Callable[[], str]) -> Check:
    try:
        detail = fn()
    except (ForeshockError, OSError, ValueError) as exc:
        return Check(name, "FAIL", str(exc), getattr(exc, "hint", None) or hint)
    if detail.startswith("WARN "):
        return Check(name, "WARN", detail[5:], "renew: foreshock device provision ... again")
    return Check(name, "ok", detail)


def _check_key(tls: TlsFiles) -> str:
    security.check_private_file_permissions(tls.key, "device private key")
    return f"{tls.key} (0600)"


def _check_cert(tls: TlsFiles, cfg: Any) -> str:
    leaf = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    check_leaf(leaf, ca, cfg.device.device_id)
    key = serialization.load_pem_private_key(tls.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not same_key(leaf.public_key(), key):
        raise ConfigError(f"certificate {tls.cert} does not match the key {tls.key}")
    days = (leaf.not_valid_after_utc - now_utc()).days
    detail = f"CN={cfg.device.device_id}, expires {leaf.not_valid_after_utc:%Y-%m-%d} ({days} d)"
    return f"WARN {detail}: less than {RENEW_DAYS} days left" if days < RENEW_DAYS else detail


def _check_clock(tls: TlsFiles) -> Check:
    now = now_utc()
    hint = "set the clock: timedatectl set-ntp true (check the RTC battery)"
    if now < MIN_SANE_CLOCK:
        return Check("clock", "FAIL", f"system time {now:%Y-%m-%d %H:%M} UTC is in the past",
                     hint)
    try:
        leaf = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    except (OSError, ValueError):
        return Check("clock", "ok", f"{now:%Y-%m-%d %H:%M:%S} UTC")
    if now < leaf.not_valid_before_utc:
        return Check("clock", "FAIL", f"system time {now:%Y-%m-%d %H:%M} UTC is before the "
                     f"certificate's start {leaf.not_valid_before_utc:%Y-%m-%d %H:%M}", hint)
    return Check("clock", "ok", f"{now:%Y-%m-%d %H:%M:%S} UTC")


def _check_model_keys(paths: list[Path]) -> str:
    if not paths:
        raise ConfigError("[model] trusted_keys is empty: every model bundle will be refused")
    security.load_trusted_keys(paths)
    return f"{len(paths)} pinned ed25519 key(s): {', '.join(str(p) for p in paths)}"


def _check_broker(url: str, tls: TlsFiles, timeout_s: float) -> Check:
    """A real TLS handshake with the device certificate, then a short wait for the broker's
    verdict on it (TLS 1.3 reports a rejected client certificate after the handshake). No
    MQTT CONNECT: it would take over the running agent's session."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 8883
    hint = (f"is the broker up and reachable on {host}:{port}? is this certificate revoked? "
            "(foreshock gateway ca list)")
    if parts.scheme != "mqtts":
        return Check("broker", "FAIL", f"{url} is not TLS", "use mqtts://host:8883")
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca))
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        with socket.create_connection((host, port), timeout=timeout_s) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as conn:
            conn.settimeout(min(1.0, timeout_s))
            try:
                if conn.recv(1) == b"":
                    return Check("broker", "FAIL", f"{host}:{port} closed the connection "
                                 "after the TLS handshake", hint)
            except TimeoutError:
                pass
            version = conn.version()
    except (OSError, ssl.SSLError) as exc:
        return Check("broker", "FAIL", f"{host}:{port}: {exc}", hint)
    return Check("broker", "ok", f"{host}:{port} accepted the device certificate ({version})")


def _check_service(root: Path) -> Check:
    hint = f"systemctl enable --now {UNIT_NAME} (or provision without --no-systemd)"
    if root != Path("/"):
        unit = root / UNIT_DIR.lstrip("/") / UNIT_NAME
        if not unit.is_file():
            return Check("service", "FAIL", f"{unit} is missing", hint)
        wants = unit.parent / f"{wanted_by(unit.read_text())}.wants" / UNIT_NAME
        if not wants.is_symlink():
            return Check("service", "FAIL", f"{wants} is missing (not enabled)", hint)
        return Check("service", "ok", f"{UNIT_NAME} enabled in the image")
    try:
        state = subprocess.run(["systemctl", "is-enabled", UNIT_NAME], capture_output=True,
                               text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("service", "FAIL", f"systemctl unavailable: {exc}",
                     "use --no-systemd on a host without systemd")
    if state != "enabled":
        return Check("service", "FAIL", f"{UNIT_NAME} is {state or 'unknown'}", hint)
    return Check("service", "ok", f"{UNIT_NAME} enabled")
