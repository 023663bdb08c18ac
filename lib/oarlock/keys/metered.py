"""``oarlock keys serve --metrics HOST:PORT``: the keys service's metrics and health, served.

:func:`serve_metrics` is the one call ``keys serve`` makes once its :class:`~oarlock.keys.consumer.KeysService`
exists (before :meth:`~oarlock.keys.consumer.KeysService.run`): the service's own counters read when
scraped, keep-alive refreshes counted through the credential engine's hooks, accounts by state
counted from the store, ``/healthz`` from the transport's I/O loop and ``/readyz`` from its
connection (see :mod:`oarlock.metrics.keys`).
"""

from __future__ import annotations

from oarlock.amqp.metered import consuming
from oarlock.keys.accounts import ACTIVE, STATES
from oarlock.keys.base import KeyStore
from oarlock.keys.consumer import KeysService
from oarlock.metrics import hooks
from oarlock.metrics.health import LoopHealth
from oarlock.metrics.keys import KeysServeMetrics
from oarlock.metrics.server import MetricsServer, start_metrics_server


def accounts_by_state(store: KeyStore) -> dict[str, int]:
    """How many stored accounts are in each state (the state of their stored version)."""
    states = {state.account: state for state in store.states()}
    counts = dict.fromkeys(STATES, 0)
    for stored in store.list():
        state = states.get(stored.account)
        counts[state.effective(stored.version) if state is not None else ACTIVE] += 1
    return counts


def serve_metrics(address: str, service: KeysService, store: KeyStore) -> MetricsServer:
    """Serve the service's ``/metrics``, ``/healthz`` and ``/readyz`` on ``address`` (ConfigurationError if it cannot)."""

    def updates() -> dict[str, float]:
        return {
            "stored": service.stored,
            "older": service.refused,
            "malformed": service.rejected,
            "store_errors": service.requeued,
        }

    def connected() -> bool:
        transport = service._transport  # the service's own: None until run() connected
        return transport is not None and consuming(transport)

    metrics = KeysServeMetrics(updates, accounts=lambda: accounts_by_state(store), states=STATES, connected=connected)
    hooks.install(metrics)  # keep-alive refreshes go through the token client's hooks
    return start_metrics_server(address, metrics.registry, LoopHealth(lambda: service._transport, consuming))
