"""Certificate checks of provisioning (right key, right CN, signed by the site CA, not
expired) and signing a CSR with a CA directory on this machine."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from foreshock.errors import ConfigError


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def same_key(public: Any, key: ec.EllipticCurvePrivateKey) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return bool(public.public_bytes(der, spki) == key.public_key().public_bytes(der, spki))


def check_leaf(leaf: x509.Certificate, ca: x509.Certificate, device_id: str) -> None:
    if common_name(leaf.subject) != device_id:
        raise ConfigError(f"certificate is for {common_name(leaf.subject)!r}, not {device_id!r}")
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigError(f"certificate is not signed by the site CA {common_name(ca.subject)!r}: "
                          f"{exc or type(exc).__name__}") from None
    if leaf.not_valid_after_utc <= now_utc():
        raise ConfigError(f"certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}")


def sign_with_local_ca(ca_dir: Path, csr: bytes) -> bytes:
    """Sign through ``foreshock gateway ca sign`` in a child process: the agent never imports
    the gateway, and the CA key stays in that process."""
    with tempfile.TemporaryDirectory() as tmp:
        csr_path, out = Path(tmp) / "device.csr", Path(tmp) / "device.crt"
        csr_path.write_bytes(csr)
        done = subprocess.run(
            [sys.executable, "-m", "foreshock.cli", "gateway", "ca", "sign", str(csr_path),
             "--ca-dir",
             str(ca_dir), "--out", str(out)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ConfigError(f"signing with the CA in {ca_dir} failed: "
                              f"{done.stderr.strip() or done.stdout.strip()}")
        return out.read_bytes()

