"""An in-memory :class:`~oarlock.amqp.types.Transport`, like dramatiq's StubBroker: a worker without RabbitMQ.

It keeps one input queue and a record of everything published, acked and rejected, and it
behaves as the broker and :class:`~oarlock.amqp.transport.AmqpTransport` do where the worker's
rules depend on it:

- callbacks (deliveries, confirm callbacks, ``when_all``, ``call_later``) run on one I/O
  thread of its own, in order;
- at most ``prefetch`` deliveries are unsettled at once; a rejected-with-requeue delivery
  comes back with ``redelivered`` set;
- a publish is confirmed at once unless told otherwise: :meth:`make_unroutable` (the broker
  returns it: PublishError), :meth:`make_refused` (a nack: PublishError), :meth:`hold_confirms`
  (no answer until :meth:`release_confirms`);
- :meth:`lose_connection` fails every unanswered confirm with TransportError, ignores later
  settlements of the deliveries it had handed out (a new generation, as after a reconnect)
  and delivers them again, redelivered.

Tests wait on conditions, never on time: :meth:`wait_for` blocks until a predicate over the
transport's state holds (re-checked after every I/O callback)::

    transport = MemoryTransport()
    worker = Worker(settings, runner, step, transport)
    worker.start()
    transport.deliver(cipher.encrypt({"body": {}}), {"messageId": "m-1"})
    transport.wait_for(lambda: transport.acked)
    worker.stop()
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from oarlock.amqp.types import Confirm, Incoming, IncomingHandler, Outgoing, call_when_all_done
from oarlock.errors import PublishError, TransportError

log = logging.getLogger("oarlock.memory_transport")


class MemoryTransport:
    def __init__(self) -> None:
        self.published: list[Outgoing] = []
        self.acked: list[Incoming] = []
        self.rejected: list[tuple[Incoming, bool]] = []  # (delivery, requeue)
        self.generation = 1
        self._ready: collections.deque[Incoming] = collections.deque()
        self._unsettled: dict[int, Incoming] = {}
        self._next_tag = 0
        self._handler: IncomingHandler | None = None
        self._queue_name: str | None = None
        self._prefetch = 1
        self._consuming = False
        self._unroutable: set[str] = set()
        self._refused: set[str] = set()
        self._holding = False
        self._held: list[Confirm] = []
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._state = threading.Condition(threading.RLock())
        self._thread: threading.Thread | None = None
        self._io_thread: int | None = None
        self._timers: list[threading.Timer] = []
        self._closed = False

    # -- what a test controls -------------------------------------------------------------------
    def deliver(
        self,
        body: bytes,
        headers: dict[str, Any] | None = None,
        *,
        redelivered: bool = False,
        content_type: str | None = "application/json",
        content_encoding: str | None = "utf8",
        delivery_mode: int | None = 2,
        decode_error: str | None = None,
    ) -> None:
        """Put one message in the input queue (it is delivered when a prefetch slot is free); ``decode_error``:
        as the AMQP transport hands over a message whose properties it could not decode."""

        def put() -> None:
            self._next_tag += 1
            self._ready.append(
                Incoming(
                    self.generation,
                    self._next_tag,
                    dict(headers or {}),
                    body,
                    redelivered,
                    self._queue_name or "",
                    "",
                    content_type,
                    content_encoding,
                    delivery_mode,
                    decode_error,
                )
            )
            self._pump()

        self.call(put)

    def make_unroutable(self, routing_key: str) -> None:
        """From now on a publish to ``routing_key`` comes back as unroutable (basic.return)."""
        with self._state:
            self._unroutable.add(routing_key)

    def make_refused(self, routing_key: str) -> None:
        """From now on a publish to ``routing_key`` is nacked by the broker."""
        with self._state:
            self._refused.add(routing_key)

    def hold_confirms(self) -> None:
        """Leave every later publish unanswered until :meth:`release_confirms`."""
        with self._state:
            self._holding = True

    def release_confirms(self) -> None:
        """Confirm everything held, and stop holding."""

        def release() -> None:
            self._holding = False
            held, self._held = self._held, []
            for confirm in held:
                confirm.resolve()

        self.call(release)

    def lose_connection(self) -> None:
        """As a dropped connection: unanswered confirms fail, handed-out deliveries come back redelivered."""

        def lose() -> None:
            self.generation += 1
            held, self._held = self._held, []
            for confirm in held:
                confirm.resolve(TransportError("the broker connection was lost before the confirm"))
            back = [d._replace(generation=self.generation, redelivered=True) for d in self._unsettled.values()]
            self._unsettled.clear()
            self._ready.extendleft(reversed(back))
            self._pump()

        self.call(lose)

    def wait_for(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        """Block until ``predicate()`` is true (checked after every I/O callback); AssertionError on timeout."""
        with self._state:
            if not self._state.wait_for(lambda: bool(predicate()), timeout):
                raise AssertionError(f"the memory transport did not reach the expected state within {timeout:g} s")

    def published_to(self, routing_key: str) -> list[Outgoing]:
        with self._state:
            return [message for message in self.published if message.routing_key == routing_key]

    @property
    def ready(self) -> int:
        """Messages waiting in the input queue (not handed out)."""
        with self._state:
            return len(self._ready)

    @property
    def unsettled(self) -> int:
        """Deliveries handed out and neither acked nor rejected yet."""
        with self._state:
            return len(self._unsettled)

    # -- the Transport contract -----------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="oarlock-memory-io", daemon=True)
            self._thread.start()

    def consume(self, queue: str, prefetch: int, handler: IncomingHandler) -> None:
        def begin() -> None:
            self._queue_name, self._prefetch, self._handler = queue, max(1, prefetch), handler
            self._consuming = True
            self._pump()

        self.call(begin)

    def publish(self, message: Outgoing) -> Confirm:
        confirm = Confirm()

        def send() -> None:
            self.published.append(message)
            if message.routing_key in self._unroutable:
                confirm.resolve(
                    PublishError(
                        f"the broker returned a message published to exchange {message.exchange!r} with routing key "
                        f"{message.routing_key!r} as unroutable (NO_ROUTE)"
                    )
                )
            elif message.routing_key in self._refused:
                confirm.resolve(
                    PublishError(f"the broker refused (nack) a message for routing key {message.routing_key!r}")
                )
            elif self._holding:
                self._held.append(confirm)
            else:
                confirm.resolve()

        self.call(send)
        return confirm

    def when_all(self, confirms: list[Confirm], then: Callable[[], None]) -> None:
        self.call(lambda: call_when_all_done(confirms, then))

    def ack(self, incoming: Incoming) -> None:
        self.call(lambda: self._settle(incoming, acked=True, requeue=False))

    def reject(self, incoming: Incoming, *, requeue: bool) -> None:
        self.call(lambda: self._settle(incoming, acked=False, requeue=requeue))

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        timer = threading.Timer(delay, lambda: self.call(fn))
        timer.daemon = True
        with self._state:
            if self._closed:
                return
            self._timers = [t for t in self._timers if t.is_alive()]
            self._timers.append(timer)
        timer.start()

    def stop_consuming(self) -> Future[None]:
        done: Future[None] = Future()

        def stop() -> None:
            self._consuming = False
            done.set_result(None)

        self.call(stop)
        return done

    def message_count(self, queue: str) -> Future[int]:
        result: Future[int] = Future()
        self.call(lambda: result.set_result(len(self._ready)))
        return result

    def exchange_exists(self, exchange: str) -> Future[bool]:
        result: Future[bool] = Future()
        self.call(lambda: result.set_result(True))  # the memory transport routes everything
        return result

    def close(self) -> None:
        with self._state:
            self._closed = True
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        self._calls.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)

    # -- the I/O thread -------------------------------------------------------------------------
    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread, in order (at once when already there)."""
        if threading.get_ident() == self._io_thread:
            with self._state:
                fn()
                self._state.notify_all()
            return
        self._calls.put(fn)

    def _run(self) -> None:
        self._io_thread = threading.get_ident()
        while True:
            fn = self._calls.get()
            if fn is None:
                return
            with self._state:
                try:
                    fn()
                except Exception:
                    log.exception("a callback on the memory transport's I/O thread failed")
                self._state.notify_all()

    def _pump(self) -> None:
        while self._consuming and self._handler is not None and self._ready and len(self._unsettled) < self._prefetch:
            delivery = self._ready.popleft()
            self._unsettled[delivery.delivery_tag] = delivery
            self._handler(delivery)

    def _settle(self, incoming: Incoming, *, acked: bool, requeue: bool) -> None:
        if incoming.generation != self.generation or incoming.delivery_tag not in self._unsettled:
            log.info("not settling delivery %s of a lost connection", incoming.delivery_tag)
            return
        del self._unsettled[incoming.delivery_tag]
        if acked:
            self.acked.append(incoming)
        else:
            self.rejected.append((incoming, requeue))
            if requeue:
                self._ready.append(incoming._replace(redelivered=True))
        self._pump()
