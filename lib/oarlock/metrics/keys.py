"""The metrics of ``oarlock keys serve``, on a registry of their own.

The keys service already counts what it did (updates stored, refused as older, rejected as
malformed, left in the queue because the store could not take them): those counters are read
when ``/metrics`` is scraped, nothing is added to its path. Keep-alive refreshes go through the
credential engine's token client, so :class:`KeysServeMetrics` is the process's
:class:`~oarlock.metrics.hooks.Hooks` and counts them by outcome (the only refreshes a keys service
makes). Accounts by state are counted from the store when scraped, again once ``accounts_every``
seconds (10 s) passed or the service handled an update since (the last count is served in between).

============================================  ==========  ===============================================
name                                          labels      what
============================================  ==========  ===============================================
``oarlock_keys_updates_total``                result      updateKeys messages: stored, older (refused as
                                                          older than the stored one), malformed (rejected)
``oarlock_keys_store_errors_total``           operation   ``update``: updates the store could not take
                                                          (back to the queue)
``oarlock_keys_keepalive_refreshes_total``    outcome     ok, retried, needs_reauthorization, rejected,
                                                          failed
``oarlock_token_request_seconds``                         one token request of the keep-alive
``oarlock_keys_accounts``                     state       stored accounts by state (active,
                                                          refresh_failing, needs_reauthorization)
``oarlock_broker_connected``                              1 while connected and consuming
============================================  ==========  ===============================================
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from oarlock.metrics.hooks import REFRESH_OUTCOMES, Hooks
from oarlock.metrics.run import TOKEN_BUCKETS
from oarlock.redact import redact_text

log = logging.getLogger("oarlock.metrics")
UPDATE_RESULTS = ("stored", "older", "malformed")
ACCOUNTS_EVERY_SECONDS = 10.0


class KeysServeMetrics(Hooks):
    """``updates()`` gives the service's counts (stored, older, malformed, store_errors) when scraped;
    ``accounts()`` the number of accounts in each of ``states`` (it may raise: the family is left out then)."""

    __slots__ = ("keepalive", "registry", "token_latency")

    def __init__(
        self,
        updates: Callable[[], Mapping[str, float]],
        *,
        accounts: Callable[[], Mapping[str, int]] | None = None,
        states: Sequence[str] = (),
        connected: Callable[[], bool] | None = None,
        registry: CollectorRegistry | None = None,
        accounts_every: float = ACCOUNTS_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.keepalive = Counter(
            "oarlock_keys_keepalive_refreshes",
            "Keep-alive token refreshes by outcome (retried: token requests tried again)",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in REFRESH_OUTCOMES:
            self.keepalive.labels(outcome)
        self.token_latency = Histogram(
            "oarlock_token_request_seconds",
            "Seconds of one token endpoint request, answered or not",
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_ServiceCollector(updates, accounts, tuple(states), connected, accounts_every, clock))

    def token_refresh(self, outcome: str, attempts: int) -> None:
        self.keepalive.labels(outcome if outcome in REFRESH_OUTCOMES else "failed").inc()
        if attempts > 1:
            self.keepalive.labels("retried").inc(attempts - 1)

    def token_request(self, seconds: float) -> None:
        self.token_latency.observe(seconds)

    def token_rejected(self) -> None:
        self.keepalive.labels("rejected").inc()


class _ServiceCollector(Collector):
    """The service's counters and the store's accounts, read at scrape time."""

    def __init__(
        self,
        updates: Callable[[], Mapping[str, float]],
        accounts: Callable[[], Mapping[str, int]] | None,
        states: tuple[str, ...],
        connected: Callable[[], bool] | None,
        every: float,
        clock: Callable[[], float],
    ) -> None:
        self._updates, self._accounts, self._states, self._connected = updates, accounts, states, connected
        self._every, self._clock = every, clock
        self._counted: tuple[float, object, dict[str, int]] | None = None  # when, after which counts, what
        self._lock = threading.Lock()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected only when scraped: registering must not read the store

    def collect(self) -> Iterator[Metric]:
        counts = self._updates()
        updates = CounterMetricFamily(
            "oarlock_keys_updates", "updateKeys messages handled, by result", labels=["result"]
        )
        for result in UPDATE_RESULTS:
            updates.add_metric([result], float(counts.get(result, 0)))
        yield updates
        errors = CounterMetricFamily(
            "oarlock_keys_store_errors", "Failed calls of the keys store, by operation", labels=["operation"]
        )
        errors.add_metric(["update"], float(counts.get("store_errors", 0)))
        yield errors
        if self._connected is not None:
            yield GaugeMetricFamily(
                "oarlock_broker_connected", "1 while connected and consuming", value=1.0 if self._connected() else 0.0
            )
        accounts = self._accounts_now(tuple(sorted(counts.items())))
        if accounts is not None:
            family = GaugeMetricFamily("oarlock_keys_accounts", "Stored accounts by state", labels=["state"])
            for state in self._states:
                family.add_metric([state], float(accounts.get(state, 0)))
            yield family

    def _accounts_now(self, after: object) -> dict[str, int] | None:
        """The accounts by state: counted again when ``every`` seconds passed or the service stored something."""
        if self._accounts is None:
            return None
        with self._lock:  # one store read at a time
            now = self._clock()
            if self._counted is not None and now - self._counted[0] < self._every and after == self._counted[1]:
                return self._counted[2]
            try:
                counted = {state: int(n) for state, n in self._accounts().items() if state in self._states}
            except Exception as exc:  # the store is down: the other families are still served
                log.warning("accounts by state cannot be counted: %s", redact_text(str(exc)))
                return self._counted[2] if self._counted is not None else None
            self._counted = (now, after, counted)
            return counted
