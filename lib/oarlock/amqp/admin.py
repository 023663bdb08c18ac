"""Operator's broker operations: declare a topology, peek at a queue without consuming it.

A short-lived blocking pika connection each (not the worker's transport). This module knows
nothing of steps or encryption: it is given neutral objects (:class:`Exchange`, :class:`Queue`,
:class:`Binding`) by ``oarlock topology declare``, and hands raw messages (:class:`Peeked`) to
``oarlock peek``, which decrypts them. Every pika exception becomes a
:class:`~oarlock.errors.TransportError` with a one-line reason naming the broker (never its
credentials) and the object concerned.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import decimal
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pika
import pika.adapters.blocking_connection
import pika.exceptions
import pika.spec

from oarlock.amqp.failures import broker_name, pika_quiet
from oarlock.amqp.tls import AmqpTls, url_parameters
from oarlock.errors import TransportError

CONNECT_TIMEOUT_SECONDS = 10.0
Channel: TypeAlias = pika.adapters.blocking_connection.BlockingChannel


@dataclass(frozen=True)
class Exchange:
    name: str
    type: str = "direct"
    durable: bool = True


@dataclass(frozen=True)
class Queue:
    name: str
    durable: bool = True
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Binding:
    exchange: str
    queue: str
    routing_key: str


Declarable = Exchange | Queue | Binding


@dataclass(frozen=True)
class Declared:
    """What declaring one object found: ``created``, ``exists`` (exchanges, queues) or ``bound`` (bindings:
    AMQP cannot tell whether a binding was there before, and binding again changes nothing)."""

    item: Declarable
    status: str
    messages: int | None = None  # a queue's message count after the declare


@dataclass(frozen=True)
class Peeked:
    """One message read from a queue and put back."""

    exchange: str
    routing_key: str
    redelivered: bool
    properties: dict[str, Any]  # JSON-safe: content_type, delivery_mode, … (None values left out)
    headers: dict[str, Any]  # JSON-safe copy of the AMQP headers table
    body: bytes


def _reason(exc: BaseException) -> str:
    """One line out of a pika exception: ``(404, "NOT_FOUND - no queue 'q' in vhost '/'")`` -> the text."""
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker | pika.exceptions.ConnectionClosedByBroker):
        return f"{exc.reply_code} {exc.reply_text}"
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
        return "the broker refused the user name or password"
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return "access to the virtual host was refused"
    if isinstance(exc, pika.exceptions.AMQPConnectionError) and exc.args:
        inner = exc.args[0]
        return _reason(inner) if isinstance(inner, BaseException) else str(inner).splitlines()[0][:200]
    inner = getattr(exc, "exception", None)  # pika's connector errors wrap the socket's or TLS's
    if isinstance(inner, BaseException):
        return _reason(inner)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return text or type(exc).__name__


class BrokerAdmin:
    """A blocking connection and one channel, reopened after the broker closes it (a 404 or 406 does)."""

    def __init__(self, amqp_uri: str, *, name: str = "oarlock admin") -> None:
        self.broker = broker_name(amqp_uri)
        # amqps:// with the ELASTICIO_AMQP_TLS_* settings, like oarlock run and keys serve; a bad URI or TLS
        # setting is a ConfigurationError (exit 2 for the commands), not a broker error
        params = url_parameters(amqp_uri, AmqpTls.from_env(os.environ))
        params.connection_attempts = 1
        params.socket_timeout = CONNECT_TIMEOUT_SECONDS
        params.stack_timeout = CONNECT_TIMEOUT_SECONDS
        params.blocked_connection_timeout = CONNECT_TIMEOUT_SECONDS
        params.client_properties = {"connection_name": name, "product": "oarlock"}
        try:
            with pika_quiet():
                self._connection = pika.BlockingConnection(params)
                self._channel: Channel = self._connection.channel()
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise TransportError(f"cannot connect to the broker at {self.broker}: {_reason(exc)}") from None

    def __enter__(self) -> BrokerAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError), pika_quiet():
            if self._connection.is_open:
                self._connection.close()

    @property
    def channel(self) -> Channel:
        if not self._channel.is_open:
            try:
                self._channel = self._connection.channel()
            except (pika.exceptions.AMQPError, OSError) as exc:
                raise TransportError(f"the broker at {self.broker} closed the connection: {_reason(exc)}") from None
        return self._channel

    # -- topology ------------------------------------------------------------------------------------
    def declare(self, items: Sequence[Declarable]) -> list[Declared]:
        """Declare every item in order; idempotent. An object that exists with other properties (type,
        durability, arguments) is a TransportError naming it and the broker's reason; it is left as it is."""
        return [self._declare(item) for item in items]

    def _declare(self, item: Declarable) -> Declared:
        what = _describe(item)
        try:
            if isinstance(item, Exchange):
                existed = self._exists(lambda ch: ch.exchange_declare(item.name, passive=True))
                self.channel.exchange_declare(item.name, exchange_type=item.type, durable=item.durable)
                return Declared(item, "exists" if existed else "created")
            if isinstance(item, Queue):
                existed = self._exists(lambda ch: ch.queue_declare(item.name, passive=True))
                frame = self.channel.queue_declare(item.name, durable=item.durable, arguments=dict(item.arguments))
                return Declared(item, "exists" if existed else "created", int(frame.method.message_count))
            self.channel.queue_bind(item.queue, item.exchange, routing_key=item.routing_key)
            return Declared(item, "bound")
        except pika.exceptions.ChannelClosedByBroker as exc:
            hint = (
                " (it exists with other properties: delete it or change the settings)" if exc.reply_code == 406 else ""
            )
            raise TransportError(f"cannot declare {what} on {self.broker}: {_reason(exc)}{hint}") from None
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise TransportError(f"cannot declare {what} on {self.broker}: {_reason(exc)}") from None

    def _exists(self, passive: Any) -> bool:
        try:
            passive(self.channel)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return False
            raise
        return True

    # -- inspection ----------------------------------------------------------------------------------
    def peek(self, queue: str, count: int) -> list[Peeked]:
        """Up to ``count`` messages from the head of ``queue``, put back (nack with requeue) before returning.

        The messages stay in the queue, in their order, marked ``redelivered`` by the broker. A consumer
        of the queue competes for them while they are held (a few milliseconds).
        """
        taken: list[Peeked] = []
        last_tag: int | None = None
        channel = self.channel
        try:
            try:
                while len(taken) < count:
                    method, properties, body = channel.basic_get(queue, auto_ack=False)
                    if method is None:
                        break
                    assert isinstance(method, pika.spec.Basic.GetOk)
                    last_tag = method.delivery_tag
                    taken.append(_peeked(method, properties, body))
            finally:
                if last_tag is not None and channel.is_open:
                    channel.basic_nack(last_tag, multiple=True, requeue=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise TransportError(f"cannot read queue {queue!r} on {self.broker}: {_reason(exc)}") from None
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise TransportError(f"cannot read queue {queue!r} on {self.broker}: {_reason(exc)}") from None
        return taken


def _describe(item: Declarable) -> str:
    if isinstance(item, Exchange):
        return f"exchange {item.name!r}"
    if isinstance(item, Queue):
        return f"queue {item.name!r}"
    return f"the binding of queue {item.queue!r} to exchange {item.exchange!r} with key {item.routing_key!r}"


_PROPERTIES = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
)


def _peeked(method: pika.spec.Basic.GetOk, properties: pika.spec.BasicProperties, body: bytes) -> Peeked:
    props = {name: json_safe(getattr(properties, name, None)) for name in _PROPERTIES}
    return Peeked(
        exchange=method.exchange,
        routing_key=method.routing_key,
        redelivered=bool(method.redelivered),
        properties={k: v for k, v in props.items() if v is not None},
        headers=json_safe(dict(properties.headers or {})),
        body=bytes(body),
    )


def json_safe(value: Any) -> Any:
    """An AMQP field value as JSON can carry it: bytes as UTF-8 text (else ``base64:…``), decimals as
    numbers, timestamps as ISO 8601 text, tables and arrays recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(value).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value
