"""``foreshock device provision`` and ``foreshock device check``.

Provisioning gives a device its identity and configuration, on the device itself:

1. an EC P-256 private key generated here (``/etc/foreshock/tls/device.key``, 0600; it never
   leaves the device) and a CSR with CN = device id;
2. the certificate: signed by the site CA directly (``--ca-dir``, on a bench with CA access),
   or offline: ``--csr-out`` writes the CSR to a USB stick, ``foreshock gateway ca sign``
   signs it elsewhere, and ``--cert-in`` installs the result (device cert + CA chain);
3. the pinned model-signing public key (``/etc/foreshock/model-signing.pub``);
4. ``/etc/foreshock/agent.toml`` (settings it does not own are kept on a re-run);
5. the systemd unit, enabled (``--no-systemd`` skips; with ``--root`` it is copied into the
   image and the ``wants`` symlink made by hand).

Every step first looks at what is already there, so a re-run changes nothing and prints
what is unchanged, and an interrupted run resumes where it stopped (files are written to a
temporary name and renamed). ``--dry-run`` prints every file it would write and writes
nothing. ``--root DIR`` prefixes every path (building an SD-card image); the paths written
*into* agent.toml are the ones the device will see.
"""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import typer
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import security
from foreshock import topics
from foreshock.config import read_toml
from foreshock.errors import ConfigError, ForeshockError

log = logging.getLogger(__name__)

ETC: Final = "/etc/foreshock"
CONFIG: Final = f"{ETC}/agent.toml"
KEY: Final = f"{ETC}/tls/device.key"
CSR: Final = f"{ETC}/tls/device.csr"
CERT: Final = f"{ETC}/tls/device.crt"
CA_CERT: Final = f"{ETC}/tls/ca.crt"
MODEL_KEY: Final = f"{ETC}/model-signing.pub"
STATE_DIR: Final = "/var/lib/foreshock"
UNIT_NAME: Final = "foreshock-agent.service"
UNIT_DIR: Final = "/etc/systemd/system"
UNIT_SOURCE: Final = Path(__file__).resolve().parent / "deploy" / UNIT_NAME
RENEW_DAYS: Final = 30


@dataclass(frozen=True)
class Request:
    """What ``provision`` was asked to do (the CLI options)."""

    device_id: str
    site: str
    broker_url: str
    root: Path = Path("/")
    ca_dir: Path | None = None
    csr_out: Path | None = None
    cert_in: Path | None = None
    ca_cert: Path | None = None
    model_key: Path | None = None
    systemd: bool = True
    dry_run: bool = False
    source: str | None = None
    paths_under_root: bool = False

    def __post_init__(self) -> None:
        if self.paths_under_root and self.root == Path("/"):
            raise ConfigError("--paths-under-root needs --root DIR")
        if self.source is not None:
            parse_source(self.source)
        topics.check_id(self.device_id, "--device-id")
        topics.check_id(self.site, "--site")
        if not self.broker_url.startswith("mqtts://"):
            raise ConfigError(f"--broker {self.broker_url!r} must be mqtts://host:port: "
                              "a provisioned device talks TLS only")

    def path(self, device_path: str) -> Path:
        """Where a device path lives on this machine (under ``--root``)."""
        return self.root / device_path.lstrip("/")

    def config_path(self, device_path: str) -> str:
        """A path as ``agent.toml`` names it: the device's own, or the one under ``--root``
        with ``--paths-under-root`` (a trial on this machine rather than an image)."""
        return str(self.path(device_path)) if self.paths_under_root else device_path


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
            if same_key(old.public_key(), key) and _cn(old.subject) == self.req.device_id:
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


def unit_user(unit_text: str) -> str | None:
    for line in unit_text.splitlines():
        if line.strip().startswith("User="):
            return line.split("=", 1)[1].strip() or None
    return None


