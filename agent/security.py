"""Device-side security checks: key and config permissions, secret redaction, bundle version
order.

- :func:`check_private_file_permissions`: a private key readable by group or others is
  refused at start with one :class:`ConfigError` naming the file and the ``chmod`` fix.
- :func:`check_startup_files`: the agent's start-up check over its config file (must not be
  writable by others) and its TLS key and password file (private).
- :func:`redact`: removes key material, passwords and URL credentials from strings and
  nested dicts before they reach a log line or ``foreshock agent status``;
  :class:`RedactingFilter` does it for every log record (:func:`install_log_redaction`).
- :func:`check_not_downgrade` / :func:`verify_bundle_for_install`: a model bundle must be
  signed by a pinned key, match its hashes, and be newer than the installed one.
"""

from __future__ import annotations

import logging
import re
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from foreshock import bundle
from foreshock.errors import BundleError, ConfigError

log = logging.getLogger(__name__)

REDACTED: Final = "[REDACTED]"
PEM_PRIVATE_RE: Final = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL)
URL_CREDENTIALS_RE: Final = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
SECRET_ASSIGN_RE: Final = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|api_key|private_key|passphrase)\b"
    r"\s*[=:]\s*)(?P<q>[\"']?)[^\s\"',;}]+(?P=q)", re.IGNORECASE)
SECRET_KEY_RE: Final = re.compile(
    r"(password|passwd|secret|token|api_key|passphrase|private_key|key_pem)$", re.IGNORECASE)
# Keys that name where a secret lives are not secrets themselves.
PATH_KEY_RE: Final = re.compile(r"(_path|_file|_dir)$", re.IGNORECASE)


def check_private_file_permissions(path: Path | str, what: str = "private key") -> Path:
    """Refuse a private file (key, password file) that group or others may read or write."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"{what} {p} does not exist",
                          hint="foreshock device provision ... (or fix the path in the "
                               "config)") from None
    except OSError as exc:
        raise ConfigError(f"{what} {p} cannot be read: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {p} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{what} {p} is readable or writable by group/others (mode {mode:04o}); "
            f"fix: chmod 600 {p}", hint=f"chmod 600 {p}")
    return p


def check_config_file_permissions(path: Path | str) -> Path:
    """Refuse a config file others may write (it chooses the broker and the trusted keys)."""
    p = Path(path)
    try:
        mode = stat.S_IMODE(p.stat().st_mode)
    except OSError as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc}") from None
    if mode & 0o022:
        raise ConfigError(f"config file {p} is writable by group/others (mode {mode:04o}); "
                          f"fix: chmod 640 {p}", hint=f"chmod 640 {p}")
    return p


def check_startup_files(config_path: Path | str | None, link: Any) -> None:
    """The agent's start-up permission check.

    ``link`` is the config's ``[link]`` section: its ``tls_key_path`` (and a
    ``password_file`` if it has one) must be private. Raises one ConfigError.
    """
    if config_path is not None:
        check_config_file_permissions(config_path)
    key = getattr(link, "tls_key_path", None)
    if key:
        check_private_file_permissions(key, "TLS private key")
    password_file = getattr(link, "password_file", None)
    if password_file:
        check_private_file_permissions(password_file, "password file")


# ----- redaction ------------------------------------------------------------------------------

def redact(value: Any) -> Any:
    """A copy of ``value`` with secrets replaced by ``[REDACTED]``.

    Strings lose PEM private keys, ``user:pass@`` in URLs and ``password=...``-style
    assignments; dicts lose the values of secret-named keys (``password``, ``token``,
    ``private_key``...; ``*_path``/``*_file`` keys are locations, kept); lists and tuples are
    redacted item by item. Anything else is returned unchanged.
    """
    if isinstance(value, str):
        return _redact_text(value)
    if isinstance(value, bytes):
        return _redact_text(value.decode("utf-8", "replace")).encode()
    if isinstance(value, dict):
        return {k: (REDACTED if _secret_key(k) and v not in (None, "") else redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def _secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(SECRET_KEY_RE.search(key)) and \
        not PATH_KEY_RE.search(key)


def _redact_text(text: str) -> str:
    text = PEM_PRIVATE_RE.sub(REDACTED, text)
    text = URL_CREDENTIALS_RE.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    return SECRET_ASSIGN_RE.sub(lambda m: f"{m['key']}{REDACTED}", text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        clean = _redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> RedactingFilter:
    """Attach one :class:`RedactingFilter` to every handler of ``logger`` (default: root).

    Handler filters see records from every module, unlike a filter on a logger.
    """
    target = logger or logging.getLogger()
    filt = RedactingFilter()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(filt)
    return filt


# ----- model bundles --------------------------------------------------------------------------

def check_not_downgrade(installed: str | None, offered: str) -> None:
    """Raise BundleError unless ``offered`` is a newer semver than ``installed``."""
    new = bundle.parse_semver(offered)
    if installed is None:
        return
    old = bundle.parse_semver(installed)
    if new < old:
        raise BundleError(f"bundle version {offered} is a downgrade from installed {installed}; "
                          "refused (use the rollback command to go back)")
    if new == old:
        raise BundleError(f"bundle version {offered} is already installed")


def verify_bundle_for_install(path: Path | str, trusted_keys: Sequence[Path | bytes],
                              installed_version: str | None) -> bundle.Manifest:
    """Verify signature and hashes against the pinned keys, then the version order."""
    keys = load_trusted_keys(trusted_keys)
    manifest = bundle.verify(Path(path), keys)
    check_not_downgrade(installed_version, manifest.version)
    return manifest


def load_trusted_keys(sources: Iterable[Path | bytes]) -> list[Ed25519PublicKey]:
    """Load pinned ed25519 public keys (paths or PEM bytes); BundleError names a bad one."""
    return [bundle.load_public_key(s) for s in sources]
