"""The platform side of updateKeys over RabbitMQ: consume, decrypt, persist (newest wins), then ack.

:class:`KeysService` consumes through the shared :class:`~oarlock.amqp.transport.AmqpTransport`
(reconnect with backoff when the broker drops the connection, no pika here). The transport
delivers on its I/O thread; every delivery is handed to one worker thread, which decrypts it,
writes it to the store and settles it: ack once the store wrote it (or refused it as older),
reject without requeue when it cannot be decoded or is not a valid update (a version that is not a
finite integer, or later than now + 1 day), reject WITH requeue after a growing pause (0.5 s
doubling to 30 s) when the store cannot be reached or written: an update is never dropped
because the store blipped. A delivery of a connection that was
lost before it was handled is left alone: the broker redelivers it on the new connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from queue import SimpleQueue
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlsplit

from oarlock.amqp.tls import AmqpTls
from oarlock.amqp.transport import AmqpTransport
from oarlock.amqp.types import Incoming
from oarlock.errors import DecodeError, KeyStoreError, TransportError
from oarlock.keys.base import KeyStore, apply_update_keys
from oarlock.protocol.crypto import MessageCipher
from oarlock.protocol.outgoing import protocol_version_of
from oarlock.redact import redact_text

log = logging.getLogger("oarlock.keys.service")
STORE_RETRY_FIRST_SECONDS = 0.5
STORE_RETRY_MAX_SECONDS = 30.0


def broker_name(amqp_uri: str) -> str:
    """``host:port/vhost`` of an AMQP URI, fit for messages: no user, no password."""
    try:
        parts = urlsplit(amqp_uri)
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        host = parts.hostname or "localhost"
    except ValueError:
        return "(unparsable URI)"
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return f"{host}:{port} (vhost {vhost})"


class KeysService:
    """Consumes updateKeys messages from ``queue`` and persists them in ``store``.

    ``connect_timeout``: how long :meth:`run` tries to reach the broker at start before it gives up
    with a TransportError. ``quiet_seconds``: with ``burst``, how long nothing must have been
    delivered before the queue is asked whether it is empty. ``grace_seconds``: on stop, how long
    the messages already delivered may take to be handled (the broker redelivers the others).
    """

    def __init__(
        self,
        store: KeyStore,
        amqp_uri: str,
        queue: str,
        cipher: MessageCipher,
        *,
        prefetch: int = 20,
        connect_timeout: float = 10.0,
        reconnect_max_seconds: float = 30.0,
        quiet_seconds: float = 0.5,
        grace_seconds: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.amqp_uri = amqp_uri
        self.queue = queue
        self.cipher = cipher
        self.prefetch = prefetch
        self.connect_timeout = connect_timeout
        self.reconnect_max_seconds = reconnect_max_seconds
        self.quiet_seconds = quiet_seconds
        self.grace_seconds = grace_seconds
        self.stored = 0
        self.refused = 0
        self.rejected = 0
        self.requeued = 0  # left for redelivery because the store could not take them
        self._store_failures = 0  # in a row: the pause before requeueing grows with it
        self._sleep = sleep
        self._stopping = False  # a plain flag: set from a signal handler
        self._lock = threading.Lock()
        self._in_flight = 0  # delivered, not yet handled
        self._last_activity = time.monotonic()
        self._work: SimpleQueue[Incoming | None] = SimpleQueue()
        self._transport: AmqpTransport | None = None

    def stop(self) -> None:
        """Stop after the messages already delivered (any thread, or a signal handler)."""
        self._stopping = True

    def handle(self, body: bytes, headers: dict[str, Any]) -> bool:
        """Decode and persist one message; True if it was written, False if older; raises on bad input."""
        payload = self.cipher.decrypt(body, protocol_version_of(headers))
        if not isinstance(payload, dict):
            raise DecodeError("an updateKeys message must be a JSON object")
        return apply_update_keys(self.store, payload)

    # -- lifecycle ---------------------------------------------------------------------------------
    def run(self, *, burst: bool = False) -> int:
        """Consume until stopped (SIGTERM, :meth:`stop`) or, with ``burst``, until the queue is empty.

        Returns how many credentials were written. TransportError when the broker cannot be
        reached at start or the queue cannot be consumed, ConfigurationError for an invalid URI.
        """
        transport = self._transport = self._connect()
        worker = threading.Thread(target=self._work_loop, name="oarlock-keys", daemon=True)
        worker.start()
        # SIGTERM stops cleanly; a handler can only be installed from the main thread
        installed = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if installed else None
        if installed:
            signal.signal(signal.SIGTERM, self._on_term)
        try:
            self._check_queue(transport)
            transport.consume(self.queue, self.prefetch, self._on_delivery)
            log.info("consuming updateKeys messages from queue %s", self.queue)
            while not self._stopping:
                time.sleep(0.1)
                if burst and self._drained(transport):
                    log.info("queue %s is empty: burst run finished", self.queue)
                    break
        finally:
            if installed and previous is not None:
                signal.signal(signal.SIGTERM, previous)
            with contextlib.suppress(TransportError, TimeoutError):
                transport.stop_consuming().result(5)
            self._work.put(None)  # after what was delivered: those are handled first
            worker.join(self.grace_seconds)
            transport.close()
        return self.stored

    def _connect(self) -> AmqpTransport:
        """ConfigurationError for a bad URI or TLS setting; TransportError naming the broker when it cannot be
        reached (pika's lines are folded into the transport's, TLS comes from ELASTICIO_AMQP_TLS_*)."""
        transport = AmqpTransport(
            self.amqp_uri,
            name=f"oarlock keys serve {self.queue}",
            reconnect_max_seconds=self.reconnect_max_seconds,
            tls=AmqpTls.from_env(os.environ),
        )
        transport.start(self.connect_timeout)
        return transport

    def _check_queue(self, transport: AmqpTransport) -> None:
        """TransportError unless the queue exists: a missing one would close the channel on every reconnect."""
        where = broker_name(self.amqp_uri)
        try:
            transport.message_count(self.queue).result(self.connect_timeout)
        except TransportError:  # the broker closed the channel instead of answering
            raise TransportError(
                f"queue {self.queue} cannot be consumed on the broker at {where}: it does not exist or is not accessible"
            ) from None
        except TimeoutError:
            raise TransportError(
                f"the broker at {where} did not answer within {self.connect_timeout:g} s whether queue {self.queue} exists"
            ) from None

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.stop()

    def _drained(self, transport: AmqpTransport) -> bool:
        with self._lock:
            if self._in_flight or time.monotonic() - self._last_activity < self.quiet_seconds:
                return False
        try:
            count = transport.message_count(self.queue).result(10)
        except (TransportError, TimeoutError):
            return False
        with self._lock:
            return count == 0 and self._in_flight == 0

    # -- deliveries --------------------------------------------------------------------------------
    def _on_delivery(self, delivery: Incoming) -> None:
        """I/O thread: hand over, never block."""
        with self._lock:
            self._in_flight += 1
            self._last_activity = time.monotonic()
        self._work.put(delivery)

    def _work_loop(self) -> None:
        while (delivery := self._work.get()) is not None:
            try:
                self._one(delivery)
            finally:
                with self._lock:
                    self._in_flight -= 1
                    self._last_activity = time.monotonic()

    def _one(self, delivery: Incoming) -> None:
        transport = self._transport
        if transport is None:
            return
        if delivery.generation != transport.generation:
            log.info("updateKeys delivery of a lost connection not handled: the broker redelivers it")
            return
        try:
            written = self.handle(delivery.body, dict(delivery.headers))
        except DecodeError as exc:
            self.rejected += 1
            log.error("updateKeys message rejected: %s", redact_text(str(exc)))
            transport.reject(delivery, requeue=False)
            return
        except KeyStoreError as exc:  # the store, not the message: it goes back to the queue, never dropped
            self.requeued += 1
            self._store_failures += 1
            delay = min(STORE_RETRY_MAX_SECONDS, STORE_RETRY_FIRST_SECONDS * 2 ** min(self._store_failures - 1, 10))
            log.warning(
                "the keys store cannot take an updateKeys now (%s): the message goes back to the queue in %g s",
                redact_text(str(exc)),
                delay,
            )
            self._sleep(delay)  # this thread only: nothing can be stored until the store answers
            transport.reject(delivery, requeue=True)
            return
        except Exception as exc:  # one bad message must not end the service
            self.rejected += 1
            log.error("updateKeys message rejected: unexpected %s: %s", type(exc).__name__, redact_text(str(exc)))
            log.debug("unexpected failure while handling an updateKeys message", exc_info=True)
            transport.reject(delivery, requeue=False)
            return
        self._store_failures = 0
        if written:
            self.stored += 1
        else:
            self.refused += 1
            log.info("updateKeys message older than the stored credential: not written")
        transport.ack(delivery)
