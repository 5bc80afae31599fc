"""sd_notify over a real AF_UNIX datagram socket, path and abstract."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from agent.sdnotify import Notifier


def _recv(sock: socket.socket) -> set[str]:
    return set(sock.recv(4096).decode().split("\n"))


def test_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000"})
        assert n.enabled and n.watchdog_interval_s == 2.0
        assert n.ready("up")
        assert _recv(sock) == {"READY=1", "STATUS=up"}
        n.watchdog()
        assert _recv(sock) == {"WATCHDOG=1"}
        n.status("two\nlines")
        assert _recv(sock) == {"STATUS=two lines"}
        n.stopping()
        assert _recv(sock) == {"STOPPING=1"}
        n.close()


def test_abstract_socket() -> None:
    name = f"foreshock-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert _recv(sock) == {"READY=1"}


def test_disabled_and_failures_do_not_raise(tmp_path: Path) -> None:
    assert not Notifier({}).ready()
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not n.watchdog() and n.failed == 1
    assert Notifier({"NOTIFY_SOCKET": "relative"}).enabled is False
    other = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval_s is None
