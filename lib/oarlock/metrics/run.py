"""The metrics of ``oarlock run``, on a registry of their own (never prometheus_client's global one).

:class:`WorkerMetrics` holds counters and histograms fed by the metered worker and transport
(:mod:`oarlock.runtime.metered`, :mod:`oarlock.amqp.metered`) and, as the process's
:class:`~oarlock.metrics.hooks.Hooks`, by the credential engine; and gauges read only when ``/metrics``
is scraped (in flight, accounts in the re-authorization cooldown, connected), from functions
:meth:`WorkerMetrics.watch` is given. Every labelled series exists from the start at 0, so a rate
or an alert never waits for the first event.

=================================================  ===================  ==========================================
name                                               labels               what
=================================================  ===================  ==========================================
``oarlock_messages_total``                         function, outcome    inputs settled: data, error, rebound,
                                                                        bad_input, requeued, redelivery
``oarlock_message_duration_seconds``               function             delivery to settlement (all confirmed)
``oarlock_messages_in_flight``                                          delivered, not settled yet
``oarlock_publish_confirm_seconds``                                     publish to the broker's confirm
``oarlock_broker_reconnects_total``                                     connections re-established after a loss
``oarlock_broker_connected``                                            1 while connected (channels open)
``oarlock_token_refreshes_total``                  outcome              ok, retried, needs_reauthorization,
                                                                        rejected, failed
``oarlock_token_request_seconds``                                       one token request, answered or not
``oarlock_accounts_reauthorization_cooldown``                           accounts whose refresh failed for good,
                                                                        in their cooldown
``oarlock_keys_store_errors_total``                operation            failed calls of the keys store
=================================================  ===================  ==========================================
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from oarlock.metrics.hooks import REFRESH_OUTCOMES, Hooks
from oarlock.metrics.local import LocalCounts, LocalHistogram

#: how an input ended, the ``outcome`` label of ``oarlock_messages_total``
OUTCOMES = ("data", "error", "rebound", "bad_input", "requeued", "redelivery")

#: the ``operation`` label of ``oarlock_keys_store_errors_total``: a keys store's methods (anything else: other)
STORE_OPERATIONS = ("lock", "get", "save", "record_state", "state", "claim", "other")
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
CONFIRM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class SettledJob(Protocol):
    """What the worker's record of one input tells the metrics (``oarlock.runtime.worker._Job``)."""

    @property
    def view(self) -> Any: ...  # .message is None when the input could not be decoded

    @property
    def errored(self) -> bool: ...


def outcome_of(job: SettledJob, settle: str | None, *, rebounded: bool) -> str:
    """The ``outcome`` label of an input the worker settled with ``settle`` (ack, reject, requeue or None)."""
    if settle == "requeue":
        return "requeued"  # an infrastructure failure (the keys store): back to the queue after a backoff
    if settle is None:
        return "redelivery"  # the confirms were lost with the connection: the broker redelivers it
    if job.view.message is None:
        return "bad_input"
    if job.errored:
        return "error"
    if rebounded:
        return "rebound"
    return "data"


