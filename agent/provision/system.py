"""What provisioning does to the machine outside its own files: atomic writes, the systemd
unit's ``User=`` and ``WantedBy=``, the service user, and enabling the unit."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from agent.provision.request import STATE_DIR, UNIT_NAME
from foreshock.errors import ForeshockError

if TYPE_CHECKING:
    from agent.provision.steps import Provisioner


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

