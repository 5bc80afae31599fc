"""What provisioning does to the machine outside its own files: atomic writes
(:func:`foreshock.files.atomic_write`), the systemd unit's ``User=`` and ``WantedBy=``, the
service user, and enabling the unit."""

from __future__ import annotations

import pwd
import subprocess
from typing import TYPE_CHECKING

__all__ = ["atomic_write", "enable_unit", "ensure_user", "unit_user", "wanted_by"]

from agent.provision.request import STATE_DIR, UNIT_NAME
from foreshock.errors import ForeshockError
from foreshock.files import atomic_write

if TYPE_CHECKING:
    from agent.provision.steps import Provisioner


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

