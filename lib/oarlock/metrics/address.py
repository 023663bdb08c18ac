"""The address of the metrics server: ``HOST:PORT``, ``:PORT`` or ``PORT``, the host 127.0.0.1 unless given.

Kept apart from :mod:`oarlock.metrics.server` so that reading the option costs no import of
prometheus_client: a process without metrics never loads it.
"""

from __future__ import annotations

from oarlock.errors import ConfigurationError

DEFAULT_HOST = "127.0.0.1"
ENV = "ELASTICIO_METRICS_ADDR"


def parse_address(text: str, *, what: str = f"--metrics / {ENV}") -> tuple[str, int]:
    """(host, port) of ``HOST:PORT``, ``:PORT`` or ``PORT``; ConfigurationError naming what is wrong."""
    value = text.strip()
    shown = value if len(value) <= 80 else value[:80] + "…"
    usage = f"{what}: {shown!r} is not HOST:PORT (for example 127.0.0.1:9100, :9100 or 9100)"
    if value.startswith("["):  # [v6]:port
        host, bracket, rest = value[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ConfigurationError(usage)
        port_text = rest[1:]
    elif value.count(":") > 1:
        raise ConfigurationError(f"{usage}: write an IPv6 host in brackets, [::1]:9100")
    else:
        host, _, port_text = value.rpartition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigurationError(f"{usage}: the port must be a number from 0 to 65535")
    return host or DEFAULT_HOST, int(port_text)
