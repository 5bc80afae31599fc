"""The provisioning steps (:class:`Provisioner`): key, CSR, certificate, pinned model key,
``agent.toml``, state directory, systemd unit and file ownership, each first looking at what
is already there (the package doc, :mod:`agent.provision`, tells the whole story)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import security
from agent.provision.certs import check_leaf, common_name, now_utc, same_key, sign_with_local_ca
from agent.provision.config_file import CONFIG_HEADER, dump_toml, merge_config
from agent.provision.request import (
    CA_CERT,
    CERT,
    CONFIG,
    CSR,
    KEY,
    MODEL_KEY,
    RENEW_DAYS,
    STATE_DIR,
    UNIT_DIR,
    UNIT_NAME,
    UNIT_SOURCE,
    Request,
)
from agent.provision.system import atomic_write, enable_unit, ensure_user, unit_user, wanted_by
from foreshock.config import read_toml
from foreshock.errors import ConfigError


@dataclass
class Provisioner:
    """Runs the steps; ``lines`` collects one line per file: created/updated/unchanged."""

    req: Request
    echo: Callable[[str], None] = print
    lines: list[str] = field(default_factory=list)

    def say(self, action: str, what: str) -> None:
        line = f"{action:<10} {what}"
        self.lines.append(line)
        self.echo(line)

    def write(self, device_path: str, data: bytes, mode: int = 0o644) -> bool:
        """Write a file unless it already holds ``data``; True if it was (or would be)
        written."""
        path = self.req.path(device_path)
        old = path.read_bytes() if path.is_file() else None
        if old == data:
            self.say("unchanged", str(path))
            return False
        verb = "created" if old is None else "updated"
        if self.req.dry_run:
            self.say("would write" if old is None else "would update", str(path))
            return True
        atomic_write(path, data, mode)
        self.say(verb, str(path))
        return True

    # -- steps ---------------------------------------------------------------------------
    def run(self) -> bool:
        """All steps; False when waiting for an offline-signed certificate."""
        req = self.req
        if not (req.ca_dir or req.csr_out or req.cert_in or req.path(CERT).exists()):
            raise ConfigError("no way to get a certificate: give --ca-dir (CA on this "
                              "machine), or --csr-out FILE now and --cert-in FILE later")
        key = self.step_key()
        csr = self.step_csr(key)
        if not self.step_cert(key, csr):
            return False
        self.step_model_key()
        self.step_config()
        self.step_state_dir()
        if self.req.systemd:
            self.step_systemd()
            self.step_owner()
        return True

    def step_key(self) -> ec.EllipticCurvePrivateKey | None:
        path = self.req.path(KEY)
        if path.exists():
            security.check_private_file_permissions(path, "device private key")
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ConfigError(f"device key {path} is not an EC key; move it away and "
                                  "re-run to generate a new one")
            self.say("unchanged", f"{path} (device private key, kept)")
            return key
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        self.write(KEY, pem, 0o600)
        return None if self.req.dry_run else key

    def step_csr(self, key: ec.EllipticCurvePrivateKey | None) -> bytes | None:
        path = self.req.path(CSR)
        if key is None:
            self.say("would write", f"{path} (CSR for CN={self.req.device_id})")
            return None
        if path.exists():
            old = x509.load_pem_x509_csr(path.read_bytes())
            if same_key(old.public_key(), key) and common_name(old.subject) == self.req.device_id:
                self.say("unchanged", str(path))
                return path.read_bytes()
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([
                   x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, self.req.site),
                   x509.NameAttribute(NameOID.COMMON_NAME, self.req.device_id)]))
               .sign(key, hashes.SHA256()))
        pem = csr.public_bytes(serialization.Encoding.PEM)
        self.write(CSR, pem)
        return pem

    def step_cert(self, key: ec.EllipticCurvePrivateKey | None, csr: bytes | None) -> bool:
        if key is not None and self._cert_current(key):
            self.say("unchanged", f"{self.req.path(CERT)} (valid certificate)")
            self.say("unchanged", str(self.req.path(CA_CERT)))
            return True
        chain = self._obtain_chain(csr)
        if chain is None:
            return False
        if key is None:  # dry run without a key yet
            self.say("would write", str(self.req.path(CERT)))
            self.say("would write", str(self.req.path(CA_CERT)))
            return True
        leaf, ca = self._split_chain(chain)
        if not same_key(leaf.public_key(), key):
            raise ConfigError("the certificate is not for this device's key (was it signed "
                              "from another device's CSR?)",
                              hint="sign the CSR this device wrote: " + str(self.req.path(CSR)))
        check_leaf(leaf, ca, self.req.device_id)
        self.write(CA_CERT, ca.public_bytes(serialization.Encoding.PEM))
        self.write(CERT, leaf.public_bytes(serialization.Encoding.PEM))
        return True

    def _cert_current(self, key: ec.EllipticCurvePrivateKey) -> bool:
        cert_path, ca_path = self.req.path(CERT), self.req.path(CA_CERT)
        if not (cert_path.exists() and ca_path.exists()):
            return False
        try:
            leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
            ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
            check_leaf(leaf, ca, self.req.device_id)
        except (ValueError, ConfigError) as exc:
            self.echo(f"replacing certificate {cert_path}: {exc}")
            return False
        left_s = (leaf.not_valid_after_utc - now_utc()).total_seconds()
        return same_key(leaf.public_key(), key) and left_s > RENEW_DAYS * 86400

    def _obtain_chain(self, csr: bytes | None) -> bytes | None:
        req = self.req
        if req.cert_in is not None:
            try:
                return req.cert_in.read_bytes()
            except OSError as exc:
                raise ConfigError(f"--cert-in {req.cert_in}: {exc}") from None
        if req.ca_dir is not None:
            if req.dry_run or csr is None:
                self.say("would sign", f"the CSR with the CA in {req.ca_dir}")
                return b"" if req.dry_run else None
            return sign_with_local_ca(req.ca_dir, csr)
        if req.csr_out is not None:
            if csr is not None and not req.dry_run:
                atomic_write(req.csr_out, csr, 0o644)
            self.say("would write" if req.dry_run else "wrote", f"{req.csr_out} (CSR)")
            self.echo(f"next: foreshock gateway ca sign {req.csr_out.name} --out device.crt "
                      "(on the CA host), then re-run this command with --cert-in device.crt")
            return None
        raise ConfigError("no way to get a certificate: give --ca-dir (CA on this machine), "
                          "or --csr-out FILE now and --cert-in FILE later (offline)")

    def _split_chain(self, chain: bytes) -> tuple[x509.Certificate, x509.Certificate]:
        try:
            certs = x509.load_pem_x509_certificates(chain)
        except ValueError as exc:
            raise ConfigError(f"certificate input is not PEM: {exc}") from None
        leaf = certs[0]
        cas = [c for c in certs[1:] if c.subject == leaf.issuer]
        if not cas:
            source = self.req.ca_cert or self.req.path(CA_CERT)
            try:
                cas = x509.load_pem_x509_certificates(Path(source).read_bytes())
            except (OSError, ValueError):
                raise ConfigError("the certificate input holds no CA certificate",
                                  hint="give --ca-cert ca.crt from the site CA") from None
        return leaf, cas[0]

    def step_model_key(self) -> None:
        source = self.req.model_key or (self.req.ca_dir / "model-signing.pub"
                                        if self.req.ca_dir else None)
        if source is None:
            if self.req.path(MODEL_KEY).exists():
                self.say("unchanged", f"{self.req.path(MODEL_KEY)} (pinned model key)")
                return
            raise ConfigError("no model-signing public key to pin",
                              hint="give --model-key model-signing.pub (from the site CA)")
        try:
            pem = Path(source).read_bytes()
        except OSError as exc:
            raise ConfigError(f"--model-key {source}: {exc}") from None
        security.load_trusted_keys([pem])  # an ed25519 public key, or BundleError
        self.write(MODEL_KEY, pem)

    def step_config(self) -> None:
        from agent.config import AgentConfig

        path = self.req.path(CONFIG)
        current = read_toml(path) if path.exists() else {}
        merged = merge_config(current, self.req)
        AgentConfig.from_dict(merged)  # the agent's own loader must accept it
        if path.exists() and merged == current:
            self.say("unchanged", str(path))
            return
        self.write(CONFIG, (CONFIG_HEADER + dump_toml(merged)).encode(), 0o640)

    def step_state_dir(self) -> None:
        path = self.req.path(STATE_DIR)
        if path.is_dir():
            self.say("unchanged", f"{path}/")
        elif self.req.dry_run:
            self.say("would make", f"{path}/")
        else:
            path.mkdir(mode=0o750, parents=True)
            self.say("created", f"{path}/")

    def step_systemd(self) -> None:
        try:
            unit = UNIT_SOURCE.read_bytes()
        except OSError:
            raise ConfigError(f"systemd unit {UNIT_SOURCE} is missing from the package",
                              hint="reinstall foreshock, or pass --no-systemd") from None
        self.write(f"{UNIT_DIR}/{UNIT_NAME}", unit)
        wants = self.req.path(f"{UNIT_DIR}/{wanted_by(unit.decode())}.wants/{UNIT_NAME}")
        if self.req.root != Path("/"):
            if wants.is_symlink():
                self.say("unchanged", f"{wants} (enabled)")
            elif self.req.dry_run:
                self.say("would link", str(wants))
            else:
                wants.parent.mkdir(parents=True, exist_ok=True)
                wants.symlink_to(f"{UNIT_DIR}/{UNIT_NAME}")
                self.say("created", f"{wants} (enabled)")
            return
        enable_unit(self)

    def step_owner(self) -> None:
        """Hand the TLS files to the unit's ``User=`` (created if missing), as root only."""
        user = unit_user(UNIT_SOURCE.read_text()) if UNIT_SOURCE.exists() else None
        if not user:
            return
        if self.req.root != Path("/") or os.geteuid() != 0:
            self.echo(f"note: the service runs as {user!r}: make {KEY} and {CERT} owned by "
                      f"it (chown {user}: ...) on the device")
            return
        if self.req.dry_run:
            self.say("would chown", f"{user}: {KEY}, {CERT}, {CSR}, {Path(KEY).parent}")
            return
        entry = ensure_user(user)
        for path in (Path(KEY).parent, Path(KEY), Path(CERT), Path(CSR), Path(CONFIG)):
            uid = 0 if path == Path(CONFIG) else entry.pw_uid
            st = path.stat()
            if (st.st_uid, st.st_gid) != (uid, entry.pw_gid):
                os.chown(path, uid, entry.pw_gid)
                self.say("chowned", f"{path} -> {'root' if uid == 0 else user}:{user}")
