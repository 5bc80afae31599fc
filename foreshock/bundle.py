"""Model bundles: a directory of model files, a manifest, and an ed25519 signature.

Spec: docs/bundle.md. Layout::

    <bundle>/manifest.json   name, semver, created, feature spec and hash, models, thresholds,
                             training feature statistics, metrics, and ``files``: the SHA-256
                             of every other file in the bundle
    <bundle>/signature       base64 ed25519 signature over the exact bytes of manifest.json
    <bundle>/*.onnx ...      the files listed in the manifest

Verification order (first failure wins, reported as BundleError): manifest present and
parseable, signature valid for one of the trusted public keys, every listed file present
with its hash, no unlisted file, required fields present. Compatibility (feature-spec hash,
version order) is the loader's job, because only it knows what it can compute.

This contract module uses the ``cryptography`` package, the one dependency beyond numpy and
the standard library in ``foreshock/``: signatures are the point of the format.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from foreshock.errors import BundleError

MANIFEST: Final = "manifest.json"
SIGNATURE: Final = "signature"
MANIFEST_SCHEMA: Final = "foreshock.bundle/1"
REQUIRED: Final = ("schema", "name", "version", "created", "feature_spec", "feature_spec_hash",
                   "models", "files")
SEMVER_RE: Final = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:[-+][0-9A-Za-z.-]+)?$")
MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024


def parse_semver(version: str) -> tuple[int, int, int]:
    m = SEMVER_RE.match(str(version))
    if not m:
        raise BundleError(f"version {version!r} is not semver MAJOR.MINOR.PATCH")
    return int(m[1]), int(m[2]), int(m[3])


@dataclass(frozen=True)
class Manifest:
    """A verified manifest. ``data`` is the parsed manifest.json."""

    path: Path
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def version(self) -> str:
        return str(self.data["version"])

    @property
    def semver(self) -> tuple[int, int, int]:
        return parse_semver(self.version)

    @property
    def feature_spec_hash(self) -> str:
        return str(self.data["feature_spec_hash"])

    def file(self, name: str) -> Path:
        if name not in self.data["files"]:
            raise BundleError(f"bundle {self.path} has no file {name!r}")
        return self.path / name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _payload_files(bundle: Path) -> list[str]:
    return sorted(
        p.relative_to(bundle).as_posix() for p in bundle.rglob("*")
        if p.is_file() and p.name not in (MANIFEST, SIGNATURE)
    )


def write_manifest(bundle: Path, manifest: dict[str, Any]) -> bytes:
    """Write manifest.json with ``files`` filled in from the directory; returns its bytes."""
    data = dict(manifest)
    data["schema"] = MANIFEST_SCHEMA
    parse_semver(data.get("version", ""))
    data["files"] = {name: sha256_file(bundle / name) for name in _payload_files(bundle)}
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise BundleError(f"manifest lacks required fields {missing}")
    raw = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    (bundle / MANIFEST).write_bytes(raw)
    return raw


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"cannot load signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"signing key {path} is not an ed25519 key")
    return key


def load_public_key(path_or_pem: Path | bytes) -> Ed25519PublicKey:
    try:
        pem = path_or_pem if isinstance(path_or_pem, bytes) else Path(path_or_pem).read_bytes()
        key = serialization.load_pem_public_key(pem)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"cannot load public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError("public key is not an ed25519 key")
    return key


def sign(bundle: Path, key: Ed25519PrivateKey) -> None:
    """Sign the bundle's manifest.json as it is on disk."""
    raw = (Path(bundle) / MANIFEST).read_bytes()
    (Path(bundle) / SIGNATURE).write_text(base64.b64encode(key.sign(raw)).decode() + "\n")


def read_manifest(bundle: Path) -> dict[str, Any]:
    """Parse manifest.json without checking the signature (for display only)."""
    path = Path(bundle) / MANIFEST
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes")
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise BundleError(f"{bundle} is not a bundle: no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path} is not a JSON object")
    return data


def verify(bundle: Path, trusted: list[Ed25519PublicKey]) -> Manifest:
    """Verify signature and file hashes; return the manifest or raise BundleError."""
    bundle = Path(bundle)
    data = read_manifest(bundle)
    raw = (bundle / MANIFEST).read_bytes()
    try:
        sig = base64.b64decode((bundle / SIGNATURE).read_text().strip(), validate=True)
    except FileNotFoundError:
        raise BundleError(f"bundle {bundle} is unsigned (no {SIGNATURE} file)") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"bundle {bundle}: signature unreadable: {exc}") from None
    if not trusted:
        raise BundleError("no trusted model-signing key configured")
    if not any(_valid(k, sig, raw) for k in trusted):
        raise BundleError(f"bundle {bundle}: signature does not match any trusted key")
    missing = [k for k in REQUIRED if k not in data]
    if missing or data.get("schema") != MANIFEST_SCHEMA:
        raise BundleError(f"bundle {bundle}: manifest lacks {missing or ['schema']}")
    files = data["files"]
    if not isinstance(files, dict):
        raise BundleError(f"bundle {bundle}: manifest 'files' must be an object")
    for name, digest in files.items():
        if not _safe_name(name):
            raise BundleError(f"bundle {bundle}: listed file name {str(name)[:80]!r} is not a "
                              "relative path inside the bundle")
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"bundle {bundle}: listed file {name!r} is missing")
        if not isinstance(digest, str) or sha256_file(path) != digest:
            raise BundleError(f"bundle {bundle}: SHA-256 mismatch for {name}")
    extra = sorted(set(_payload_files(bundle)) - set(files))
    if extra:
        raise BundleError(f"bundle {bundle}: files not in the manifest: {extra}")
    parse_semver(data["version"])
    return Manifest(bundle, data)


def _safe_name(name: object) -> bool:
    """A relative POSIX path of ordinary parts, each a valid file name, inside the bundle."""
    if not isinstance(name, str) or not name or len(name) > 1024 or "\x00" in name:
        return False
    parts = Path(name).parts
    return not Path(name).is_absolute() and all(
        p not in ("..", ".") and 0 < len(p.encode()) <= 255 for p in parts)


def _valid(key: Ed25519PublicKey, sig: bytes, raw: bytes) -> bool:
    try:
        key.verify(sig, raw)
    except InvalidSignature:
        return False
    return True
