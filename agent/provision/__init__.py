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

The package holds :mod:`agent.provision.request` (the options and the device paths),
:mod:`agent.provision.steps` (the steps), :mod:`agent.provision.certs` (certificate checks,
signing with a local CA), :mod:`agent.provision.config_file` (``agent.toml``),
:mod:`agent.provision.system` (systemd, the service user, atomic writes) and
:mod:`agent.provision.cli` (the commands); every name is importable from here.
"""

from agent.provision.certs import check_leaf, now_utc, same_key, sign_with_local_ca
from agent.provision.cli import app, check, check_command, provision
from agent.provision.config_file import (
    CONFIG_HEADER,
    DEFAULT_SOURCE,
    dump_toml,
    merge_config,
)
from agent.provision.request import (
    CA_CERT,
    CERT,
    CONFIG,
    CSR,
    ETC,
    KEY,
    MODEL_KEY,
    RENEW_DAYS,
    STATE_DIR,
    UNIT_DIR,
    UNIT_NAME,
    UNIT_SOURCE,
    Request,
    parse_source,
)
from agent.provision.steps import Provisioner
from agent.provision.system import (
    atomic_write,
    enable_unit,
    ensure_user,
    unit_user,
    wanted_by,
)

__all__ = [
    "CA_CERT", "CERT", "CONFIG", "CONFIG_HEADER", "CSR", "DEFAULT_SOURCE", "ETC", "KEY",
    "MODEL_KEY", "RENEW_DAYS", "STATE_DIR", "UNIT_DIR", "UNIT_NAME", "UNIT_SOURCE",
    "Provisioner", "Request", "app", "atomic_write", "check", "check_command", "check_leaf",
    "dump_toml", "enable_unit", "ensure_user", "merge_config", "now_utc", "parse_source",
    "provision", "same_key", "sign_with_local_ca", "unit_user", "wanted_by",
]
