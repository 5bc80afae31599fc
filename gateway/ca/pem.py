"""Private keys, PEM encoding and atomic writes of the CA's files (private 0600, public
0644, parent directories 0700)."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from foreshock.files import atomic_write


def write_private(path: Path, data: bytes) -> None:
    """Atomically write ``data`` readable by the owner only; parent directories 0700."""
    atomic_write(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Atomically write a public file (certificate, CRL, public key), mode 0644, in a
    parent directory 0700 (the CA's)."""
    atomic_write(path, data, 0o644, dir_mode=0o700)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)