def ensure_user(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        pass
    done = subprocess.run(["useradd", "--system", "--home-dir", STATE_DIR, "--shell",
                           "/usr/sbin/nologin", user], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise ForeshockError(f"cannot create service user {user!r}: {done.stderr.strip()}",
                             hint=f"useradd --system {user}, then re-run")
    return pwd.getpwnam(user)


CONFIG_HEADER: Final = ("# Foreshock agent configuration (docs/config.md). Written by "
                        "`foreshock device provision`;\n# a re-run updates only [device], "
                        "[link] broker/TLS and [model] trusted_keys.\n\n")


def merge_config(current: dict[str, Any], req: Request) -> dict[str, Any]:
    """``current`` with the keys provisioning owns set; everything else kept."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in current.items()}
    merged.setdefault("device", {}).update(device_id=req.device_id, site=req.site)
    merged.setdefault("link", {}).update(
        broker_url=req.broker_url, tls_ca_path=req.config_path(CA_CERT),
        tls_cert_path=req.config_path(CERT), tls_key_path=req.config_path(KEY))
    model = merged.setdefault("model", {})
    keys = list(model.get("trusted_keys", []))
    model_key = req.config_path(MODEL_KEY)
    model["trusted_keys"] = keys if model_key in keys else [*keys, model_key]
    merged.setdefault("service", {}).setdefault("state_dir", req.config_path(STATE_DIR))
    if req.source is not None or "source" not in merged:
        merged["source"] = parse_source(req.source or DEFAULT_SOURCE)
    return merged


DEFAULT_SOURCE: Final = "serial:/dev/ttyUSB0"


def parse_source(text: str) -> dict[str, Any]:
    """``serial:/dev/ttyUSB0``, ``udp:0.0.0.0:9000``, ``mqtt`` or ``file:/path`` as a
    ``[source]`` table."""
    kind, _, arg = text.partition(":")
    if kind == "serial" and arg:
        return {"type": "serial", "params": {"port": arg}}
    if kind == "udp" and arg.rpartition(":")[2].isdigit():
        host, _, port = arg.rpartition(":")
        return {"type": "udp", "params": {"host": host or "0.0.0.0", "port": int(port)}}
    if kind == "mqtt" and not arg:
        return {"type": "mqtt", "params": {}}
    if kind == "file" and arg:
        return {"type": "file", "params": {"path": arg}}
    raise ConfigError(f"--source {text!r} is invalid; use serial:/dev/ttyUSB0, "
                      "udp:HOST:PORT, mqtt or file:/path")


def dump_toml(table: dict[str, Any], prefix: str = "") -> str:
    """Minimal TOML writer for config tables: scalars, lists and nested tables."""
    simple = {k: v for k, v in table.items() if not isinstance(v, dict)}
    nested = {k: v for k, v in table.items() if isinstance(v, dict)}
    out = [f"[{prefix}]"] if prefix and (simple or not nested) else []
    out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in simple.items()]
    text = "\n".join(out) + ("\n\n" if out else "")
    for k, v in nested.items():
        text += dump_toml(v, f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k))
    return text


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def wanted_by(unit_text: str) -> str:
    for line in unit_text.splitlines():
        if line.strip().startswith("WantedBy="):
            return line.split("=", 1)[1].split()[0]
    return "multi-user.target"


def enable_unit(prov: Provisioner) -> None:
    if prov.req.dry_run:
        prov.say("would run", f"systemctl daemon-reload && systemctl enable {UNIT_NAME}")
        return
    state = subprocess.run(["systemctl", "is-enabled", UNIT_NAME], capture_output=True,
                           text=True, check=False).stdout.strip()
    if state == "enabled":
        prov.say("unchanged", f"{UNIT_NAME} (enabled)")
        return
    for cmd in (["systemctl", "daemon-reload"], ["systemctl", "enable", UNIT_NAME]):
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ForeshockError(f"{' '.join(cmd)} failed: {done.stderr.strip()}",
                                 hint="run it by hand, or use --no-systemd")
    prov.say("enabled", UNIT_NAME)


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


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write to a temporary name, fsync, set the mode, rename: never a half-written file."""
    path.parent.mkdir(mode=0o755 if mode & 0o044 else 0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def same_key(public: Any, key: ec.EllipticCurvePrivateKey) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return bool(public.public_bytes(der, spki) == key.public_key().public_bytes(der, spki))


def check_leaf(leaf: x509.Certificate, ca: x509.Certificate, device_id: str) -> None:
    if _cn(leaf.subject) != device_id:
        raise ConfigError(f"certificate is for {_cn(leaf.subject)!r}, not {device_id!r}")
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigError(f"certificate is not signed by the site CA {_cn(ca.subject)!r}: "
                          f"{exc or type(exc).__name__}") from None
    if leaf.not_valid_after_utc <= now_utc():
        raise ConfigError(f"certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}")


# ----- CLI ----------------------------------------------------------------------------------

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Provision and check a device: keys, certificate, config, systemd unit.")


@app.command()
def provision(
    device_id: str = typer.Option(..., "--device-id", help="This device's id (certificate CN)."),
    site: str = typer.Option(..., "--site", help="Site id."),
    broker: str = typer.Option(..., "--broker", help="mqtts://host:8883"),
    root: Path = typer.Option(Path("/"), "--root", help="Install under DIR (SD-card image)."),
    ca_dir: Path | None = typer.Option(None, "--ca-dir", help="Site CA directory on this "
                                                              "machine: sign directly."),
    csr_out: Path | None = typer.Option(None, "--csr-out", help="Offline: write the CSR here."),
    cert_in: Path | None = typer.Option(None, "--cert-in", help="Offline: signed certificate "
                                                                "(+ CA chain) to install."),
    ca_cert: Path | None = typer.Option(None, "--ca-cert", help="Site CA certificate, if not "
                                                                "in --cert-in."),
    model_key: Path | None = typer.Option(None, "--model-key", help="Model-signing public key "
                                                                    "to pin."),
    no_systemd: bool = typer.Option(False, "--no-systemd", help="Do not install the unit."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be written."),
    source: str | None = typer.Option(None, "--source", help="serial:/dev/ttyUSB0 | "
                                      "udp:HOST:PORT | mqtt | file:/path [default: keep the "
                                      "config's, else serial:/dev/ttyUSB0]"),
    paths_under_root: bool = typer.Option(
        False, "--paths-under-root", help="With --root: agent.toml names the files under DIR "
        "(a trial on this machine, run with `foreshock agent run --config`), not the "
        "device's own /etc paths."),
) -> None:
    """Give this device its key, certificate, config and service (idempotent, resumable)."""
    req = Request(device_id, site, broker, root, ca_dir, csr_out, cert_in, ca_cert, model_key,
                  not no_systemd, dry_run, source, paths_under_root)
    done = Provisioner(req, echo=typer.echo).run()
    if dry_run:
        typer.echo("dry run: nothing was written")
    elif done:
        typer.echo(f"provisioned {site}/{device_id}; verify with: {check_command(req)}")


def check_command(req: Request) -> str:
    """The ``foreshock device check`` command line that fits how ``req`` provisioned."""
    extra = "" if req.systemd else " --no-systemd"
    if req.paths_under_root:
        return f"foreshock device check --config {req.path(CONFIG)}{extra}"
    root = f" --root {req.root}" if req.root != Path("/") else ""
    return f"foreshock device check{root}{extra}"


@app.command()
def check(
    root: Path = typer.Option(Path("/"), "--root", help="Check an image under DIR."),
    config: Path | None = typer.Option(None, "--config", help="[default: <root>" + CONFIG
                                       + "]"),
    no_systemd: bool = typer.Option(False, "--no-systemd", help="Skip the service check."),
    timeout_s: float = typer.Option(5.0, "--timeout-s", help="Broker connection timeout."),
) -> None:
    """Check config, certificate, clock, broker (TLS) and service; exit 1 on a failure."""
    from agent.provision_check import run_checks

    results = run_checks(root, config or root / CONFIG.lstrip("/"), not no_systemd, timeout_s)
    for r in results:
        typer.echo(r.line())
    if any(r.status == "FAIL" for r in results):
        raise typer.Exit(1)
