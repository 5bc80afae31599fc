"""docs/provisioning.md, "Try it on one machine", run as written.

The shell blocks of that section are read from the guide and run in order through bash with
the real CLI: a site CA, a mosquitto started from the generated configuration on a free
loopback port, a device provisioned into a directory, `device check`, the gateway holding the
`_gateway` identity, the agent fed by `sim run`, then `ca revoke` and a broker restart after
which the device is refused. A guide edit that breaks a step, drops one, or reorders them
fails this test.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "provisioning.md"
SECTION = "## Try it on one machine"
BACKGROUND = re.compile(r"^(?P<cmd>.+?) & (?P<var>[A-Z_]+)=\$!$")
EXPORTED = re.compile(r"wrote (\d+) telemetry rows of pump-07")
# The guide's steps, in order: each must be the start of one of its commands.
STEPS = (
    'export T=', 'export PORT=',
    "foreshock gateway ca init ", "foreshock gateway broker-config ", "mosquitto -c ",
    "foreshock device provision ", "foreshock device check ",
    'cat > "$T/gateway.toml" <<EOF', "foreshock gateway run ", "foreshock sim run ",
    "foreshock agent run ", "foreshock gateway export ",
    "foreshock gateway ca revoke ", 'kill "$MOSQ_PID"', "mosquitto -c ",
    "foreshock device check ", "foreshock agent run ", "foreshock gateway export ",
    'kill "$GW_PID" "$MOSQ_PID"', 'rm -rf "$T"',
)


def guide_commands(text: str) -> list[str]:
    """The commands of the section's ```sh blocks (a heredoc is one command)."""
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        heredoc: list[str] | None = None
        for line in block.splitlines():
            if heredoc is not None:
                heredoc.append(line)
                if line == "EOF":
                    commands.append("\n".join(heredoc))
                    heredoc = None
            elif line.strip() and not line.startswith("#"):
                heredoc = [line] if line.endswith("<<EOF") else None
                if heredoc is None:
                    commands.append(line)
    return commands


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, ready: object, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(ready) and ready():
            return
        time.sleep(0.1)
    log_text = log.read_text() if log.exists() else ""
    pytest.fail(f"{what} not ready after {timeout_s} s; {log.name}: {log_text[-2000:]}")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class Trial:
    """Runs the guide's commands in one environment; background ones are ours to stop."""

    env: dict[str, str]
    scratch: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    revoked: bool = False
    rows: list[int] = field(default_factory=list)

    def bash(self, cmd: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", cmd], env=self.env, capture_output=True,
                              text=True, timeout=timeout_s, check=False)

    def start(self, cmd: str, var: str) -> None:
        self.procs[var] = subprocess.Popen(["bash", "-c", "exec " + cmd], env=self.env)
        if cmd.startswith("mosquitto "):
            port = int(self.env["PORT"])
            wait_for("mosquitto", lambda: listening(port), 10, self.scratch / "mosquitto.log")
        else:
            log = self.scratch / "gateway.log"
            wait_for("gateway", lambda: log.exists() and "ingesting" in log.read_text(), 20,
                     log)

    def kill(self, cmd: str) -> None:
        for var in re.findall(r'"\$([A-Z_]+)"', cmd):
            proc = self.procs.pop(var)
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)

    def run(self, cmd: str) -> None:
        if cmd.startswith("export "):
            return  # T and PORT: the test's own scratch directory and free port
        if (m := BACKGROUND.match(cmd)) is not None:
            self.start(m["cmd"], m["var"])
            return
        if cmd.startswith("kill "):
            self.kill(cmd)
            return
        if cmd.startswith("foreshock gateway export "):
            self.export(cmd)
            return
        result = self.bash(cmd)
        out = result.stdout + result.stderr
        self.revoked = self.revoked or cmd.startswith("foreshock gateway ca revoke ")
        if cmd.startswith("foreshock device check ") and self.revoked:
            assert result.returncode == 1, f"{cmd}: a revoked device passed:\n{out}"
            assert "FAIL  broker" in out and "revoked" in out.lower(), out
            return
        assert result.returncode == 0, f"{cmd}\nexit {result.returncode}:\n{out}"
        assert "FAIL" not in out and "Traceback" not in out, f"{cmd}:\n{out}"

    def export(self, cmd: str) -> None:
        """Telemetry that reached the gateway (it commits shortly after the agent sends)."""
        deadline = time.monotonic() + 10
        while True:
            result = self.bash(cmd)
            assert result.returncode == 0, result.stdout + result.stderr
            m = EXPORTED.search(result.stdout + result.stderr)
            assert m is not None, result.stdout + result.stderr
            rows = int(m[1])
            if self.revoked or rows > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        self.rows.append(rows)


def test_guide_names_every_step_in_order() -> None:
    commands = guide_commands(GUIDE.read_text())
    assert len(commands) == len(STEPS), commands
    for cmd, step in zip(commands, STEPS, strict=True):
        assert cmd.startswith(step), f"guide step {cmd!r} should start with {step!r}"


def test_guide_from_nothing_to_telemetry_and_revocation(tmp_path: Path) -> None:
    scratch = tmp_path / "trial"
    scratch.mkdir()
    bin_dirs = [str(Path(sys.executable).parent), "/usr/sbin", "/usr/local/sbin"]
    env = {**os.environ, "T": str(scratch), "PORT": str(free_port()),
           "PATH": os.pathsep.join([*bin_dirs, os.environ.get("PATH", "")])}
    trial = Trial(env, scratch)
    mosquitto_log = ""
    try:
        for cmd in guide_commands(GUIDE.read_text()):
            if cmd == 'rm -rf "$T"':
                mosquitto_log = (scratch / "mosquitto.log").read_text()
            trial.run(cmd)
    finally:
        trial.stop_all()
    assert trial.revoked
    first, after_revoke = trial.rows
    assert first > 0, "no telemetry of pump-07 reached the gateway"
    assert after_revoke == first, "a revoked device still delivered telemetry"
    # the subscriber that stored it held the gateway identity, over the TLS listener
    assert "u'_gateway'" in mosquitto_log and "u'pump-07'" in mosquitto_log
    assert not scratch.exists()  # the guide's last step removed the scratch directory
