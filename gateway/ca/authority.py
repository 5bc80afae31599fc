"""The CA directory (:class:`SiteCa`): create it, sign device CSRs, issue role and broker
identities, keep the index of issued certificates, revoke into the CRL.

The directory layout and identity names are described in :mod:`gateway.ca`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from foreshock import bundle
from foreshock.errors import ConfigError
from foreshock.topics import check_id
from gateway.ca.pem import cert_pem, key_pem, new_key, write_private, write_public

log = logging.getLogger(__name__)

CA_DAYS: Final = 3650
DEVICE_DAYS: Final = 365
CRL_DAYS: Final = 180
CLOCK_SKEW: Final = timedelta(minutes=5)
ROLE_NAME_RE: Final = re.compile(r"^_[A-Za-z0-9][A-Za-z0-9_.-]{0,30}$")
DEFAULT_CA_DIR: Final = Path("/var/lib/foreshock/ca")
Role = Literal["device", "gateway", "viewer", "server"]


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class SiteCa:
    """A CA directory. ``SiteCa(path).init(site)`` once, then sign, issue and revoke."""

    root: Path

    @property
    def key_path(self) -> Path:
        return self.root / "private" / "ca.key"

    @property
    def cert_path(self) -> Path:
        return self.root / "ca.crt"

    @property
    def crl_path(self) -> Path:
        return self.root / "crl.pem"

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    @property
    def signing_pub_path(self) -> Path:
        return self.root / "model-signing.pub"

    def identity_dir(self, name: str) -> Path:
        return self.root / "identities" / name

    # ----- init -----------------------------------------------------------------------------

    def init(self, site: str, hosts: Sequence[str] = ("localhost", "127.0.0.1"),
             signing_dir: Path | None = None, days: int = CA_DAYS) -> list[str]:
        """Create the CA, CRL, broker and gateway identities and the model-signing key.

        Idempotent: what exists is kept. Returns one line per item (created or kept).
        """
        check_id(site, "site")
        done: list[str] = []
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        if self.key_path.exists():
            done.append(f"kept CA key {self.key_path}")
            if self._index()["site"] != site:
                raise ConfigError(f"CA at {self.root} belongs to site "
                                  f"{self._index()['site']!r}, not {site!r}")
        else:
            self._make_root(site, days)
            done.append(f"created CA key {self.key_path} and certificate {self.cert_path}")
        if not self.crl_path.exists():
            self.write_crl()
            done.append(f"created CRL {self.crl_path}")
        for name, role in (("server", "server"), ("_gateway", "gateway")):
            if (self.identity_dir(name) / "cert.pem").exists():
                done.append(f"kept {role} identity {self.identity_dir(name)}")
            else:
                self.issue(name, role, hosts=hosts)  # type: ignore[arg-type]
                done.append(f"created {role} identity {self.identity_dir(name)}")
        done.append(self._init_signing(signing_dir or self.root.parent / "model-signing"))
        return done

    def _make_root(self, site: str, days: int) -> None:
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Foreshock"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"Foreshock site CA {site}")])
        now = _now()
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_private(self.key_path, key_pem(key))
        write_public(self.cert_path, cert_pem(cert))
        self._save_index({"site": site, "certs": []})

    def _init_signing(self, signing_dir: Path) -> str:
        key_path = signing_dir / "model-signing.key"
        if key_path.exists():
            pub = bundle.public_key_pem(bundle.load_private_key(key_path).public_key())
            if not self.signing_pub_path.exists():
                write_public(self.signing_pub_path, pub)
            return f"kept model-signing key {key_path}"
        signing_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(signing_dir, 0o700)
        key = bundle.generate_signing_key()
        write_private(key_path, bundle.private_key_pem(key))
        pub = bundle.public_key_pem(key.public_key())
        write_public(signing_dir / "model-signing.pub", pub)
        write_public(self.signing_pub_path, pub)
        return f"created model-signing key {key_path} (public: {self.signing_pub_path})"

    # ----- load / index ---------------------------------------------------------------------

    def load(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if not self.key_path.exists() or not self.cert_path.exists():
            raise ConfigError(f"no CA at {self.root}",
                              hint=f"foreshock gateway ca init --ca-dir {self.root} --site SITE")
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"CA key {self.key_path} is not an EC key")
        return key, x509.load_pem_x509_certificate(self.cert_path.read_bytes())

    def _index(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.index_path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no CA index at {self.index_path}") from None
        except ValueError as exc:
            raise ConfigError(f"CA index {self.index_path} is corrupt: {exc}") from None
        return data

    def _save_index(self, data: dict[str, Any]) -> None:
        write_private(self.index_path, (json.dumps(data, indent=2) + "\n").encode())

    @property
    def site(self) -> str:
        return str(self._index()["site"])

    def entries(self) -> list[dict[str, Any]]:
        return list(self._index()["certs"])

    # ----- issuing --------------------------------------------------------------------------

    def sign_csr(self, csr_pem: bytes, days: int = DEVICE_DAYS) -> x509.Certificate:
        """Sign a device CSR. CN must be a valid device id; SAN names the device."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise ConfigError(f"not a PEM certificate signing request: {exc}") from None
        if not csr.is_signature_valid:
            raise ConfigError("CSR signature is invalid (corrupted or tampered)")
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1:
            raise ConfigError("CSR must carry exactly one CN (the device id)")
        device = check_id(str(cns[0].value), "device id (CSR CN)")
        return self._issue_cert(device, "device", csr.public_key(), (), days)

    def issue(self, name: str, role: Role, hosts: Sequence[str] = (),
              days: int = DEVICE_DAYS) -> Path:
        """Make a key and certificate here for the broker (server) or a role identity."""
        if role == "server":
            if not hosts:
                raise ConfigError("a server certificate needs at least one --host")
        elif not ROLE_NAME_RE.match(name):
            raise ConfigError(f"{role} identity {name!r} must start with '_' then 1-31 of "
                              "A-Z a-z 0-9 _ . - (device ids can never look like that)")
        key = new_key()
        cn = hosts[0] if role == "server" else name
        cert = self._issue_cert(cn, role, key.public_key(), hosts, days)
        out = self.identity_dir(name)
        out.parent.mkdir(mode=0o700, exist_ok=True)
        write_private(out / "key.pem", key_pem(key))
        write_public(out / "cert.pem", cert_pem(cert))
        write_public(out / "ca.crt", self.cert_path.read_bytes())
        return out

    def _issue_cert(self, cn: str, role: Role, public_key: Any, hosts: Sequence[str],
                    days: int) -> x509.Certificate:
        ca_key, ca_cert = self.load()
        if days < 1:
            raise ConfigError(f"days = {days} must be at least 1")
        now = _now()
        not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else \
            ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Foreshock"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, self.site),
                x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, True, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(_san(cn, role, self.site, hosts)), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256())
        )
        self._record(cert, cn, role)
        log.info("issued %s certificate for %s serial %x", role, cn, cert.serial_number)
        return cert

    def _record(self, cert: x509.Certificate, cn: str, role: Role) -> None:
        write_public(self.root / "issued" / f"{cert.serial_number:x}.crt", cert_pem(cert))
        index = self._index()
        index["certs"].append({
            "serial": f"{cert.serial_number:x}", "cn": cn, "role": role,
            "not_after": cert.not_valid_after_utc.isoformat(), "revoked": None})
        self._save_index(index)

    # ----- revocation -----------------------------------------------------------------------

    def revoke(self, target: str) -> list[str]:
        """Revoke by serial (hex) or by CN (every certificate of that name); rewrite the CRL."""
        index = self._index()
        hits = [c for c in index["certs"]
                if (c["serial"] == target.lower() or c["cn"] == target) and not c["revoked"]]
        if not hits:
            raise ConfigError(f"no unrevoked certificate with serial or CN {target!r}",
                              hint="foreshock gateway ca list")
        for c in hits:
            c["revoked"] = _now().isoformat()
        self._save_index(index)
        self.write_crl()
        return [c["serial"] for c in hits]

    def write_crl(self, days: int = CRL_DAYS) -> Path:
        """(Re)write the CRL; mosquitto rejects every client once it expires, so refresh it."""
        ca_key, ca_cert = self.load()
        now = _now()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
                   .last_update(now - CLOCK_SKEW).next_update(now + timedelta(days=days))
                   .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False))
        for c in self._index()["certs"]:
            if c["revoked"]:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder().serial_number(int(c["serial"], 16))
                    .revocation_date(datetime.fromisoformat(c["revoked"])).build())
        crl = builder.sign(ca_key, hashes.SHA256())
        write_public(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        return self.crl_path


def _san(cn: str, role: Role, site: str, hosts: Sequence[str]) -> list[x509.GeneralName]:
    if role == "server":
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return names
    return [x509.UniformResourceIdentifier(f"urn:foreshock:{site}:{role}:{cn}")]

