"""A private mosquitto on a free loopback port, for the benchmarks that need a broker."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

BENCH_CONF = ("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
              "max_queued_messages 0\nmax_inflight_messages 100\n")


def start_mosquitto(workdir: Path, conf: str = BENCH_CONF, tries: int = 100
                    ) -> tuple[subprocess.Popen[bytes], int]:
    """Start mosquitto with ``conf`` (``{port}`` filled in); return it and its port once
    it accepts connections."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    path = workdir / "mosquitto.conf"
    path.write_text(conf.format(port=port))
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(tries):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")
