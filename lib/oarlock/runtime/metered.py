"""``oarlock run --metrics``: the worker, transport and keys store with metrics, and the server of their routes.

:class:`MeteredRun` is what :func:`oarlock.runtime.runkit.run_kit` gives when an address is set:
:class:`MeteredWorker`, :class:`~oarlock.amqp.metered.MeteredTransport` and a
:class:`~oarlock.metrics.store.MeteredStore` feeding one :class:`~oarlock.metrics.run.WorkerMetrics`
on a registry of its own, the credential engine's hooks installed, and ``/metrics``, ``/healthz``,
``/readyz`` served from :meth:`MeteredRun.serve` on. Without an address this module (and
prometheus_client) is never imported.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from oarlock.amqp.metered import MeteredTransport, consuming
from oarlock.amqp.transport import AmqpTransport
from oarlock.credentials.manager import CredentialManager
from oarlock.metrics import hooks
from oarlock.metrics.health import LoopHealth
from oarlock.metrics.run import WorkerMetrics
from oarlock.metrics.server import MetricsServer, start_metrics_server
from oarlock.metrics.store import MeteredStore
from oarlock.protocol.events import Event, EventName
from oarlock.runtime.executor import FunctionRunner
from oarlock.runtime.jobs import Job
from oarlock.runtime.worker import Worker

Store = TypeVar("Store")


class MeteredWorker(Worker):
    """A Worker whose settled inputs are counted and timed into ``metrics``, its in-flight count read when scraped."""

    def __init__(self, *args: Any, metrics: WorkerMetrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics
        self._rebounds: set[int] = set()  # id() of the jobs that emitted a rebound, until they are settled
        # FunctionRunner loaded the function from component.json: its name is one of a bounded set
        metrics.bind(self.settings.function if isinstance(self.runner, FunctionRunner) else "unloadable")
        metrics.watch(in_flight=lambda: self._inflight)

    def _publish_event(self, job: Job, event: Event) -> None:
        if event.name is EventName.REBOUND:
            self._rebounds.add(id(job))
        super()._publish_event(job, event)

    def _complete(self, job: Job, started: float, settle: str | None) -> None:
        super()._complete(job, started, settle)
        rebounded = id(job) in self._rebounds
        self._rebounds.discard(id(job))
        self._metrics.message_settled(job, settle, started, rebounded=rebounded)


def accounts_in_cooldown(credentials: CredentialManager) -> int:
    """Accounts whose refresh failed for good (re-authorization needed) and are in their cooldown, now."""
    now = credentials.clock()
    with credentials._states_lock:  # the manager's own account states, read as they are (nothing changes)
        states = list(credentials._states.values())
    return sum(1 for state in states if state.dead_until > now)


class MeteredRun:
    """Metrics on, served at ``address`` once :meth:`serve` is called."""

    def __init__(self, address: tuple[str, int], metrics: WorkerMetrics | None = None) -> None:
        self.address = address
        self.metrics = metrics if metrics is not None else WorkerMetrics()
        self.server: MetricsServer | None = None
        self._transport: MeteredTransport | None = None

    def store(self, store: Store) -> Store:
        return cast(Store, MeteredStore(store, self.metrics.store_error))

    def transport(self, amqp_uri: str, **options: Any) -> AmqpTransport:
        self._transport = MeteredTransport(amqp_uri, metrics=self.metrics, **options)
        self.metrics.watch(connected=self._transport._ready.is_set)
        return self._transport

    def worker(self, *args: Any, **kwargs: Any) -> Worker:
        return MeteredWorker(*args, metrics=self.metrics, **kwargs)

    def serve(self, worker: Worker, credentials: CredentialManager | None) -> None:
        """Install the credential hooks and serve the routes (ConfigurationError when the address cannot be bound)."""
        hooks.install(self.metrics)
        if credentials is not None:
            manager = credentials
            self.metrics.watch(cooldown=lambda: accounts_in_cooldown(manager))
        health = LoopHealth(lambda: self._transport, consuming)
        health.start()  # the first beat runs as soon as the transport's I/O loop does
        self.server = start_metrics_server(self.address, self.metrics.registry, health)
