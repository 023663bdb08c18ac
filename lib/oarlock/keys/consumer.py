"""The platform side of updateKeys over RabbitMQ: consume, decrypt, persist (newest wins), then ack.

:class:`KeysService` consumes one or more queues, each through its own
:class:`~oarlock.amqp.transport.AmqpTransport` (reconnect with backoff when the broker drops the
connection, no pika here). A transport delivers on its I/O thread; every delivery is handed to
one worker thread, which decrypts it, writes it to the store and settles it: ack once the store
wrote it (or refused it as older), reject without requeue when it cannot be decoded or is not a
valid update (a version that is not a finite integer, or later than now + 1 day), reject WITH
requeue after a growing pause (0.5 s doubling to 30 s) when the store cannot be reached or
written: an update is never dropped because the store blipped. A delivery of a connection that
was lost before it was handled is left alone: the broker redelivers it on the new connection.

A message whose payload has ``"type": "credentialInvalid"`` is a worker's report that a
credential is dead (:mod:`oarlock.keys.alerts`): it is recorded as the account's state, handed to
the :class:`~oarlock.keys.alerts.Alerter` and acked after the record was committed; malformed, it
is rejected like a malformed update. :meth:`KeysService.publish_json` publishes (encrypted,
confirmed) on the first queue's connection: the alerts, and the keep-alive's updateKeys.

Log lines: one JSON object at start (queues, store with its password masked, HTTP address,
keep-alive on or off), one per update (account, version, stored or refused as older), one per
rejected message (naming the account when the payload had one).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from queue import SimpleQueue
from types import FrameType
from typing import Any

from oarlock.amqp.failures import broker_name
from oarlock.amqp.metered import consuming
from oarlock.amqp.tls import AmqpTls
from oarlock.amqp.transport import AmqpTransport
from oarlock.amqp.types import Incoming, Outgoing, SignedByte
from oarlock.errors import DecodeError, KeyStoreError, TransportError
from oarlock.keys.alerts import Alerter, apply_state_report, is_state_report
from oarlock.keys.base import KeyStore, apply_update_keys, safe_url
from oarlock.protocol.crypto import MessageCipher
from oarlock.protocol.outgoing import protocol_version_of
from oarlock.redact import redact_text

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
log = logging.getLogger("oarlock.keys.service")
STORE_RETRY_FIRST_SECONDS = 0.5
STORE_RETRY_MAX_SECONDS = 30.0


class KeysService:
    """Consumes updateKeys messages (and credentialInvalid reports) from ``queue`` and persists them in ``store``.

    ``queue``: one queue name, or several (each consumed on a connection of its own).
    ``connect_timeout``: how long :meth:`run` tries to reach the broker at start before it gives up
    with a TransportError. ``quiet_seconds``: with ``burst``, how long nothing must have been
    delivered before the queues are asked whether they are empty. ``grace_seconds``: on stop, how
    long the messages already delivered may take to be handled (the broker redelivers the others).
    ``alerter``: told of every state change a report made. ``store_name``, ``http_url``,
    ``keepalive``: what the start line says (the store's URL is shown with its password masked).
    """

    def __init__(
        self,
        store: KeyStore,
        amqp_uri: str,
        queue: str | Sequence[str],
        cipher: MessageCipher,
        *,
        prefetch: int = 20,
        connect_timeout: float = 10.0,
        reconnect_max_seconds: float = 30.0,
        quiet_seconds: float = 0.5,
        grace_seconds: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        alerter: Alerter | None = None,
        protocol_version: int = 1,
        store_name: str | None = None,
        http_url: str | None = None,
        keepalive: bool = False,
    ) -> None:
        self.store = store
        self.amqp_uri = amqp_uri
        self.queues = [queue] if isinstance(queue, str) else list(dict.fromkeys(queue))
        if not self.queues:
            raise ValueError("KeysService needs at least one queue")
        self.queue = self.queues[0]
        self.cipher = cipher
        self.prefetch = prefetch
        self.connect_timeout = connect_timeout
        self.reconnect_max_seconds = reconnect_max_seconds
        self.quiet_seconds = quiet_seconds
        self.grace_seconds = grace_seconds
        self.alerter = alerter
        self.protocol_version = protocol_version
        self.store_name = store_name
        self.http_url = http_url
        self.keepalive = keepalive
        self.stored = 0
        self.refused = 0
        self.rejected = 0
        self.requeued = 0  # left for redelivery because the store could not take them
        self.reports = 0  # credentialInvalid reports recorded
        self._store_failures = 0  # in a row: the pause before requeueing grows with it
        self._sleep = sleep
        self._stopping = False  # a plain flag: set from a signal handler
        self._stop_event = threading.Event()  # the same, for a connect still under way at start
        self._closed = False  # the connections are closed (or closing): nothing more is published
        self._lock = threading.Lock()
        self._in_flight = 0  # delivered, not yet handled
        self._last_activity = time.monotonic()
        self._work: SimpleQueue[tuple[AmqpTransport, Incoming] | None] = SimpleQueue()
        self._transport: AmqpTransport | None = None  # the first queue's: it also publishes
        self._transports: list[AmqpTransport] = []
        self.started = threading.Event()  # consuming every queue

    def stop(self) -> None:
        """Stop after the messages already delivered (any thread, or a signal handler)."""
        self._stopping = True
        self._stop_event.set()

    def decode(self, body: bytes, headers: dict[str, Any]) -> dict[str, Any]:
        """The decrypted payload of one message; DecodeError when it cannot be read or is not an object."""
        payload = self.cipher.decrypt(body, protocol_version_of(headers))
        if not isinstance(payload, dict):
            raise DecodeError("an updateKeys message must be a JSON object")
        return payload

    def handle(self, body: bytes, headers: dict[str, Any]) -> bool:
        """Decode and persist one updateKeys; True if it was written, False if older; raises on bad input."""
        return apply_update_keys(self.store, self.decode(body, headers))

    def consuming(self) -> bool:
        """Connected and consuming every queue on the current connections (any thread; reads flags only)."""
        transports = list(self._transports)
        return (
            self.started.is_set()
            and not self._stopping
            and len(transports) == len(self.queues)
            and all(consuming(transport) for transport in transports)
        )

    def publish_json(self, exchange: str, routing_key: str, value: Any, *, timeout: float = 30.0) -> None:
        """Publish ``value`` encrypted (``protocolVersion`` header) and wait for the broker's confirm.

        TransportError when not connected, unconfirmed within ``timeout``, returned or nacked.
        """
        transport = self._transport
        if transport is None:
            raise TransportError("the keys service is not connected to the broker")
        body = self.cipher.encrypt(value, self.protocol_version)
        headers = {"messageId": str(uuid.uuid4()), "protocolVersion": SignedByte(self.protocol_version)}
        if self._closed:
            raise TransportError("the keys service is stopping: not published")
        confirm = transport.publish(Outgoing(exchange, routing_key, body, headers))
        answered = threading.Event()
        transport.when_all([confirm], answered.set)
        deadline = time.monotonic() + timeout
        while not answered.wait(0.2):
            if self._closed:
                raise TransportError("the keys service stopped before the broker confirmed the publish")
            if time.monotonic() > deadline:
                raise TransportError(f"no confirm from the broker within {timeout:g} s for {exchange}/{routing_key}")
        if confirm.error is not None:
            raise confirm.error

    # -- lifecycle ---------------------------------------------------------------------------------
    def run(self, *, burst: bool = False) -> int:
        """Consume until stopped (SIGTERM, :meth:`stop`) or, with ``burst``, until the queues are empty.

        Returns how many credentials were written. TransportError when the broker cannot be
        reached at start or a queue cannot be consumed, ConfigurationError for an invalid URI.
        """
        worker = threading.Thread(target=self._work_loop, name="oarlock-keys", daemon=True)
        # SIGTERM stops cleanly; a handler can only be installed from the main thread
        installed = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} if installed else {}
        if installed:
            for sig in STOP_SIGNALS:  # SIGINT too: Ctrl-C or a supervisor's stop is a clean stop, not "Aborted!"
                signal.signal(sig, self._on_term)
        try:
            for queue in self.queues:
                transport = self._connect(queue)
                if self._stopping:  # stopped while connecting: nothing to consume, not a failure
                    transport.close()
                    return self.stored
                self._transports.append(transport)
                self._transport = self._transport or transport
                self._check_queue(transport, queue)
            worker.start()
            for queue, transport in zip(self.queues, self._transports, strict=True):
                transport.consume(queue, self.prefetch, functools.partial(self._on_delivery, transport))
            self.started.set()
            self._announce()
            while not self._stopping:
                time.sleep(0.1)
                if burst and self._drained():
                    log.info("queue %s is empty: burst run finished", ", ".join(self.queues))
                    break
        finally:
            for sig, handler in previous.items():
                if handler is not None:
                    signal.signal(sig, handler)
            for transport in self._transports:
                with contextlib.suppress(TransportError, TimeoutError):
                    transport.stop_consuming().result(5)
            if worker.is_alive():
                self._work.put(None)  # after what was delivered: those are handled first
                worker.join(self.grace_seconds)
            if self.alerter is not None:  # the alerts of what was handled leave on these connections
                self.alerter.wait_idle(min(self.grace_seconds, 10.0))
            self._closed = True
            for transport in self._transports:
                transport.close()
            if self.started.is_set():
                log.info("keys service stopped: %s", json.dumps(self.counts()), extra={"event": "keys_service_stopped"})
        return self.stored

    def counts(self) -> dict[str, int]:
        """What the service did: the summary ``keys serve`` prints (``reports`` only when there were any)."""
        counts = {"stored": self.stored, "refused": self.refused, "rejected": self.rejected}
        if self.reports:
            counts["reports"] = self.reports
        return counts

    def _announce(self) -> None:
        details = {
            "queue": self.queue if len(self.queues) == 1 else list(self.queues),
            "store": safe_url(self.store_name) if self.store_name else repr(self.store),
            "broker": broker_name(self.amqp_uri),
            "http": self.http_url,
            "keepalive": self.keepalive,
            "alerts": self.alerter.destinations if self.alerter is not None else [],
        }
        log.info("keys service started: %s", json.dumps(details), extra={"event": "keys_service_started"})

    def _connect(self, queue: str) -> AmqpTransport:
        """ConfigurationError for a bad URI or TLS setting; TransportError naming the broker when it cannot be
        reached (pika's lines are folded into the transport's, TLS comes from ELASTICIO_AMQP_TLS_*)."""
        transport = AmqpTransport(
            self.amqp_uri,
            name=f"oarlock keys serve {queue}",
            reconnect_max_seconds=self.reconnect_max_seconds,
            tls=AmqpTls.from_env(os.environ),
            stop=self._stop_event,
        )
        transport.start(self.connect_timeout)
        return transport

    def _check_queue(self, transport: AmqpTransport, queue: str) -> None:
        """TransportError unless the queue exists: a missing one would close the channel on every reconnect."""
        where = broker_name(self.amqp_uri)
        try:
            transport.message_count(queue).result(self.connect_timeout)
        except TransportError:  # the broker closed the channel instead of answering
            raise TransportError(
                f"queue {queue} cannot be consumed on the broker at {where}: it does not exist or is not accessible"
            ) from None
        except TimeoutError:
            raise TransportError(
                f"the broker at {where} did not answer within {self.connect_timeout:g} s whether queue {queue} exists"
            ) from None

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.stop()

    def _drained(self) -> bool:
        with self._lock:
            if self._in_flight or time.monotonic() - self._last_activity < self.quiet_seconds:
                return False
        try:
            counts = [t.message_count(q).result(10) for q, t in zip(self.queues, self._transports, strict=True)]
        except (TransportError, TimeoutError):
            return False
        with self._lock:
            return not any(counts) and self._in_flight == 0

    # -- deliveries --------------------------------------------------------------------------------
    def _on_delivery(self, transport: AmqpTransport, delivery: Incoming) -> None:
        """I/O thread: hand over, never block."""
        with self._lock:
            self._in_flight += 1
            self._last_activity = time.monotonic()
        self._work.put((transport, delivery))

    def _work_loop(self) -> None:
        while (item := self._work.get()) is not None:
            try:
                self._one(*item)
            finally:
                with self._lock:
                    self._in_flight -= 1
                    self._last_activity = time.monotonic()

    def _one(self, transport: AmqpTransport, delivery: Incoming) -> None:
        if delivery.generation != transport.generation:
            log.info("updateKeys delivery of a lost connection not handled: the broker redelivers it")
            return
        account: str | None = None
        what = "updateKeys message"
        try:
            payload = self.decode(delivery.body, dict(delivery.headers))
            named = payload.get("account")
            account = named[:512] if isinstance(named, str) and named else None
            if is_state_report(payload):
                what = "credentialInvalid report"
                self._report(payload)
            else:
                self._update(payload)
        except DecodeError as exc:
            self._reject(transport, delivery, what, account, redact_text(str(exc)))
            return
        except KeyStoreError as exc:  # the store, not the message: it goes back to the queue, never dropped
            self.requeued += 1
            self._store_failures += 1
            delay = min(STORE_RETRY_MAX_SECONDS, STORE_RETRY_FIRST_SECONDS * 2 ** min(self._store_failures - 1, 10))
            log.warning(
                "the keys store cannot take a %s now (%s): the message goes back to the queue in %g s",
                what,
                redact_text(str(exc)),
                delay,
                extra={"account": account} if account else None,
            )
            self._sleep(delay)  # this thread only: nothing can be stored until the store answers
            transport.reject(delivery, requeue=True)
            return
        except Exception as exc:  # one bad message must not end the service
            reason = f"unexpected {type(exc).__name__}: {redact_text(str(exc))}"
            log.debug("unexpected failure while handling an updateKeys message", exc_info=True)
            self._reject(transport, delivery, what, account, reason)
            return
        self._store_failures = 0
        transport.ack(delivery)

    def _update(self, payload: dict[str, Any]) -> None:
        if payload.get("persist") is False:
            self.refused += 1
            log.info("updateKeys marked persist: false: not written")
            return
        written = apply_update_keys(self.store, payload)
        account, version = payload["account"], payload["version"]
        status = "stored" if written else "refused as older"
        if written:
            self.stored += 1
        else:
            self.refused += 1
        log.info(
            "updateKeys of account %s version %s: %s",
            account,
            version,
            status,
            extra={"account": account, "version": version, "status": status},
        )

    def _report(self, payload: dict[str, Any]) -> None:
        change = apply_state_report(self.store, payload)  # committed when it returns
        self.reports += 1
        account = payload["account"]
        if change is None:
            log.info(
                "credentialInvalid report of account %s about an older version or another credential than "
                "the stored one: ignored",
                account,
                extra={"account": account, "version": payload.get("version")},
            )
            return
        current = change.current
        log.info(
            "credentialInvalid report of account %s version %s: %s%s",
            account,
            current.version,
            current.state,
            " (entered)" if change.entered else " (already)",
            extra={"account": account, "version": current.version, "status": current.state},
        )
        if self.alerter is not None:
            try:
                self.alerter.notify(change)
            except Exception as exc:  # the alert's failure is the alerter's; the report is recorded
                log.error("account %s: alert failed: %s", account, type(exc).__name__, extra={"account": account})

    def _reject(
        self, transport: AmqpTransport, delivery: Incoming, what: str, account: str | None, reason: str
    ) -> None:
        self.rejected += 1
        if account:
            log.error("%s rejected (account %s): %s", what, account, reason, extra={"account": account})
        else:
            log.error("%s rejected: %s", what, reason)
        transport.reject(delivery, requeue=False)
