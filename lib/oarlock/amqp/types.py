"""What a worker exchanges with a broker, in neutral types: no pika here.

A :class:`Transport` delivers :class:`Incoming` messages to one handler, publishes
:class:`Outgoing` messages (mandatory, with publisher confirms) and settles deliveries.
:class:`~oarlock.amqp.transport.AmqpTransport` is the real one (pika, RabbitMQ);
:class:`~oarlock.runtime.memory_transport.MemoryTransport` is an in-memory one for tests,
like dramatiq's StubBroker. A publish returns a :class:`Confirm` resolved with no error
(confirmed), a :class:`~oarlock.errors.PublishError` (returned as unroutable, nacked, or a
message that cannot be marshalled) or a :class:`~oarlock.errors.TransportError` (the connection
was lost before the answer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, NamedTuple, Protocol


class SignedByte(int):
    """An integer header sent as an AMQP signed byte (field type ``b``), as sailor sends ``protocolVersion``."""

    __slots__ = ()


class Incoming(NamedTuple):
    """One message as the broker delivered it (cheap to build: one per message)."""

    generation: int  # which connection delivered it: a delivery of a lost connection cannot be settled
    delivery_tag: int
    headers: dict[str, Any]
    body: bytes
    redelivered: bool
    routing_key: str = ""
    exchange: str = ""
    content_type: str | None = None
    content_encoding: str | None = None
    delivery_mode: int | None = None
    #: why the AMQP properties could not be decoded (then ``headers`` is empty): the message is rejected
    decode_error: str | None = None


class Outgoing(NamedTuple):
    """One message to publish: exchange, routing key, body and the AMQP properties sailor sets."""

    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    persistent: bool = True
    expiration: str | None = None
    content_type: str = "application/json"
    content_encoding: str = "utf8"


class Confirm:
    """The broker's answer to one publish. Resolved on the transport's I/O thread; callbacks run there too."""

    __slots__ = ("_callbacks", "done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None
        self._callbacks: list[Callable[[], None]] = []

    def resolve(self, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done, self.error = True, error
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_done(self, callback: Callable[[], None]) -> None:
        """I/O thread only."""
        if self.done:
            callback()
        else:
            self._callbacks.append(callback)


IncomingHandler = Callable[[Incoming], None]


def call_when_all_done(confirms: list[Confirm], then: Callable[[], None]) -> None:
    """I/O thread: call ``then`` once every confirm is resolved (at once when there is none): no one blocks."""
    if not confirms:
        then()
        return
    remaining = [len(confirms)]

    def one_done() -> None:
        remaining[0] -= 1
        if remaining[0] == 0:
            then()

    for confirm in confirms:
        confirm.on_done(one_done)


class Transport(Protocol):
    """What the worker needs of a broker. Every method may be called from any thread."""

    def start(self, timeout: float = 30.0) -> None:
        """Connect; TransportError when no connection is made within ``timeout``."""

    def consume(self, queue: str, prefetch: int, handler: IncomingHandler) -> None:
        """Deliver the queue's messages to ``handler`` (on the I/O thread), resuming after every reconnect."""

    def publish(self, message: Outgoing) -> Confirm:
        """Publish with mandatory=True; the Confirm resolves on the broker's answer."""

    def when_all(self, confirms: list[Confirm], then: Callable[[], None]) -> None:
        """Call ``then`` on the I/O thread once every confirm is resolved (nobody blocks waiting)."""

    def ack(self, incoming: Incoming) -> None: ...

    def reject(self, incoming: Incoming, *, requeue: bool) -> None: ...

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread after ``delay`` seconds."""

    def stop_consuming(self) -> Future[None]: ...

    def message_count(self, queue: str) -> Future[int]:
        """How many ready messages the queue holds."""

    def exchange_exists(self, exchange: str) -> Future[bool]:
        """True when the exchange exists (TransportError when the broker says it does not)."""

    def close(self) -> None: ...


SHORT_STRING_MAX = 255
"""AMQP's limit, in bytes of UTF-8, of an exchange name, a routing key, a header name."""


def short_string_problem(what: str, value: str) -> str | None:
    """Why ``value`` cannot be an AMQP short string (an exchange or a routing key), or None."""
    if not isinstance(value, str):
        return f"the {what} is a {type(value).__name__}, not text"
    if len(value) * 4 <= SHORT_STRING_MAX:
        return None
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return f"the {what} is not valid UTF-8 text"
    if size > SHORT_STRING_MAX:
        return f"the {what} is {size} bytes of UTF-8, AMQP allows at most {SHORT_STRING_MAX}"
    return None


def now_ms() -> int:
    return int(time.time() * 1000)
