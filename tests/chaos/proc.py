"""One chaos runner process (agent, gateway or drain) that can be SIGKILLed and restarted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RUNNER = Path(__file__).with_name("runner.py")


class Proc:
    """One runner process (agent, gateway or drain) with its spec file and log."""

    def __init__(self, mode: str, spec: dict[str, Any], workdir: Path, name: str) -> None:
        self.mode, self.spec, self.name = mode, spec, name
        self.spec_path = workdir / f"{name}.json"
        self.spec_path.write_text(json.dumps(spec))
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.bad_exits: list[int] = []

    def start(self) -> None:
        self._reap()
        ready = self.spec.get("ready")
        if ready:
            Path(ready).unlink(missing_ok=True)
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([sys.executable, str(RUNNER), self.mode,
                                      str(self.spec_path)], stdout=logf, stderr=logf)

    def update_spec(self, **changes: Any) -> None:
        """Change the spec for the next start (``None`` removes a key)."""
        self.spec = {k: v for k, v in {**self.spec, **changes}.items() if v is not None}
        self.spec_path.write_text(json.dumps(self.spec))

    def _reap(self) -> None:
        """Record the exit of a process that ended by itself with an error."""
        if self.proc is not None and self.proc.poll() not in (None, 0):
            self.bad_exits.append(int(self.proc.returncode))
        self.proc = None

    @property
    def tracebacks(self) -> int:
        return self.log.read_text(errors="replace").count("Traceback") if self.log.exists() else 0

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until the process says it runs (its ``ready`` file), or it died."""
        ready = Path(self.spec["ready"])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.alive and not ready.exists():
            time.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler, no flush, no close."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM and wait; a non-zero exit is recorded as a crash."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(5)
            self.bad_exits.append(-999)
        if rc != 0:
            self.bad_exits.append(rc)
        self.proc = None

    def wait(self, timeout_s: float) -> None:
        """Wait for a process that ends by itself (a finite source)."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.stop()