class WorkerMetrics(Hooks):
    """The worker's metrics; :meth:`bind` names the step's function (a name component.json defines)."""

    __slots__ = (
        "_monotonic",
        "confirm_latency",
        "connected",
        "cooldown",
        "duration",
        "function",
        "in_flight",
        "messages",
        "reconnects",
        "refreshes",
        "registry",
        "store_errors",
        "token_latency",
    )

    def __init__(
        self, registry: CollectorRegistry | None = None, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.function: str | None = None
        self.registry = registry if registry is not None else CollectorRegistry()
        self._monotonic = monotonic
        registry = self.registry
        # what the I/O thread changes for every message: lock-free, exported when scraped (metrics.local)
        self.messages = LocalCounts(OUTCOMES)
        self.duration = LocalHistogram(DURATION_BUCKETS)
        self.confirm_latency = LocalHistogram(CONFIRM_BUCKETS)
        registry.register(_HotPath(self))
        self.in_flight = Gauge("oarlock_messages_in_flight", "Inputs delivered and not settled yet", registry=registry)
        self.reconnects = Counter(
            "oarlock_broker_reconnects", "Broker connections re-established after a lost connection", registry=registry
        )
        self.connected = Gauge(
            "oarlock_broker_connected", "1 while the broker connections and channels are open", registry=registry
        )
        self.refreshes = Counter(
            "oarlock_token_refreshes",
            "Token refreshes by outcome (retried: token requests tried again after a transient failure)",
            ["outcome"],
            registry=registry,
        )
        self.token_latency = Histogram(
            "oarlock_token_request_seconds",
            "Seconds of one token endpoint request, answered or not",
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.cooldown = Gauge(
            "oarlock_accounts_reauthorization_cooldown",
            "Accounts whose refresh failed for good (re-authorization needed), in their cooldown",
            registry=registry,
        )
        self.store_errors = Counter(
            "oarlock_keys_store_errors",
            "Failed calls of the keys store, by operation",
            ["operation"],
            registry=registry,
        )
        for outcome in REFRESH_OUTCOMES:  # every series there will be, at 0 from the start
            self.refreshes.labels(outcome)
        for operation in STORE_OPERATIONS:
            self.store_errors.labels(operation)

    def bind(self, function: str) -> None:
        """The function whose inputs are counted: one per worker, a name of component.json (bounded)."""
        self.function = function

    def watch(
        self,
        *,
        in_flight: Callable[[], float] | None = None,
        cooldown: Callable[[], float] | None = None,
        connected: Callable[[], bool] | None = None,
    ) -> None:
        """Where the gauges read when scraped (nothing is done for them between scrapes)."""
        if in_flight is not None:
            self.in_flight.set_function(in_flight)
        if cooldown is not None:
            self.cooldown.set_function(cooldown)
        if connected is not None:
            self.connected.set_function(lambda: 1.0 if connected() else 0.0)

    def store_error(self, operation: str) -> None:
        """A call of the keys store raised KeyStoreError."""
        self.store_errors.labels(operation if operation in STORE_OPERATIONS else "other").inc()

    # -- the hooks ---------------------------------------------------------------------------------
    def message_settled(self, job: SettledJob, settle: str | None, started: float, *, rebounded: bool) -> None:
        """The worker settled an input (I/O thread only); ``started``: its ``time.monotonic()`` when picked up."""
        self.messages.counts[outcome_of(job, settle, rebounded=rebounded)] += 1
        self.duration.observe(self._monotonic() - started)

    def publish_confirmed(self, sent_at: float) -> None:
        """The broker confirmed a publish made at ``sent_at`` (``time.monotonic()``) (I/O thread only)."""
        self.confirm_latency.observe(self._monotonic() - sent_at)

    def broker_reconnected(self) -> None:
        """Connected with channels open again after a lost connection."""
        self.reconnects.inc()

    def token_refresh(self, outcome: str, attempts: int) -> None:
        self.refreshes.labels(outcome if outcome in REFRESH_OUTCOMES else "failed").inc()
        if attempts > 1:
            self.refreshes.labels("retried").inc(attempts - 1)

    def token_request(self, seconds: float) -> None:
        self.token_latency.observe(seconds)

    def token_rejected(self) -> None:
        self.refreshes.labels("rejected").inc()


class _HotPath(Collector):
    """The I/O thread's lock-free counts as prometheus_client families, built when scraped."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        if metrics.function is not None:  # bound to the worker's function: its series exist, at 0
            function = metrics.function
            yield metrics.messages.family(
                "oarlock_messages", "Inputs settled, by function and outcome", ["function", "outcome"], [function]
            )
            yield metrics.duration.family(
                "oarlock_message_duration_seconds",
                "Seconds from an input's delivery to its settlement (everything it produced confirmed)",
                ["function"],
                [function],
            )
        yield metrics.confirm_latency.family(
            "oarlock_publish_confirm_seconds", "Seconds from a publish to the broker's confirm"
        )

    def describe(self) -> Iterator[Metric]:
        return self.collect()
