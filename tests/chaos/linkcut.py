"""A cuttable TCP relay between the agents and the broker: the device link's partition."""

from __future__ import annotations

import socket
import threading


class LinkCut:
    """A TCP relay between the agents and the broker that can be cut: a network partition
    of the device's link while broker and gateway stay up. Cut: every relayed connection
    is reset and new ones are closed at once (the agent sees connection refused/reset)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.open = True
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), 2.0)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def cut(self) -> None:
        self.open = False
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            _close(s)

    def heal(self) -> None:
        self.open = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self.server)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    _close(src)
    _close(dst)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()

