"""The HTTP server of ``/metrics``, ``/healthz`` and ``/readyz`` (``--metrics HOST:PORT``, ``ELASTICIO_METRICS_ADDR``).

:func:`start_metrics_server` serves one registry (prometheus_client's text format) and one
:class:`~oarlock.metrics.health.Health` on a thread of its own; off unless an address is given.
The address is ``HOST:PORT``, ``:PORT`` or ``PORT`` (the host defaults to 127.0.0.1: exposing the
routes beyond the machine is a choice, ``0.0.0.0:9100``); ``[::1]:9100`` for IPv6; port 0 takes a
free one (logged). A request is answered from memory (a probe never waits on the broker or a store);
a client that sends nothing is dropped after :data:`REQUEST_TIMEOUT_SECONDS`.
"""

from __future__ import annotations

import logging
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, disable_created_metrics, generate_latest

from oarlock.errors import ConfigurationError
from oarlock.metrics.address import parse_address
from oarlock.metrics.health import Health
from oarlock.serving import ServerThread

log = logging.getLogger("oarlock.metrics")
REQUEST_TIMEOUT_SECONDS = 10.0
ROUTES = ("/metrics", "/healthz", "/readyz")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry
    health: Health | None

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, health: Health | None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.registry, self.health = registry, health
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_SECONDS

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, *, with_body: bool) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            try:
                status, body, kind = 200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST
            except Exception as exc:  # a gauge's function failed: say so, the process goes on
                status, body, kind = 500, f"metrics cannot be collected: {type(exc).__name__}\n".encode(), "text/plain"
        elif path in ("/healthz", "/readyz"):
            status, body, kind = self._check(path)
        else:
            status, body, kind = 404, f"no such route: use {', '.join(ROUTES)}\n".encode(), "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _check(self, path: str) -> tuple[int, bytes, str]:
        health = self.server.health
        try:
            problem = None if health is None else (health.live() if path == "/healthz" else health.ready())
        except Exception as exc:
            problem = f"the check failed: {type(exc).__name__}"
        if problem is None:
            return 200, b"ok\n", "text/plain; charset=utf-8"
        return 503, f"{problem}\n".encode(), "text/plain; charset=utf-8"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a probe every few seconds is not worth a log line."""


class MetricsServer(ServerThread):
    """A running server; :meth:`close` stops it."""

    def __init__(self, server: _Server) -> None:
        super().__init__(server, name="oarlock-metrics", poll_interval=0.2)


def start_metrics_server(
    address: str | tuple[str, int], registry: CollectorRegistry, health: Health | None = None
) -> MetricsServer:
    """Serve ``/metrics`` (``registry``), ``/healthz`` and ``/readyz`` (``health``; 200 when None) on ``address``.

    ConfigurationError for an address that cannot be parsed or bound (in use, not this machine's).
    """
    host, port = parse_address(address) if isinstance(address, str) else address
    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: half the lines, nothing lost
    try:
        server = _Server((host, port), registry, health)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {reason.lower()}") from None
    running = MetricsServer(server)
    log.info("metrics and health on %s (%s)", running.url, ", ".join(ROUTES))
    return running
