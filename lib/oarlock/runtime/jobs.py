"""One input being processed (:class:`Job`) and the sink its call's events arrive through (:class:`JobSink`).

A job is *running* while its function runs, then *finished* (the function returned) or
*timed_out* (the time limit settled the input first); a *detached* job carries an update
published after its input was settled. The sink publishes what the call emits at once, for its
input, through the worker (a :class:`JobPublisher`); after the input was settled it drops what
it gets, except an updateKeys or a dead-credential report, which carry a provider's answer and
are published on their own.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from oarlock.amqp.types import Confirm, Incoming
from oarlock.errors import OarlockError
from oarlock.protocol.events import Event, EventName
from oarlock.protocol.outgoing import InputView

log = logging.getLogger("oarlock.worker")


class JobPublisher(Protocol):
    """What a sink needs of the worker."""

    def _publish_event(self, job: Job, event: Event) -> None: ...

    def _publish_detached(self, job: Job, event: Event) -> None: ...


class Job:
    """One input being processed (one per message: a plain slotted class, cheap to build)."""

    __slots__ = ("confirms", "delivery", "errored", "lock", "message_id", "retry_later", "state", "view")

    def __init__(self, delivery: Incoming, view: InputView) -> None:
        self.delivery, self.view = delivery, view
        self.confirms: list[Confirm] = []
        self.errored = False
        self.retry_later: OarlockError | None = None
        value = view.incoming.get("messageId")
        self.message_id: str | None = str(value) if value else None
        #: running -> finished (the function returned) or timed_out (the time limit settled the input first);
        #: detached: the job of an update published after its input was settled
        self.state = "running"
        self.lock = threading.Lock()

    def finish(self) -> bool:
        """Mark the function as returned; False when the time limit already settled the input."""
        with self.lock:
            if self.state == "timed_out":
                return False
            self.state = "finished"
            return True


class JobSink:
    """The sink of one input: every event the call emits is published at once for this input."""

    __slots__ = ("_job", "_worker")

    def __init__(self, worker: JobPublisher, job: Job) -> None:
        self._worker, self._job = worker, job

    def emit(self, event: Event) -> None:
        job = self._job
        with job.lock:
            if job.state == "running":
                self._worker._publish_event(job, event)
                return
        # after the time limit, or from a thread the function left behind after it returned
        why = "timed out" if job.state == "timed_out" else "finished"
        if event.name is EventName.UPDATE_KEYS or event.name is EventName.CREDENTIAL_INVALID:
            # a provider's answer is never dropped (a rotated refresh token would exist in memory only)
            log.warning("%s emitted after its input was %s: published on its own", event.name.value, why)
            self._worker._publish_detached(job, event)
            return
        log.warning("event %s emitted after its input was %s: dropped", event.name.value, why)


def first_failure(confirms: list[Confirm]) -> BaseException | None:
    for confirm in confirms:
        if confirm.error is not None:
            return confirm.error
    return None
