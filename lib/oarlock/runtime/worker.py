"""The message loop: in -> decode -> execute -> publish every event -> all confirmed -> ack/reject.

Nothing is lost: an input is acked only after every message it produced (data, error,
snapshot, updateKeys, rebound, httpReply) was confirmed by the broker. Events are published
the moment the function emits them, so confirms are pipelined while the function still
runs. What a function emits after its input was settled (past the time limit, from a thread it
left behind) is dropped, except an updateKeys or a dead-credential report: those carry a provider's
answer and are published on their own, outside any input's settlement. A publish that comes
back unroutable or nacked turns into an error event and a reject; a lost connection leaves the
input unsettled so the broker redelivers it; a redelivered messageId that this process already
finished is acked without running again.

This module is the settlement loop only. What an event becomes on the wire is
:mod:`oarlock.protocol.outgoing`; the broker is a :class:`~oarlock.amqp.types.Transport`
given to the worker (``AmqpTransport`` in ``oarlock run``, ``MemoryTransport`` in the unit
tests); each input's events arrive through one sink object (``JobSink``, :mod:`oarlock.runtime.jobs`) handed to the executor.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from oarlock.amqp.types import Incoming, Transport, now_ms
from oarlock.errors import (
    ConfigurationError,
    DecodeError,
    OarlockError,
    PublishError,
    TimeLimitExceeded,
    TransportError,
)
from oarlock.keys.platform_api import AccountsApi
from oarlock.protocol.crypto import MessageCipher
from oarlock.protocol.events import Event, EventName, error_payload
from oarlock.protocol.headers import OutgoingHeaders
from oarlock.protocol.message import Message
from oarlock.protocol.outgoing import InputView, OutgoingEncoder, protocol_version_of
from oarlock.protocol.settings import Settings
from oarlock.protocol.stepconfig import StepConfig
from oarlock.runtime.executor import FunctionRunner, UnloadableFunction, infrastructure_cause
from oarlock.runtime.jobs import Job, JobSink, first_failure
from oarlock.runtime.publishing import EventPublishing
from oarlock.runtime.workpool import WorkPool

log = logging.getLogger("oarlock.worker")
CONFIRM_TIMEOUT = 120.0
START_CHECK_SECONDS = 30.0
DEDUP_CAPACITY = 100_000
RETRY_LATER_FIRST_SECONDS = 1.0
RETRY_LATER_MAX_SECONDS = 30.0


class Worker(EventPublishing):
    def __init__(
        self,
        settings: Settings,
        runner: FunctionRunner | UnloadableFunction,
        step: StepConfig,
        transport: Transport,
        *,
        concurrency: int | None = None,
        burst: bool = False,
        grace_seconds: float | None = None,
        retry_later_seconds: tuple[float, float] = (RETRY_LATER_FIRST_SECONDS, RETRY_LATER_MAX_SECONDS),
        accounts_api: AccountsApi | None = None,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.step = step
        self.cfg = step.cfg
        self.snapshot: dict[str, Any] = dict(step.snapshot)
        self.cipher = MessageCipher.from_settings(settings)
        self.encoder = OutgoingEncoder(settings, self.cipher, is_passthrough=step.is_passthrough)
        self._outgoing_headers = OutgoingHeaders(settings)
        self.update_keys_routes = settings.routes_for(cfg_from_api=step.from_platform_api)
        self._accounts_api: AccountsApi | None = None
        if "api" in self.update_keys_routes:
            if not settings.api_uri:
                raise ConfigurationError(
                    "updateKeys goes to the platform API (ELASTICIO_UPDATE_KEYS_ROUTES) but ELASTICIO_API_URI is not set"
                )
            self._accounts_api = accounts_api or AccountsApi(settings.api_uri, settings.api_username, settings.api_key)
        self.concurrency = max(1, concurrency or settings.concurrency or settings.prefetch)
        self.burst = burst
        self.grace = settings.grace_seconds if grace_seconds is None else grace_seconds
        self.transport = transport
        self.pool: WorkPool[Incoming] = WorkPool(
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
        self._infrastructure_failures = 0  # in a row: the backoff before requeueing grows with it
        self._retry_first, self._retry_max = retry_later_seconds

    # -- lifecycle ---------------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def start(self) -> None:
        """Startup hooks, connect, consume: from here on deliveries are processed (on the transport's threads)."""
        if self.settings.startup_required:
            self.startup_data = self.runner.startup(self.cfg)
        self.runner.init(self.cfg)
        self.transport.start()
        if self._stop.is_set():
            return  # stopped while connecting (the transport gave up waiting for the broker): nothing to consume
        self._check_queue(self.settings.listen_messages_on)
        self._check_exchange(self.settings.publish_messages_to)
        self.transport.consume(self.settings.listen_messages_on, self.settings.prefetch, self._on_delivery)
        log.info(
            "consuming %s (prefetch %s, concurrency %s)",
            self.settings.listen_messages_on,
            self.settings.prefetch,
            self.concurrency,
            extra=self._log_context(),
        )

    def _check_queue(self, queue: str) -> None:
        """TransportError unless the input queue exists: a missing one would close the channel on every reconnect."""
        self._require(
            self.transport.message_count(queue),
            f"queue {queue} (ELASTICIO_LISTEN_MESSAGES_ON) cannot be consumed: it does not exist or is not accessible",
            unanswered=f"the broker did not answer within {START_CHECK_SECONDS:g} s whether queue {queue} exists",
        )

    def _check_exchange(self, exchange: str) -> None:
        """TransportError unless the exchange exists: a publish to a missing one closes the channel, and the input
        would be redelivered and run again on every reconnect."""
        if exchange:  # the default exchange always exists (and cannot be declared)
            missing = f"exchange {exchange} (ELASTICIO_PUBLISH_MESSAGES_TO) does not exist or is not accessible"
            self._require(self.transport.exchange_exists(exchange), missing, unanswered=missing)

    @staticmethod
    def _require(answer: Future[Any], missing: str, *, unanswered: str) -> None:
        """A passive declare's answer within START_CHECK_SECONDS, else TransportError(``missing``: the broker closed
        the channel instead of answering; ``unanswered``: it did not answer in time)."""
        try:
            answer.result(START_CHECK_SECONDS)
        except TransportError:
            raise TransportError(missing) from None
        except FutureTimeout:
            raise TransportError(unanswered) from None

    def run(self) -> int:
        """Start, process until stopped (or, with ``burst``, until the queue is empty), then shut down."""
        self.start()
        try:
            while not self._stop.wait(0.25):
                if self.burst and self._drained():
                    log.info("queue %s is empty: burst run finished", self.settings.listen_messages_on)
                    break
        finally:
            self.stop()
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

    def stop(self) -> None:
        """Stop consuming, let in-flight inputs finish within the grace period, shutdown hook, close."""
        with contextlib.suppress(FutureTimeout, TransportError):
            self.transport.stop_consuming().result(5)
        # what was delivered but not started goes back to the broker now, for the other workers: the grace
        # is for the calls already running, not for starting new ones
        for never_started in self.pool.shutdown():
            self._give_back(never_started)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            with self._lock:
                if self._inflight == 0:
                    break
            time.sleep(0.05)
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
    def _on_delivery(self, delivery: Incoming) -> None:
        with self._lock:
            self._inflight += 1
            self._last_activity = time.monotonic()
        try:
            self.pool.submit(delivery)
        except RuntimeError:  # stopping: a late delivery is not started any more
            self._give_back(delivery)

    def _give_back(self, delivery: Incoming) -> None:
        """A delivery this worker will not start: requeued at once (redelivered to another worker)."""
        with contextlib.suppress(TransportError):
            self.transport.reject(delivery, requeue=True)
        self._release(None)

    def _handle(self, delivery: Incoming) -> None:
        started = time.monotonic()
        job: Job | None = None
        try:
            job = self._prepare(delivery)
            if job is None:
                self._release(None)
                return
            message = job.view.message
            if message is not None:  # decoded: run the function, its events published as they come
                limit = self.settings.message_time_limit
                if limit is not None:
                    self.transport.call_later(limit, lambda: self._on_time_limit(job, started, limit))
                sink = JobSink(self, job)
                job.retry_later = self.runner.call(message, self.cfg, self._snapshot_copy(), sink=sink).retry_later
        except BaseException as exc:  # a function thread: nothing above it could settle the input
            if job is not None and not job.finish():
                return  # the time limit settled it already
            cause = infrastructure_cause(exc)
            if job is not None and cause is not None:  # the keys store, say: not the message's fault
                log.warning("processing failed because of %s: the input is requeued after a backoff", cause)
                job.retry_later = cause
                self._when_confirmed(job, lambda: self._leave_for_redelivery(job, started))
                return
            # a poison input (or a bug) must not loop: an error event naming what failed, then a reject
            log.exception("unexpected %s while processing a delivery: an error event and a reject", type(exc).__name__)
            failed = job if job is not None else self._unprepared(delivery)
            self._fail(failed, OarlockError(f"unexpected {type(exc).__name__} while processing the message"))
            self._when_confirmed(failed, lambda: self._on_confirmed(failed, started, retried=False))
            return
        if not job.finish():
            return  # the time limit settled it already; what the function emitted since was dropped
        if job.retry_later is not None:
            self._when_confirmed(job, lambda: self._leave_for_redelivery(job, started))
            return
        self._when_confirmed(job, lambda: self._on_confirmed(job, started, retried=False))

    # -- one input -----------------------------------------------------------------------------------
    def _prepare(self, delivery: Incoming) -> Job | None:
        """Register and decode the input (a decode error is published at once); None when already done."""
        incoming = delivery.headers  # the transport's own dict for this delivery: read, never changed
        head, tail = self._outgoing_headers.parts(incoming, start_ms=now_ms())
        view = InputView(
            incoming,
            head,
            tail,
            delivery.body,
            content_type=delivery.content_type,
            content_encoding=delivery.content_encoding,
            delivery_mode=delivery.delivery_mode,
        )
        job = Job(delivery, view)
        # only a broker redelivery can be a duplicate: distinct messages may share an id an upstream step chose
        if job.message_id and self._already_done(job.message_id, redelivered=delivery.redelivered):
            log.info(
                "redelivered message %s was already processed: acked without running it again",
                job.message_id,
                extra={"messageId": job.message_id},
            )
            self.transport.ack(delivery)
            return None
        try:
            if delivery.decode_error is not None:  # the transport could not read its AMQP properties
                raise DecodeError(f"the message's AMQP properties cannot be decoded: {delivery.decode_error}")
            version = incoming.get("protocolVersion")
            view.protocol_version = version if type(version) is int and version else protocol_version_of(incoming)
            view.content = self.cipher.decrypt(delivery.body, view.protocol_version)
            view.message = Message.from_dict(view.content)
            if incoming.get("reply_to") and "reply_to" not in view.message.headers:
                view.message.headers["reply_to"] = incoming["reply_to"]  # as sailor: the function sees where to reply
        except DecodeError as exc:
            log.error("cannot decode message: %s", exc, extra={"messageId": job.message_id})
            self._publish_event(job, Event(EventName.ERROR, error_payload(exc)))
        return job

    def _unprepared(self, delivery: Incoming) -> Job:
        """A job for a delivery whose preparation failed: only its messageId is trusted."""
        headers = delivery.headers if isinstance(delivery.headers, dict) else {}
        message_id = headers.get("messageId")
        incoming: dict[str, Any] = {"messageId": message_id} if isinstance(message_id, (str, int)) else {}
        head, tail = self._outgoing_headers.parts(incoming, start_ms=now_ms())
        return Job(delivery, InputView(incoming, head, tail, delivery.body))

    def _fail(self, job: Job, error: OarlockError) -> None:
        """Publish ``error`` as the input's error event; when even that fails, the input is only rejected."""
        try:
            self._publish_event(job, Event(EventName.ERROR, error_payload(error)))
        except Exception:
            log.exception("the error of message %s could not be published either: it is rejected", job.message_id)
        job.errored = True

    def _on_time_limit(self, job: Job, started: float, limit: float) -> None:
        """I/O thread: the function still runs after ``limit`` seconds: an error event, then a reject.

        Never blocks the I/O thread: while the function's thread holds the job (publishing an event,
        a PUT with its retries) the check comes back a moment later.
        """
        if not job.lock.acquire(blocking=False):
            self.transport.call_later(0.05, lambda: self._on_time_limit(job, started, limit))
            return
        try:
            if job.state != "running":
                return
            job.state = "timed_out"
            log.error(
                "message %s exceeded the time limit of %g s (ELASTICIO_MESSAGE_TIME_LIMIT): error and reject; "
                "the function's thread finishes on its own and what it emits from now on is dropped",
                job.message_id,
                limit,
                extra={"messageId": job.message_id},
            )
            error = TimeLimitExceeded(
                f"the function did not finish within the time limit of {limit:g} s (ELASTICIO_MESSAGE_TIME_LIMIT)"
            )
            self._publish_event(job, Event(EventName.ERROR, error_payload(error)))
        finally:
            job.lock.release()
        self._when_confirmed(job, lambda: self._on_confirmed(job, started, retried=False))

    def _leave_for_redelivery(self, job: Job, started: float) -> None:
        """An infrastructure failure (the keys store): requeue the input after a bounded, growing backoff."""
        with self._lock:
            self._infrastructure_failures += 1
            delay = min(self._retry_max, self._retry_first * 2 ** min(self._infrastructure_failures - 1, 16))
        log.warning(
            "message %s left for redelivery in %g s: %s",
            job.message_id,
            delay,
            job.retry_later,
            extra={"messageId": job.message_id},
        )
        self.transport.call_later(delay, lambda: self._complete(job, started, "requeue"))

    def _when_confirmed(self, job: Job, then: Callable[[], None]) -> None:
        """Call ``then`` (on the I/O thread) once every publish of the job is confirmed or failed."""
        self.transport.when_all(list(job.confirms), then)

    def _on_confirmed(self, job: Job, started: float, *, retried: bool) -> None:
        failure = first_failure(job.confirms)
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
            self._publish_event(job, Event(EventName.ERROR, error_payload(failure)))
            self._when_confirmed(job, lambda: self._on_confirmed(job, started, retried=True))
        else:
            log.error(
                "neither the output nor the error of message %s could be routed (%s): rejected",
                job.message_id,
                failure,
                extra={"messageId": job.message_id},
            )
            self._complete(job, started, "reject")

    def _complete(self, job: Job, started: float, settle: str | None) -> None:
        if settle == "ack":
            self.transport.ack(job.delivery)
        elif settle == "requeue":
            self.transport.reject(job.delivery, requeue=True)
        elif settle is not None:
            self.transport.reject(job.delivery, requeue=False)
        self.processed += 1
        if log.isEnabledFor(logging.INFO):
            log.info(
                "message processed: %s",
                settle or "left for redelivery",
                extra={
                    "messageId": job.message_id,
                    "threadId": job.view.head.get("threadId"),
                    "stepId": self.settings.step_id,
                    "function": self.settings.function,
                    "duration_ms": round((time.monotonic() - started) * 1000, 2),
                },
            )
        self._release(job.message_id, settled=settle in ("ack", "reject"))

    def _release(self, message_id: str | None, *, settled: bool = False) -> None:
        """The input is no longer in flight; ``settled`` (acked or rejected): its id is remembered as done."""
        with self._lock:
            event = self._active.pop(message_id, None) if message_id else None
            self._inflight -= 1
            self._last_activity = time.monotonic()
            if settled:
                self._infrastructure_failures = 0
                if message_id:
                    done = self._done
                    done[message_id] = None
                    if len(done) > DEDUP_CAPACITY:
                        done.popitem(last=False)
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

    def _snapshot_copy(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.snapshot)
