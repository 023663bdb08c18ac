"""The message loop: in -> decode -> execute -> publish every event -> all confirmed -> ack/reject.

Nothing is lost: an input is acked only after every message it produced (data, error,
snapshot, updateKeys, rebound, httpReply) was confirmed by the broker. Events are published
the moment the function emits them, so confirms are pipelined while the function still
runs. A publish that comes back unroutable or nacked turns into an error event and a reject;
a lost connection leaves the input unsettled so the broker redelivers it; a redelivered
messageId that this process already finished is acked without running again.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import requests

from oarlock.credentials.redact import redact, redact_text
from oarlock.crypto import MessageCipher, dumps
from oarlock.errors import DecodeError, EncodeError, OarlockError, PublishError, TransportError
from oarlock.events import Event, EventName, error_payload
from oarlock.executor import FunctionRunner, UnloadableFunction
from oarlock.message import Message, new_id
from oarlock.settings import Settings
from oarlock.stepconfig import StepConfig
from oarlock.transport.amqp import AmqpTransport, Confirm, Delivery, now_ms, properties
from oarlock.transport.fieldtable import FastProperties
from oarlock.transport.headers import OutgoingHeaders, routing_key_override
from oarlock.workpool import WorkPool

log = logging.getLogger("oarlock.worker")
CONFIRM_TIMEOUT = 120.0
DEDUP_CAPACITY = 100_000


@dataclass
class _Job:
    """One input being processed."""

    delivery: Delivery
    incoming: dict[str, Any]
    base: dict[str, Any]
    content: Any = None
    message: Message | None = None
    confirms: list[Confirm] = field(default_factory=list)
    errored: bool = False
    message_id: str | None = field(init=False)

    def __post_init__(self) -> None:
        value = self.incoming.get("messageId")
        self.message_id = str(value) if value else None


class Worker:
    def __init__(
        self,
        settings: Settings,
        runner: FunctionRunner | UnloadableFunction,
        step: StepConfig,
        *,
        concurrency: int | None = None,
        burst: bool = False,
        grace_seconds: float | None = None,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.step = step
        self.cfg = step.cfg
        self.snapshot: dict[str, Any] = dict(step.snapshot)
        self.cipher = MessageCipher(settings.message_crypto_password, settings.message_crypto_iv)
        self._outgoing_headers = OutgoingHeaders(settings)
        self.concurrency = max(1, concurrency or settings.concurrency or settings.prefetch)
        self.burst = burst
        self.grace = settings.grace_seconds if grace_seconds is None else grace_seconds
        self.transport = AmqpTransport(
            settings.amqp_uri, name=f"oarlock {settings.function} {settings.step_id} {settings.container_id}"
        )
        self.pool: WorkPool[Delivery] = WorkPool(
            self.concurrency, self._handle, name="oarlock-fn", schedule=self.transport.call_later
        )
        self._lock = threading.Lock()
        self._inflight = 0
        self._active: dict[str, threading.Event | None] = {}  # an Event only once a redelivered copy waits
        self._done: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._stop = threading.Event()
        self._last_activity = time.monotonic()
        self.processed = 0
        self.startup_data: Any = None
        self._publishers: dict[EventName, Callable[[_Job, Event], None]] = {
            EventName.DATA: self._publish_data,
            EventName.ERROR: self._publish_error,
            EventName.REBOUND: self._publish_rebound,
            EventName.SNAPSHOT: self._publish_snapshot,
            EventName.UPDATE_SNAPSHOT: self._publish_snapshot,
            EventName.UPDATE_KEYS: self._publish_update_keys,
            EventName.HTTP_REPLY: self._publish_http_reply,
        }

    # -- lifecycle ---------------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        if self.settings.startup_required:
            self.startup_data = self.runner.startup(self.cfg)
        self.runner.init(self.cfg)
        self.transport.start()
        self.transport.consume(self.settings.listen_messages_on, self.settings.prefetch, self._on_delivery)
        log.info(
            "consuming %s (prefetch %s, concurrency %s)",
            self.settings.listen_messages_on,
            self.settings.prefetch,
            self.concurrency,
            extra=self._log_context(),
        )
        try:
            while not self._stop.wait(0.25):
                if self.burst and self._drained():
                    log.info("queue %s is empty: burst run finished", self.settings.listen_messages_on)
                    break
        finally:
            self._shutdown()
        return 0

    def _drained(self) -> bool:
        with self._lock:
            if self._inflight or time.monotonic() - self._last_activity < 0.5:
                return False
        try:
            count = self.transport.message_count(self.settings.listen_messages_on).result(10)
        except (TransportError, FutureTimeout):
            return False
        with self._lock:
            return count == 0 and self._inflight == 0

    def _shutdown(self) -> None:
        with contextlib.suppress(FutureTimeout, TransportError):
            self.transport.stop_consuming().result(5)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            with self._lock:
                if self._inflight == 0:
                    break
            time.sleep(0.05)
        for _never_started in self.pool.shutdown():  # unsettled: the broker redelivers them after the close
            self._release(None)
        if self.settings.hook_shutdown:
            try:
                self.runner.shutdown(self.cfg, self.startup_data)
            except OarlockError as exc:
                log.error("%s", exc)
        self.transport.close()
        log.info(
            "worker stopped after %s messages (%s of at most %s function threads were needed)",
            self.processed,
            self.pool.threads,
            self.concurrency,
            extra=self._log_context(),
        )

    def _log_context(self) -> dict[str, Any]:
        return {"stepId": self.settings.step_id, "function": self.settings.function}

    # -- deliveries (I/O thread) -------------------------------------------------------------------
    def _on_delivery(self, delivery: Delivery) -> None:
        with self._lock:
            self._inflight += 1
            self._last_activity = time.monotonic()
        self.pool.submit(delivery)

    def _handle(self, delivery: Delivery) -> None:
        started = time.monotonic()
        job: _Job | None = None
        try:
            job = self._process(delivery)
        except Exception:
            log.exception("unexpected failure while processing a delivery: it stays unsettled for redelivery")
            message_id = (delivery.properties.headers or {}).get("messageId")
            self._release(str(message_id) if message_id else None)
            return
        if job is None:
            self._release(None)
            return
        self._when_confirmed(job, lambda: self._on_confirmed(job, started, retried=False))

    # -- one input -----------------------------------------------------------------------------------
    def _process(self, delivery: Delivery) -> _Job | None:
        """Decode and run the function (events are published as they come); None when already done."""
        incoming = dict(delivery.properties.headers or {})
        job = _Job(delivery, incoming, self._outgoing_headers.for_input(incoming, start_ms=now_ms()))
        # only a broker redelivery can be a duplicate: distinct messages may share an id an upstream step chose
        if job.message_id and self._already_done(job.message_id, redelivered=delivery.redelivered):
            log.info(
                "redelivered message %s was already processed: acked without running it again",
                job.message_id,
                extra={"messageId": job.message_id},
            )
            self.transport.ack(delivery)
            return None
        version = int(job.incoming.get("protocolVersion") or 1)
        try:
            job.content = self.cipher.decrypt(job.delivery.body, version)
            job.message = Message.from_dict(job.content)
        except DecodeError as exc:
            log.error("cannot decode message: %s", exc, extra={"messageId": job.message_id})
            self._emit(job, Event(EventName.ERROR, error_payload(exc)))
            return job
        self.runner.call(job.message, self.cfg, self._snapshot_copy(), sink=lambda e: self._emit(job, e))
        return job

    def _when_confirmed(self, job: _Job, then: Callable[[], None]) -> None:
        """Call ``then`` (on the I/O thread) once every publish of the job is confirmed or failed."""
        self.transport.when_all(list(job.confirms), then)

    def _on_confirmed(self, job: _Job, started: float, *, retried: bool) -> None:
        failure = _first_failure(job.confirms)
        if failure is None:
            self._complete(job, started, "reject" if job.errored else "ack")
        elif not isinstance(failure, PublishError):
            log.warning(
                "confirms lost (%s): the input stays unsettled and will be redelivered",
                failure,
                extra={"messageId": job.message_id},
            )
            self._complete(job, started, None)
        elif not retried:
            # an output came back unroutable or was nacked: an error of this input, never a silent drop
            job.confirms = []
            self._emit(job, Event(EventName.ERROR, error_payload(failure)))
            self._when_confirmed(job, lambda: self._on_confirmed(job, started, retried=True))
        else:
            log.error(
                "neither the output nor the error of message %s could be routed (%s): rejected",
                job.message_id,
                failure,
                extra={"messageId": job.message_id},
            )
            self._complete(job, started, "reject")

    def _complete(self, job: _Job, started: float, settle: str | None) -> None:
        if settle == "ack":
            self.transport.ack(job.delivery)
        elif settle is not None:
            self.transport.reject(job.delivery, requeue=False)
        if settle is not None:
            self._remember(job.message_id)
        self.processed += 1
        if log.isEnabledFor(logging.INFO):
            log.info(
                "message processed: %s",
                settle or "left for redelivery",
                extra={
                    "messageId": job.message_id,
                    "threadId": job.base.get("threadId"),
                    "stepId": self.settings.step_id,
                    "function": self.settings.function,
                    "duration_ms": round((time.monotonic() - started) * 1000, 2),
                },
            )
        self._release(job.message_id)

    def _release(self, message_id: str | None) -> None:
        with self._lock:
            event = self._active.pop(message_id, None) if message_id else None
            self._inflight -= 1
            self._last_activity = time.monotonic()
        if event is not None:
            event.set()

    def _already_done(self, message_id: str, *, redelivered: bool) -> bool:
        """Register the input as in flight; for a broker redelivery, wait for a running copy and say if it finished."""
        while True:
            with self._lock:
                if redelivered and message_id in self._done:
                    return True
                if not redelivered or message_id not in self._active:
                    self._active.setdefault(message_id, None)
                    return False
                waiting = self._active[message_id]
                if waiting is None:
                    waiting = self._active[message_id] = threading.Event()
            waiting.wait(CONFIRM_TIMEOUT)

    def _remember(self, message_id: str | None) -> None:
        if not message_id:
            return
        with self._lock:
            self._done[message_id] = None
            while len(self._done) > DEDUP_CAPACITY:
                self._done.popitem(last=False)

    def _snapshot_copy(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.snapshot)

    # -- events -> AMQP ----------------------------------------------------------------------------
    def _emit(self, job: _Job, event: Event) -> None:
        handler = self._publishers.get(event.name)
        if handler is None:
            return
        try:
            handler(job, event)
        except EncodeError as exc:
            self._publish_error(job, Event(EventName.ERROR, error_payload(exc)))

    def _send(
        self, job: _Job, routing_key: str, body: bytes, headers: dict[str, Any], *, expiration: str | None = None
    ) -> None:
        props = properties(headers, persistent=self.settings.persistent_messages, expiration=expiration)
        job.confirms.append(self.transport.publish(self.settings.publish_messages_to, routing_key, body, props))

    def _headers(self, job: _Job, *, message_id: str | None = None, end: bool = False) -> dict[str, Any]:
        headers = dict(job.base)
        headers["messageId"] = message_id or new_id()
        if end:
            headers["end"] = now_ms()
        return headers

    def _check_size(self, body: bytes, what: str) -> None:
        limit = self.settings.outgoing_message_size_limit
        if len(body) > limit:
            raise EncodeError(
                f"outgoing {what} message is {len(body)} bytes, over the limit of {limit} bytes "
                "(ELASTICIO_OUTGOING_MESSAGE_SIZE_LIMIT)"
            )

    def _publish_data(self, job: _Job, event: Event) -> None:
        # a shallow copy with its own headers: popping the routing-key header must not touch the function's object
        emitted: Message = event.payload
        message = Message(
            emitted.body, dict(emitted.headers), emitted.attachments, emitted.id, emitted.passthrough, emitted.extra
        )
        routing_key = routing_key_override(message.headers) or self.settings.data_routing_key
        if self.step.is_passthrough and job.message is not None:
            incoming = job.message.to_dict()
            previous = incoming.pop("passthrough", None) or {}
            message.passthrough = {**previous, self.settings.step_id: incoming}
        body = self.cipher.encrypt(message.to_dict(), self.settings.protocol_version)
        self._check_size(body, "data")
        self._send(job, routing_key, body, self._headers(job, message_id=message.id, end=True))

    def _publish_error(self, job: _Job, event: Event) -> None:
        job.errored = True
        error = redact(event.payload)
        encrypted_error = self.cipher.encrypt(error, 1).decode()
        payload: dict[str, Any] = {"error": encrypted_error}
        # as sailor: the original body as it came for protocol 1 (base64 text), re-encrypted as base64 for 2
        incoming_version = int(job.incoming.get("protocolVersion") or 1)
        if incoming_version >= 2 and job.content is not None:
            payload["errorInput"] = self.cipher.encrypt(job.content, 1).decode()
        elif job.delivery.body:
            payload["errorInput"] = _as_text(job.delivery.body)
        headers = self._headers(job, end=True)
        self._send(job, self.settings.error_routing_key, dumps(payload).encode(), headers)
        reply_to = job.incoming.get("reply_to")
        if reply_to and not self.settings.no_error_replies:
            reply_headers = {**self._headers(job), "x-eio-error-response": True}
            self._send(job, str(reply_to), encrypted_error.encode(), reply_headers)

    def _publish_rebound(self, job: _Job, event: Event) -> None:
        iteration = int(job.incoming.get("reboundIteration") or 0) + 1
        if iteration > self.settings.rebound_limit:
            self._publish_error(
                job,
                Event(
                    EventName.ERROR,
                    {
                        "name": "Error",
                        "message": "Rebound limit exceeded",
                        "stack": "",
                    },
                ),
            )
            return
        expiration = str(2 ** (iteration - 1) * self.settings.rebound_initial_expiration)
        # the outgoing header set (a new messageId, parentMessageId = this input) like sailor, but the body is the
        # original bytes, so its protocolVersion is the incoming one
        headers = {
            **self._headers(job),
            "protocolVersion": int(job.incoming.get("protocolVersion") or 1),
            "reboundIteration": iteration,
            "reboundReason": _rebound_reason(event.payload),
        }
        original = job.delivery.properties
        props = FastProperties(
            content_type=original.content_type or "application/json",
            content_encoding=original.content_encoding or "utf8",
            headers=headers,
            delivery_mode=original.delivery_mode or (2 if self.settings.persistent_messages else 1),
            expiration=expiration,
        )
        job.confirms.append(
            self.transport.publish(
                self.settings.publish_messages_to, self.settings.rebound_routing_key, job.delivery.body, props
            )
        )

    def _publish_snapshot(self, job: _Job, event: Event) -> None:
        with self._lock:
            if event.name is EventName.SNAPSHOT:
                self.snapshot = dict(event.payload)
            else:
                self.snapshot.update(event.payload)
        headers = {**self._headers(job), "snapshotEvent": event.name.value}
        self._send(job, self.settings.snapshot_routing_key, dumps(event.payload).encode(), headers)

    def _publish_update_keys(self, job: _Job, event: Event) -> None:
        body = self.cipher.encrypt(event.payload, self.settings.protocol_version)
        self._send(job, self.settings.update_keys_routing_key, body, self._headers(job))
        if self.settings.update_keys_via_api and event.payload.get("persist") is not False:
            self._put_keys_via_api(event.payload)

    def _put_keys_via_api(self, payload: dict[str, Any]) -> None:
        settings = self.settings
        if not settings.api_uri:
            return
        url = f"{settings.api_uri.rstrip('/')}/v1/accounts/{payload.get('account')}"
        try:
            answer = requests.put(
                url,
                json={"keys": {"oauth": payload.get("oauth")}},
                auth=(settings.api_username or "", settings.api_key or ""),
                timeout=30,
            )
            if answer.status_code >= 400:
                log.error("PUT %s answered %s: the update goes over AMQP only", url, answer.status_code)
        except requests.RequestException as exc:
            log.error("PUT %s failed (%s): the update goes over AMQP only", url, type(exc).__name__)

    def _publish_http_reply(self, job: _Job, event: Event) -> None:
        reply_to = job.incoming.get("reply_to")
        if not reply_to:
            raise EncodeError("httpReply needs the incoming message to carry a reply_to header")
        body = self.cipher.encrypt(event.payload, 1)
        self._check_size(body, "httpReply")
        self._send(job, str(reply_to), body, self._headers(job))


def _first_failure(confirms: list[Confirm]) -> BaseException | None:
    for confirm in confirms:
        if confirm.error is not None:
            return confirm.error
    return None


def _rebound_reason(payload: Any) -> str:
    if isinstance(payload, Message):
        body = payload.body
        if isinstance(body, dict) and body.get("message"):
            return redact_text(str(body["message"]))
        if isinstance(body, str):
            return redact_text(body)
    return "rebound"


def _as_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(body).decode()
