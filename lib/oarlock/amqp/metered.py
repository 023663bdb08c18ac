"""The AMQP transport with metrics: publish -> confirm latency, reconnects, readiness.

:class:`MeteredTransport` is :class:`~oarlock.amqp.transport.AmqpTransport` plus what
``oarlock run --metrics`` reports; it is used only when metrics are on, so without them the
transport has nothing extra on its hot path. :func:`consuming` is the ``/readyz`` answer for any
AMQP transport (``keys serve`` too): connected, both channels open, and the consumer registered on
the current connection (it is not after a lost connection until the reconnect registered it again,
nor once the worker stopped consuming to shut down).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any, Protocol

from oarlock.amqp.transport import AmqpTransport
from oarlock.amqp.types import Confirm, Outgoing


class TransportMetrics(Protocol):
    def publish_confirmed(self, sent_at: float) -> None: ...

    def broker_reconnected(self) -> None: ...


def consuming(transport: AmqpTransport) -> bool:
    """Connected, channels open, consuming on this connection, not closing (any thread; reads flags only)."""
    return (
        transport._ready.is_set()
        and not transport._closing
        and transport._consuming_wanted
        and transport._consuming_generation == transport.generation
    )


class MeteredTransport(AmqpTransport):
    """An AmqpTransport whose confirms are timed and whose reconnects are counted into ``metrics``.

    A publish is timed from the call to the broker's ack. The publishing thread only notes the
    Confirm and the time (a deque append); the I/O thread puts the timing callback on it the next
    time it hands work over or reads a confirm, before handling either, so no extra wake-up of the
    loop is needed, every confirmed publish is timed exactly once, and the metrics' counts are
    written by the I/O thread alone. (A confirm read before its publish was noted is timed when the
    note is taken, a little late.) Returned (unroutable), nacked or lost publishes are not timed.
    """

    def __init__(self, amqp_uri: str, *, metrics: TransportMetrics, **options: Any) -> None:
        super().__init__(amqp_uri, **options)
        self._metrics = metrics
        self._published: collections.deque[tuple[Confirm, float]] = collections.deque()

    def publish(self, message: Outgoing) -> Confirm:
        sent = time.monotonic()
        confirm = super().publish(message)
        self._published.append((confirm, sent))
        return confirm

    def _time_published(self) -> None:
        """I/O thread: a timing callback on every Confirm published since the last time."""
        published, confirmed = self._published, self._metrics.publish_confirmed
        while published:
            confirm, sent = published.popleft()
            confirm.on_done(_Timing(confirm, sent, confirmed))

    def _drain_outbox(self) -> None:
        self._time_published()
        super()._drain_outbox()

    def _on_confirm(self, delivery_tag: int, multiple: bool, acked: bool) -> None:
        self._time_published()
        super()._on_confirm(delivery_tag, multiple, acked)

    def _check_ready(self) -> None:
        again = self.connected_once.is_set() and not self._ready.is_set()
        super()._check_ready()
        if again and self._ready.is_set():
            self._metrics.broker_reconnected()


class _Timing:
    """The callback timing one Confirm (a slotted object: cheaper than a closure per publish)."""

    __slots__ = ("confirm", "confirmed", "sent")

    def __init__(self, confirm: Confirm, sent: float, confirmed: Callable[[float], None]) -> None:
        self.confirm, self.sent, self.confirmed = confirm, sent, confirmed

    def __call__(self) -> None:
        if self.confirm.error is None:
            self.confirmed(self.sent)
