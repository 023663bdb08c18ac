"""``oarlock keys serve --metrics HOST:PORT``: the keys service's metrics and health, served.

:func:`serve_metrics` is the one call ``keys serve`` makes once its :class:`~oarlock.keys.consumer.KeysService`
exists (before :meth:`~oarlock.keys.consumer.KeysService.run`): the service's own counters read when
scraped, keep-alive refreshes counted through the credential engine's hooks, accounts by state
counted from the store, ``/healthz`` from the transport's I/O loop and ``/readyz`` from its
connection (see :mod:`oarlock.metrics.keys`).
"""

from __future__ import annotations

from oarlock.keys.accounts import ACTIVE, STATES
from oarlock.keys.base import KeyStore
from oarlock.keys.consumer import KeysService
from oarlock.metrics import hooks
from oarlock.metrics.address import parse_address
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

    where = parse_address(address, what="--metrics")
    metrics = KeysServeMetrics(
        updates, accounts=lambda: accounts_by_state(store), states=STATES, connected=service.consuming
    )
    hooks.install(metrics)  # keep-alive refreshes go through the token client's hooks
    # the heartbeat beats on the loop of the service's first transport (None until run() connected it)
    health = LoopHealth(lambda: service._transport, lambda _transport: service.consuming())
    return start_metrics_server(where, metrics.registry, health)
