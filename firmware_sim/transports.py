"""How simulated nodes put frames on a medium: a serial line (a pseudo-terminal pair), UDP
datagrams, the MQTT raw-frame topic, or a recording file.

Every sink has ``send(data, device_id, channel)`` and ``close()``; ``describe()`` says where
a receiver should listen. Datagram media carry one frame per datagram; the serial line and
the file carry a plain concatenation of frames (docs/protocol.md, byte streams).
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import socket
import struct
import termios
import threading
import time
import tty
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from foreshock import topics
from foreshock.errors import ConfigError, LinkError

log = logging.getLogger(__name__)

TRANSPORTS = ("mqtt", "udp", "serial", "file")


class Sink(Protocol):
    """Where a simulated node writes its frames."""

    stats: dict[str, int]

    def send(self, data: bytes, device_id: str, channel: int) -> None: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


DRAIN_SETTLE_S = 0.3   # the slave must read empty this long before the line closes


class SerialSink:
    """The node end of a pseudo-terminal pair; a reader opens ``port_path`` with pyserial.

    Writes wait at most ``write_timeout_s`` for room in the line's buffer, then the frame is
    dropped and counted, as on a UART without flow control.
    """

    def __init__(self, write_timeout_s: float = 1.0) -> None:
        self.master_fd, self.slave_fd = os.openpty()
        tty.setraw(self.slave_fd)  # no echo, no line editing: bytes pass unchanged
        os.set_blocking(self.master_fd, False)
        self.port_path = os.ttyname(self.slave_fd)
        self.write_timeout_s = write_timeout_s
        self.stats = {"frames": 0, "bytes": 0, "dropped_frames": 0}
        self._closed = False

    def send(self, data: bytes, device_id: str, channel: int) -> None:
        view = memoryview(data)
        while view:
            _, ready, _ = select.select([], [self.master_fd], [], self.write_timeout_s)
            if not ready:
                self.stats["dropped_frames"] += 1
                return
            try:
                written = os.write(self.master_fd, view)
            except BlockingIOError:
                continue
            view = view[written:]
        self.stats["frames"] += 1
        self.stats["bytes"] += len(data)

    def describe(self) -> str:
        return f"serial {self.port_path}"

    def close(self, drain_timeout_s: float = 5.0) -> None:
        """Close the line once the reader has taken what was written (or after a timeout):
        closing a pty's master discards bytes still waiting at the slave."""
        if self._closed:
            return
        self._closed = True
        # The kernel hands bytes from the master to the slave asynchronously, so one empty
        # reading can come before the last write arrives: wait for the slave to stay empty.
        deadline = time.monotonic() + drain_timeout_s
        empty_since: float | None = None
        while time.monotonic() < deadline:
            now = time.monotonic()
            if self._pending_bytes():
                empty_since = None
            elif empty_since is None:
                empty_since = now
            elif now - empty_since >= DRAIN_SETTLE_S:
                break
            time.sleep(0.02)
        os.close(self.master_fd)
        os.close(self.slave_fd)

    def _pending_bytes(self) -> int:
        try:
            raw = fcntl.ioctl(self.slave_fd, termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return 0
        return int(struct.unpack("i", raw)[0])


class UdpSink:
    """One datagram per frame to ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        if not 0 < port < 65536:
            raise ConfigError(f"--port {port} is invalid; use 1..65535")
        self.address = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.stats = {"frames": 0, "bytes": 0, "dropped_frames": 0}

    def send(self, data: bytes, device_id: str, channel: int) -> None:
        try:
            self.sock.sendto(data, self.address)
        except OSError as exc:  # e.g. ICMP port unreachable reported on a later send
            self.stats["dropped_frames"] += 1
            log.debug("UDP send failed: %s", exc)
            return
        self.stats["frames"] += 1
        self.stats["bytes"] += len(data)

    def describe(self) -> str:
        return f"udp {self.address[0]}:{self.address[1]}"

    def close(self) -> None:
        self.sock.close()


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` -> (host, port, tls)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"--broker {url!r} is invalid; use mqtt://host:port or "
                          "mqtts://host:port")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise ConfigError(f"--broker {url!r} has a bad port") from None
    return parts.hostname, port, parts.scheme == "mqtts"


class MqttSink:
    """Publishes each frame to ``foreshock/v1/<site>/<device>/frames/<channel>`` (QoS 0)."""

    def __init__(self, broker_url: str, site: str, connect_timeout_s: float = 10.0) -> None:
        host, port, tls = parse_broker_url(broker_url)
        self.site = topics.check_id(site, "--site")
        self.broker_url = broker_url
        self.stats = {"frames": 0, "bytes": 0, "dropped_frames": 0}
        self._connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"fs-sim-{os.getpid()}")
        if tls:
            self.client.tls_set()
        self.client.on_connect = self._on_connect
        self.client.max_queued_messages_set(10_000)
        try:
            self.client.connect(host, port, keepalive=30)
        except OSError as exc:
            raise LinkError(f"cannot reach MQTT broker {broker_url}: {exc}",
                            hint="start a broker or pass --broker mqtt://host:port") from None
        self.client.loop_start()
        if not self._connected.wait(connect_timeout_s):
            self.close()
            raise LinkError(f"MQTT broker {broker_url} did not accept the connection")

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason: object, properties: object = None) -> None:
        if not getattr(reason, "is_failure", False):
            self._connected.set()

    def send(self, data: bytes, device_id: str, channel: int) -> None:
        info = self.client.publish(topics.frames(self.site, device_id, channel), data, qos=0)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.stats["dropped_frames"] += 1
            return
        self.stats["frames"] += 1
        self.stats["bytes"] += len(data)

    def describe(self) -> str:
        return f"mqtt {self.broker_url} site {self.site}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class FileSink:
    """A recording: frames concatenated with no length prefix, replayable by FileSource."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.fh = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise ConfigError(f"--out {self.path} cannot be written: {exc}") from None
        self.stats = {"frames": 0, "bytes": 0, "dropped_frames": 0}

    def send(self, data: bytes, device_id: str, channel: int) -> None:
        self.fh.write(data)
        self.stats["frames"] += 1
        self.stats["bytes"] += len(data)

    def describe(self) -> str:
        return f"file {self.path}"

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()
