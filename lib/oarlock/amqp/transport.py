"""RabbitMQ with pika: consume, publish with pipelined publisher confirms, reconnect.

One I/O thread runs a pika ``SelectConnection`` ioloop holding two connections (consuming and
publishing, as sailor separates them). Everything that touches pika happens on that thread:
other threads call :meth:`AmqpTransport.publish`, :meth:`ack` and :meth:`reject`, which hand
the work over with ``add_callback_threadsafe`` (pika's threading rule). A publish returns a
``Confirm`` that resolves when the broker confirms it: confirms are pipelined, never one
blocking round trip per message. A mandatory publish that comes back unroutable
(basic.return) or is nacked fails its future with PublishError. When a connection drops,
every pending future fails, acks for deliveries of the dead connection are dropped (the
broker redelivers them), and the transport reconnects with backoff.

One message can never stop the I/O thread or the connection: a publish's properties are encoded
on the publishing thread (a header that cannot be encoded is an EncodeError there); one the
broker would refuse to take (a routing key over 255 bytes) fails its own Confirm with a
PublishError and takes no delivery tag (:mod:`oarlock.amqp.confirms`); a delivery whose header
frame cannot be decoded comes with ``Incoming.decode_error`` and no headers.

The hot path (:mod:`oarlock.amqp.hotpath`: deliveries and confirms read straight from the
receive buffer, publishes marshalled in one go, a turn's frames written at once) is a layer on
top of pika's ``SelectConnection``. ``OARLOCK_AMQP_HOT_PATH=off`` (or ``hot_path=False``) runs on
plain pika instead: the same behaviour, pika's own code for every frame (but a header frame pika
cannot decode: :class:`~oarlock.amqp.connection.GuardedConnection`).

``amqps://`` is TLS, verified (:mod:`oarlock.amqp.tls`). :meth:`start` retries until its deadline,
gives up at once when retrying cannot help and returns as soon as the ``stop`` event is set; pika's
log lines are folded into one line per attempt and per lost connection (:mod:`oarlock.amqp.failures`).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

import pika
import pika.channel
import pika.frame
import pika.spec
from pika.adapters.select_connection import IOLoop

from oarlock.amqp.acks import AckWindow
from oarlock.amqp.confirms import PublishLedger, publish_failure
from oarlock.amqp.connection import GuardedConnection
from oarlock.amqp.failures import Attempts, Failure, describe_failure, hush_pika
from oarlock.amqp.fieldtable import FastProperties, UndecodableProperties
from oarlock.amqp.hotpath import HotPathConnection
from oarlock.amqp.tls import AmqpTls, url_parameters
from oarlock.amqp.types import Confirm, Incoming, IncomingHandler, Outgoing, call_when_all_done
from oarlock.errors import TransportError

log = logging.getLogger("oarlock.amqp")

HOT_PATH_ENV = "OARLOCK_AMQP_HOT_PATH"


def hot_path_enabled(env: Mapping[str, str]) -> bool:
    """The hot path is on unless ``OARLOCK_AMQP_HOT_PATH`` is 0, off, false or no."""
    return env.get(HOT_PATH_ENV, "on").strip().lower() not in ("0", "off", "false", "no")


class AmqpTransport:
    def __init__(
        self,
        amqp_uri: str,
        *,
        name: str = "oarlock",
        reconnect_max_seconds: float = 30.0,
        hot_path: bool | None = None,
        tls: AmqpTls | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """``tls`` None: from ELASTICIO_AMQP_TLS_*; ``stop`` set: a :meth:`start` still connecting returns, closed.
        ConfigurationError for a URI pika cannot parse or TLS settings that cannot be used."""
        self.hot_path = hot_path_enabled(os.environ) if hot_path is None else hot_path
        self._connection_class: type[pika.SelectConnection] = HotPathConnection if self.hot_path else GuardedConnection
        self.tls = AmqpTls.from_env(os.environ) if tls is None else tls
        self._params = url_parameters(amqp_uri, self.tls)
        self.broker = f"{self._params.host}:{self._params.port} (vhost {self._params.virtual_host})"  # no password
        self._stop = stop
        self._params.heartbeat = self._params.heartbeat or 30
        self._params.client_properties = {"connection_name": name, "product": "oarlock"}
        self._ioloop = IOLoop()
        self._thread: threading.Thread | None = None
        self._attempts = Attempts(self.broker, max_delay=reconnect_max_seconds, trust=self.tls.trust())
        self._consume_conn: pika.SelectConnection | None = None
        self._publish_conn: pika.SelectConnection | None = None
        self._consume_channel: pika.channel.Channel | None = None
        self._publish_channel: pika.channel.Channel | None = None
        self._consumer_tag: str | None = None
        self._consuming_generation = 0  # the connection generation the consumer was registered on
        self._acks = AckWindow()
        self._ack_flush_scheduled = False
        self._queue: str | None = None
        self._prefetch = 1
        self._handler: IncomingHandler | None = None
        self._consuming_wanted = False
        self._ledger = PublishLedger()  # the publishes waiting for their confirm, by delivery tag
        self._asking: set[Future[Any]] = set()
        self._waiting: list[tuple[Callable[[], None], Confirm]] = []
        self._io_thread: int | None = None
        self._outbox: collections.deque[Callable[[], None]] = collections.deque()
        self._kick_lock = threading.Lock()
        self._kicked = False
        self.generation = 0
        self._ready = threading.Event()
        self._closing = False
        self._reconnect_scheduled = -1
        self.connected_once = threading.Event()
        self._unhush: Callable[[], None] = lambda: None

    # -- lifecycle (any thread) --------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        """Connect; TransportError naming broker and reason past ``timeout`` or when retrying cannot help."""
        self._unhush = hush_pika()
        self._thread = threading.Thread(target=self._run, name="oarlock-amqp", daemon=True)
        self._thread.start()
        try:
            self._attempts.wait(self.connected_once, timeout, self._stop)
        finally:
            if not self.connected_once.is_set():  # given up, or stopped
                self.close()

    def _run(self) -> None:
        self._io_thread = threading.get_ident()
        self.call(self._connect)
        self._ioloop.start()

    def close(self) -> None:
        """Flush acks, close both connections, stop the I/O thread (idempotent)."""
        self._closing = True
        try:
            if self._thread is not None and self._thread.is_alive():
                self._ioloop.add_callback_threadsafe(self._shut)
                if self._thread is not threading.current_thread():
                    self._thread.join(10)
        except Exception:  # the loop is already gone
            return
        finally:
            self._unhush()

    def _shut(self) -> None:
        self._flush_acks()
        for conn in (self._consume_conn, self._publish_conn):
            if conn is not None and conn.is_open:
                conn.close()
        self._ioloop.call_later(0.2, self._ioloop.stop)

    def call(self, fn: Callable[[], None]) -> None:
        """Run fn on the I/O thread, in order; one wake-up of the loop serves a whole batch of calls."""
        if threading.get_ident() == self._io_thread and not self._outbox:
            fn()
            return
        self._outbox.append(fn)
        with self._kick_lock:
            if self._kicked:
                return
            self._kicked = True
        self._ioloop.add_callback_threadsafe(self._drain_outbox)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run fn on the I/O thread after ``delay`` seconds (any thread)."""
        if threading.get_ident() == self._io_thread:
            self._ioloop.call_later(delay, fn)
        else:
            self.call(lambda: self._ioloop.call_later(delay, fn))

    def _drain_outbox(self) -> None:
        with self._kick_lock:
            self._kicked = False
        while self._outbox:
            try:
                self._outbox.popleft()()
            except Exception:  # a bug in one call must not stop the loop every other message needs
                log.exception("a call on the broker connection's thread failed")
        self._send_now()

    def _send_now(self) -> None:
        """Write pending acks and frames now rather than on the next turn of the loop.

        Every turn of the loop is a system call, and while a function thread computes, the I/O
        thread waits for the interpreter lock after each one: what is ready leaves at once.
        """
        self._flush_acks()
        if not self.hot_path:
            return
        for connection in (self._publish_conn, self._consume_conn):
            if connection is not None:
                connection.flush_outgoing()

    # -- connections (I/O thread) ------------------------------------------------------------------
    def _connect(self) -> None:
        if self._closing:
            return
        self._ready.clear()
        self.generation += 1
        self._consume_conn, self._publish_conn = (
            self._connection_class(
                self._params,
                on_open_callback=on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
                custom_ioloop=self._ioloop,
            )
            for on_open in (self._on_consume_open, self._on_publish_open)  # consuming first, then publishing
        )
        if isinstance(self._consume_conn, HotPathConnection) and isinstance(self._publish_conn, HotPathConnection):
            self._consume_conn.after_read = self._publish_conn.after_read = self._send_now

    def _on_open_error(self, conn: pika.SelectConnection, error: BaseException | str) -> None:
        failure = describe_failure(error)
        if failure.permanent and not self.connected_once.is_set():
            self._attempts.permanent = failure  # start() gives up: the next attempt would fail the same way
            return
        self._schedule_reconnect(failure)

    def _on_closed(self, conn: pika.SelectConnection, reason: BaseException) -> None:
        if self._closing or self._reconnect_scheduled == self.generation:
            return  # the other connection of the pair said it already
        log.warning("broker connection to %s lost (%s): reconnecting", self.broker, describe_failure(reason).reason)
        self._schedule_reconnect()

    def _schedule_reconnect(self, failure: Failure | None = None) -> None:
        if self._closing or self._reconnect_scheduled == self.generation:
            return
        generation = self._reconnect_scheduled = self.generation
        self._ready.clear()
        # fail everything bound to the dead connections, once
        self._ledger.fail_all(TransportError("the broker connection was lost before the confirm"))
        self._consume_channel = self._publish_channel = None
        asking, self._asking = self._asking, set()
        for question in asking:
            if not question.done():
                question.set_exception(TransportError("the broker closed the channel before it answered"))
        for conn in (self._consume_conn, self._publish_conn):
            if conn is not None and conn.is_open:
                conn.close()
        delay = self._attempts.failed(failure, connected_before=self.connected_once.is_set())
        self._ioloop.call_later(delay, lambda: self._reconnect_if(generation))

    def _reconnect_if(self, generation: int) -> None:
        if generation == self.generation and not self._closing:
            self._connect()

    def _on_consume_open(self, conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=self._on_consume_channel)

    def _on_publish_open(self, conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=self._on_publish_channel)

    def _on_consume_channel(self, channel: pika.channel.Channel) -> None:
        self._consume_channel = channel
        self._acks = AckWindow()  # delivery tags start again at 1 on a new channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_cancel_callback(self._on_consumer_cancelled)
        self._check_ready()

    def _on_publish_channel(self, channel: pika.channel.Channel) -> None:
        self._publish_channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        self._ledger.new_channel()
        channel.confirm_delivery(self._on_confirm_frame, callback=lambda _frame: self._check_ready())
        if isinstance(self._publish_conn, HotPathConnection):
            self._publish_conn.listen_for_confirms(channel.channel_number, self._on_confirm)

    def _on_channel_closed(self, channel: pika.channel.Channel, reason: BaseException) -> None:
        if self._closing or self._reconnect_scheduled == self.generation:
            return
        log.warning("broker channel on %s closed (%s): reconnecting", self.broker, describe_failure(reason).reason)
        self._schedule_reconnect()

    def _on_consumer_cancelled(self, frame: pika.frame.Method[pika.spec.Basic.Cancel]) -> None:
        """The broker cancelled the consumer (its queue was deleted, or the queue's node went down): not ready,
        and consuming resumes after a reconnect with the growing backoff, once the queue is back."""
        if self._closing or not self._consuming_wanted:
            return
        log.warning(
            "the broker cancelled the consumer of queue %s (deleted, or its node is down): reconnecting", self._queue
        )
        self._consuming_generation = 0
        self._schedule_reconnect()

    def _check_ready(self) -> None:
        if self._consume_channel is None or self._publish_channel is None:
            return
        if self._publish_channel.is_open and self._consume_channel.is_open:
            if not self._consuming_wanted:
                self._attempts.connected()  # when consuming, only the broker's consume-ok proves the connection
            self._ready.set()
            self.connected_once.set()
            waiting, self._waiting = self._waiting, []
            for fn, confirm in waiting:
                if not confirm.done:
                    fn()
            if self._consuming_wanted:
                self._start_consuming()

    # -- consuming ---------------------------------------------------------------------------------
    def consume(self, queue: str, prefetch: int, handler: IncomingHandler) -> None:
        """Start consuming (any thread); resumes by itself after every reconnect."""

        def begin() -> None:
            self._queue, self._prefetch, self._handler = queue, prefetch, handler
            self._consuming_wanted = True
            if self._ready.is_set():
                self._start_consuming()

        self.call(begin)

    def _start_consuming(self) -> None:
        channel = self._consume_channel
        if channel is None or self._queue is None:
            return
        if self._consuming_generation == self.generation:
            return  # both channels' readiness lead here: one consumer per connection, never two
        self._consuming_generation = self.generation
        channel.basic_qos(prefetch_count=self._prefetch)
        generation = self.generation
        self._consumer_tag = channel.basic_consume(
            self._queue,
            lambda ch, method, props, body: self._on_message(generation, method, props, body),
            callback=lambda _frame: self._attempts.connected(),  # the queue took us: the backoff starts over
        )

    def _on_message(
        self, generation: int, method: pika.spec.Basic.Deliver, properties: pika.spec.BasicProperties, body: bytes
    ) -> None:
        if generation != self.generation:
            return  # a late delivery of a connection being replaced: the broker redelivers it
        self._acks.delivered(method.delivery_tag)
        if self._handler is None:
            self._acks.settled(method.delivery_tag)
            if self._consume_channel is not None:
                self._consume_channel.basic_reject(method.delivery_tag, requeue=True)
            return
        self._handler(
            Incoming(
                generation,
                method.delivery_tag,
                properties.headers or {},
                body,
                bool(method.redelivered),
                method.routing_key or "",
                method.exchange or "",
                properties.content_type,
                properties.content_encoding,
                properties.delivery_mode,
                properties.decode_error if isinstance(properties, UndecodableProperties) else None,
            )
        )

    def stop_consuming(self) -> Future[None]:
        done: Future[None] = Future()
        if self._closing:  # nothing consumes on a closed transport, and its loop may be gone
            done.set_result(None)
            return done

        def stop() -> None:
            self._consuming_wanted = False
            self._consuming_generation = 0
            channel, tag = self._consume_channel, self._consumer_tag
            if channel is not None and channel.is_open and tag:
                channel.basic_cancel(tag, callback=lambda _f: done.set_result(None))
            else:
                done.set_result(None)

        self.call(stop)
        return done

    def message_count(self, queue: str) -> Future[int]:
        """How many ready messages the queue holds (passive declare)."""
        return self._ask(
            lambda channel, answer: channel.queue_declare(queue, passive=True, callback=answer),
            lambda frame: int(frame.method.message_count),
        )

    def exchange_exists(self, exchange: str) -> Future[bool]:
        """True once the broker answers a passive declare; TransportError when it closes the channel instead."""
        return self._ask(
            lambda channel, answer: channel.exchange_declare(exchange, passive=True, callback=answer), lambda _f: True
        )

    def _ask(self, send: Callable[[Any, Callable[[Any], None]], None], read: Callable[[Any], Any]) -> Future[Any]:
        result: Future[Any] = Future()

        def answer(frame: pika.frame.Method) -> None:
            self._asking.discard(result)
            if not result.done():
                result.set_result(read(frame))

        def ask() -> None:
            channel = self._consume_channel
            if channel is None or not channel.is_open:
                result.set_exception(TransportError("no open channel"))
                return
            self._asking.add(result)  # failed if the channel closes instead of answering (a missing queue)
            send(channel, answer)

        self.call(ask)
        return result

    def ack(self, delivery: Incoming) -> None:
        self.call(lambda: self._settle(delivery, ack=True, requeue=False))

    def reject(self, delivery: Incoming, *, requeue: bool) -> None:
        self.call(lambda: self._settle(delivery, ack=False, requeue=requeue))

    def _settle(self, delivery: Incoming, *, ack: bool, requeue: bool) -> None:
        channel = self._consume_channel
        if delivery.generation != self.generation or channel is None or not channel.is_open:
            log.info("not settling delivery %s of a lost connection: the broker redelivers it", delivery.delivery_tag)
            return
        if ack:
            # acks of one turn of the loop leave together, as one multiple ack where the tags allow
            self._acks.ready(delivery.delivery_tag)
            if not self._ack_flush_scheduled:
                self._ack_flush_scheduled = True
                self._ioloop.call_later(0, self._flush_acks)
        else:
            self._acks.settled(delivery.delivery_tag)
            channel.basic_reject(delivery.delivery_tag, requeue=requeue)

    def _flush_acks(self) -> None:
        self._ack_flush_scheduled = False
        plan = self._acks.take()
        channel = self._consume_channel
        if not plan or channel is None or not channel.is_open:
            return
        if plan.through is not None:
            channel.basic_ack(plan.through, multiple=True)
        for tag in plan.singles:
            channel.basic_ack(tag)

    # -- publishing --------------------------------------------------------------------------------
    def publish(self, message: Outgoing) -> Confirm:
        """Publish with mandatory=True (any thread); the Confirm resolves on the broker's answer.

        A message that cannot be marshalled (a routing key over 255 bytes, a header value AMQP has no
        type for) resolves its Confirm with a PublishError naming why, and takes no delivery tag. The
        properties are encoded on the I/O thread, as part of the write (measured: encoding them on the
        publishing threads cost 3-5 % of the throughput).
        """
        confirm = Confirm()
        exchange, routing_key, body = message.exchange, message.routing_key, message.body
        properties = _properties(message)

        def send() -> None:
            channel, connection = self._publish_channel, self._publish_conn
            if channel is None or connection is None or not channel.is_open or not self._ready.is_set():
                self._waiting.append((send, confirm))
                return
            try:  # both ways marshal the whole publish before writing any of it: when it raises, nothing left
                if isinstance(connection, HotPathConnection):
                    connection.publish(channel, exchange, routing_key, body, properties, mandatory=True)
                else:
                    channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
            except Exception as exc:  # a routing key or a header value AMQP cannot carry: this message's failure
                confirm.resolve(publish_failure(exc, exchange, routing_key, properties.headers))
                return
            self._ledger.written(confirm, exchange, routing_key, body)  # only now: it takes a delivery tag

        self.call(send)
        return confirm

    def when_all(self, confirms: list[Confirm], then: Callable[[], None]) -> None:
        """Call ``then`` on the I/O thread once every confirm is resolved (nobody blocks waiting)."""

        self.call(lambda: call_when_all_done(confirms, then))

    def _on_return(
        self,
        channel: pika.channel.Channel,
        method: pika.spec.Basic.Return,
        properties: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        self._ledger.returned(method.exchange, method.routing_key, body, method.reply_text)

    def _on_confirm_frame(self, frame: pika.frame.Method) -> None:
        """Confirms that reach pika's own callbacks (the hot path hands the others to _on_confirm)."""
        method = frame.method
        self._on_confirm(method.delivery_tag, bool(method.multiple), isinstance(method, pika.spec.Basic.Ack))

    def _on_confirm(self, delivery_tag: int, multiple: bool, acked: bool) -> None:
        self._ledger.confirmed(delivery_tag, multiple, acked)


def _properties(message: Outgoing) -> pika.BasicProperties:
    return FastProperties(
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        headers=message.headers,
        delivery_mode=2 if message.persistent else 1,
        expiration=message.expiration,
    )
