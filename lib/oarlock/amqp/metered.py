"""The AMQP transport with metrics: publish -> confirm latency, reconnects, readiness.

:class:`MeteredTransport` is :class:`~oarlock.amqp.transport.AmqpTransport` plus what
``oarlock run --metrics`` reports; it is used only when metrics are on, so without them the
transport has nothing extra on its hot path. :func:`consuming` is the ``/readyz`` answer for any
AMQP transport (``keys serve`` too): connected, both channels open, and the consumer registered on
the current connection (it is not after a lost connection until the reconnect registered it again,
nor once the worker stopped consuming to shut down).
"""

from __future__ import annotations

import time
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
    """An AmqpTransport whose confirms are timed and whose reconnects are counted into ``metrics``."""

    def __init__(self, amqp_uri: str, *, metrics: TransportMetrics, **options: Any) -> None:
        super().__init__(amqp_uri, **options)
        self._metrics = metrics

    def publish(self, message: Outgoing) -> Confirm:
        sent = time.monotonic()
        confirm = super().publish(message)
        metrics = self._metrics

        def confirmed() -> None:
            if confirm.error is None:  # returned, nacked or lost: no confirm to time
                metrics.publish_confirmed(sent)

        self.call(lambda: confirm.on_done(confirmed))  # on the I/O thread, after the publish itself
        return confirm

    def _check_ready(self) -> None:
        again = self.connected_once.is_set() and not self._ready.is_set()
        super()._check_ready()
        if again and self._ready.is_set():
            self._metrics.broker_reconnected()
