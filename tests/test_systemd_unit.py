"""The shipped unit passes `systemd-analyze verify` (ExecStart pointed at a real binary)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "agent" / "deploy" / "foreshock-agent.service"


def test_unit_verifies(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if not Path(exe).exists():
        pytest.fail("systemd-analyze is required (apt-get install systemd)")
    text = UNIT.read_text()
    for key in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=",
                "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                "PrivateTmp=yes"):
        assert key in text, key
    # The container has no foreshock binary nor user: point at ones that exist.
    text = text.replace("ExecStart=/usr/local/bin/foreshock", "ExecStart=/bin/true")
    text = text.replace("User=foreshock", "User=root").replace("Group=foreshock", "Group=root")
    unit = tmp_path / "foreshock-agent.service"
    unit.write_text(text)
    proc = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "foreshock-agent.service" not in proc.stderr, proc.stderr
