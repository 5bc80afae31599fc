"""Prometheus text exposition (format 0.0.4) on loopback only, for sites that scrape.

``render(metrics)`` turns :class:`Metric` values into the text format (pure).
``PrometheusExporter(registry_fn, host="127.0.0.1", port=9464)`` serves ``GET /metrics``
from a daemon thread with :mod:`http.server`; ``registry_fn()`` is called per scrape and
returns the metrics (``Monitor.metrics`` does). Binding anything but a loopback address
raises :class:`ConfigError`: the agent exposes no network service; a site that wants remote
scraping puts its own authenticated proxy in front.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Literal

from foreshock.errors import ConfigError

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NAME_RE = re.compile(r"[^a-zA-Z0-9_:]")
Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Metric:
    """One metric family: ``samples`` are (name suffix, labels, value)."""

    name: str
    kind: Literal["counter", "gauge", "summary", "untyped"]
    help: str
    samples: tuple[tuple[str, Labels, float], ...]


def metric_name(*parts: str) -> str:
    """``foreshock_`` plus the parts joined by ``_``, with invalid characters replaced."""
    name = "_".join(["foreshock", *parts])
    return NAME_RE.sub("_", name)


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() or abs(v) >= 1e15 else str(int(v))


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(metrics: Iterable[Metric]) -> str:
    """Text exposition format 0.0.4 of the metric families."""
    lines: list[str] = []
    for m in metrics:
        help_text = m.help.replace("\\", "\\\\").replace("\n", "\\n")
        lines += [f"# HELP {m.name} {help_text}", f"# TYPE {m.name} {m.kind}"]
        for suffix, labels, value in m.samples:
            lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels)
            lines.append(f"{m.name}{suffix}{{{lab}}} {_value(value)}" if lab
                         else f"{m.name}{suffix} {_value(value)}")
    return "\n".join(lines) + "\n"


def loopback_host(host: str) -> str:
    """The address to bind for ``host``; ConfigError unless it is a loopback address."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"monitor.prometheus_host = {host!r} is not an IP address; use "
                          "127.0.0.1, ::1 or localhost") from None
    if not addr.is_loopback:
        raise ConfigError(f"monitor.prometheus_host = {host!r} is not a loopback address; the "
                          "metrics endpoint binds to loopback only (127.0.0.1 or ::1)",
                          hint="scrape through a local proxy or node exporter")
    return str(addr)


class _Server(HTTPServer):
    registry_fn: Callable[[], Iterable[Metric]]
    scrape_errors: int = 0


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404, "try /metrics")
            return
        try:
            body = render(self.server.registry_fn()).encode()
        except Exception as exc:  # a scrape must never take the agent down
            self.server.scrape_errors += 1
            log.warning("metrics scrape failed: %s: %s", type(exc).__name__, exc)
            self.send_error(500, "metrics unavailable")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("scrape from %s: " + format, self.address_string(), *args)


class PrometheusExporter:
    """Serve ``registry_fn()`` as Prometheus text on ``http://host:port/metrics``.

    ``port`` 0 picks a free port (read ``.port`` after construction). The server runs in a
    daemon thread from construction until ``close()``.
    """

    def __init__(self, registry_fn: Callable[[], Iterable[Metric]], host: str = "127.0.0.1",
                 port: int = 9464) -> None:
        bind = loopback_host(host)
        if not 0 <= int(port) <= 65535:
            raise ConfigError(f"monitor.prometheus_port = {port!r} must be in 0..65535")
        cls = _V6Server if ":" in bind else _Server
        try:
            self._server = cls((bind, int(port)), _Handler)
        except OSError as exc:
            raise ConfigError(f"monitor.prometheus_port = {port}: cannot listen on "
                              f"{bind}:{port}: {exc.strerror}") from None
        self._server.registry_fn = registry_fn
        self.host = bind
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,),
                                        name="foreshock-metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    @property
    def scrape_errors(self) -> int:
        return self._server.scrape_errors

    def close(self) -> None:
        """Stop serving and release the port; idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5.0)
        self._server.server_close()
