"""What ``oarlock run`` builds its worker, transport and keys store with: plain, or with metrics.

:func:`run_kit` reads ``--metrics`` (else ``ELASTICIO_METRICS_ADDR``). Without an address it gives
:class:`PlainRun`: the plain :class:`~oarlock.runtime.worker.Worker`,
:class:`~oarlock.amqp.transport.AmqpTransport` and the store itself, nothing measured and nothing in
between (prometheus_client is not even imported). With one, :class:`~oarlock.runtime.metered.MeteredRun`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from oarlock.amqp.transport import AmqpTransport
from oarlock.credentials.manager import CredentialManager
from oarlock.metrics.address import ENV, parse_address
from oarlock.runtime.worker import Worker

Store = TypeVar("Store")


class RunKit(Protocol):
    def store(self, store: Store) -> Store: ...

    def transport(self, amqp_uri: str, **options: Any) -> AmqpTransport: ...

    def worker(self, *args: Any, **kwargs: Any) -> Worker: ...

    def serve(self, worker: Worker, credentials: CredentialManager | None) -> None:
        """Serve the routes, if there are any (ConfigurationError when the address cannot be bound)."""


class PlainRun:
    """Metrics off: the plain parts."""

    def store(self, store: Store) -> Store:
        return store

    def transport(self, amqp_uri: str, **options: Any) -> AmqpTransport:
        return AmqpTransport(amqp_uri, **options)

    def worker(self, *args: Any, **kwargs: Any) -> Worker:
        return Worker(*args, **kwargs)

    def serve(self, worker: Worker, credentials: CredentialManager | None) -> None:
        """Nothing to serve."""


def run_kit(option: str | None, env: Mapping[str, str]) -> RunKit:
    """The parts for ``--metrics`` (else ``ELASTICIO_METRICS_ADDR``); ConfigurationError for an address that does not parse."""
    address = option if option is not None else env.get(ENV)
    if address is None or not address.strip():
        return PlainRun()
    from oarlock.runtime.metered import MeteredRun  # prometheus_client only when metrics are on

    return MeteredRun(parse_address(address))
