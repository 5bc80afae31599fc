"""The systemd notify protocol (sd_notify(3)), spoken directly over ``$NOTIFY_SOCKET``.

systemd passes the path of an AF_UNIX datagram socket in ``NOTIFY_SOCKET``; a name starting
with ``@`` is a Linux abstract socket (the ``@`` stands for a leading NUL byte). Each
notification is one datagram of newline-separated ``KEY=VALUE`` lines: ``READY=1`` once the
service works, ``WATCHDOG=1`` at least every ``WATCHDOG_USEC`` microseconds (we ping at half
of it, as sd_watchdog_enabled(3) advises), ``STATUS=...`` for ``systemctl status``, and
``STOPPING=1`` when shutting down.

Without ``NOTIFY_SOCKET`` (not under systemd, or Type=simple) every call is a cheap no-op.
A failed send is logged once and never raised: the agent must not die because its
supervisor's socket went away.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to systemd; a no-op when ``NOTIFY_SOCKET`` is not set."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval_s = _watchdog_interval_s(env)
        self.sent = 0
        self.failed = 0
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (keys upper-cased); True if the datagram was sent."""
        if self.address is None:
            return False
        lines = [f"{k.upper()}={str(v).replace(chr(10), ' ')}" for k, v in fields.items()]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self.failed:
                log.warning("sd_notify to %r failed: %s", self.address, exc)
            self.failed += 1
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify(ready=1, **({"status": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(status=text)

    def watchdog(self) -> bool:
        return self.notify(watchdog=1)

    def stopping(self, status: str = "") -> bool:
        return self.notify(stopping=1, **({"status": status} if status else {}))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log.warning("ignoring NOTIFY_SOCKET %r: not an absolute path or abstract name", value)
    return None


def _watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, if the watchdog is meant for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None
