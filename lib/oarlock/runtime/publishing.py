"""Events -> the transport, for one input (the worker's half that turns what a call emits into publishes).

What an event becomes on the wire is :mod:`oarlock.protocol.outgoing`; this mixin publishes it on
the worker's transport and records each publish's Confirm on the input's :class:`~oarlock.runtime.jobs.Job`
(the settlement loop, :mod:`oarlock.runtime.worker`, acks or rejects once they are all answered):

- data and error events: encoded and published; a message that cannot be encoded is an error;
- snapshots: encoded first, then what was encoded is applied to the worker's snapshot (so it only
  ever holds JSON);
- updateKeys: on every route the deployment has (AMQP, the platform's account PUT) before the ack;
  one emitted after its input was settled goes out on its own (:meth:`EventPublishing._publish_detached`);
- a dead-credential report: to the keys service on the AMQP route, outside the settlement.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from oarlock.amqp.types import Outgoing, Transport
from oarlock.errors import EncodeError, KeyStoreError
from oarlock.keys.platform_api import AccountsApi, platform_keys
from oarlock.protocol.events import Event, EventName, error_payload
from oarlock.protocol.outgoing import OutgoingEncoder
from oarlock.runtime.jobs import Job, first_failure

log = logging.getLogger("oarlock.worker")


class EventPublishing:
    """The worker's publishing half; the worker sets these attributes."""

    encoder: OutgoingEncoder
    transport: Transport
    update_keys_routes: Any
    cfg: dict[str, Any]
    snapshot: dict[str, Any]
    _accounts_api: AccountsApi | None
    _lock: threading.Lock

    def _publish_event(self, job: Job, event: Event) -> None:
        """Publish what one event becomes (protocol.outgoing); a message that cannot be encoded is an error."""
        if event.name in (EventName.SNAPSHOT, EventName.UPDATE_SNAPSHOT):
            self._snapshot_event(job, event)
            return
        if event.name is EventName.UPDATE_KEYS:
            self._update_keys(job, event)
            return
        elif event.name is EventName.CREDENTIAL_INVALID:  # to an oarlock platform's keys service, not settled
            if "amqp" in self.update_keys_routes:
                try:
                    self.transport.publish(self.encoder.encode(job.view, event).messages[0])
                except EncodeError as exc:
                    log.error("the dead-credential report could not be published: %s", exc)
            return
        try:
            if event.name is EventName.DATA:  # nearly every event: straight to its encoding
                self._send(job, self.encoder.data(job.view, event.payload))
                return
            if job.state == "detached":  # the error of an update published on its own: the input is settled
                log.error("%s", event.payload.get("message"), extra={"messageId": job.message_id})
                return
            encoded = self.encoder.encode(job.view, event)
        except EncodeError as exc:
            encoded = self.encoder.encode(job.view, Event(EventName.ERROR, error_payload(exc)))
        if encoded.is_error:
            job.errored = True
        for message in encoded.messages:
            try:
                self._send(job, message)
            except EncodeError as exc:  # the transport cannot marshal it (a header value, say)
                if encoded.is_error:  # the error itself: the input is rejected without it
                    log.error("the error of message %s cannot be published (%s): rejected", job.message_id, exc)
                    job.errored = True
                else:
                    self._publish_event(job, Event(EventName.ERROR, error_payload(exc)))

    def _snapshot_event(self, job: Job, event: Event) -> None:
        """Encoded first, then what was encoded is applied: the worker's snapshot only ever holds JSON (a
        payload that cannot be encoded is an error of this input, never of every input after it)."""
        try:
            message = self.encoder.snapshot(job.view, event)
            applied = json.loads(message.body)
        except (EncodeError, TypeError, ValueError, RecursionError) as exc:
            error = exc if isinstance(exc, EncodeError) else EncodeError(f"{event.name.value} payload: {exc}")
            self._publish_event(job, Event(EventName.ERROR, error_payload(error)))
            return
        with self._lock:
            if event.name is EventName.SNAPSHOT:
                self.snapshot = applied
            else:
                self.snapshot.update(applied)
        try:
            self._send(job, message)
        except EncodeError as exc:
            self._publish_event(job, Event(EventName.ERROR, error_payload(exc)))

    def _update_keys(self, job: Job, event: Event) -> None:
        """Every route the deployment has must take the update before the input is acked.

        AMQP: published and confirmed like any output (unroutable -> error and reject). The platform
        API: ``PUT /v1/accounts/{cfg._account}`` now, on this thread, with sailor's retries; a PUT
        that fails is an error event of the input (so it is rejected, never acked).
        """
        payload: dict[str, Any] = event.payload
        if payload.get("persist") is False:
            return  # an immutable credential: refreshed in memory only
        if "amqp" in self.update_keys_routes:
            try:
                for message in self.encoder.encode(job.view, event).messages:
                    self._send(job, message)
            except EncodeError as exc:
                self._publish_event(job, Event(EventName.ERROR, error_payload(exc)))
        if self._accounts_api is not None:
            account = self.cfg.get("_account")
            try:
                if not isinstance(account, str) or not account:
                    raise KeyStoreError(
                        "a refreshed credential cannot be stored on the platform: the step cfg has no _account "
                        "(PUT /v1/accounts/{cfg._account})"
                    )
                self._accounts_api.put_keys(account, platform_keys(payload))
            except KeyStoreError as exc:
                log.error("%s", exc, extra={"messageId": job.message_id, "account": account})
                self._publish_event(job, Event(EventName.ERROR, error_payload(exc)))

    def _publish_detached(self, job: Job, event: Event) -> None:
        """An updateKeys (or a dead-credential report) emitted after its input was settled: on every route on its
        own, tied to no input; what fails is logged (the input's settlement is over)."""
        detached = Job(job.delivery, job.view)
        detached.state = "detached"
        self._publish_event(detached, event)
        account = event.payload.get("account") if isinstance(event.payload, dict) else None

        def confirmed() -> None:
            failure = first_failure(detached.confirms)
            if failure is not None:
                log.error(
                    "%s of account %s, published after its input was settled, was not confirmed (%s): the refreshed "
                    "credential is in this process's memory until its next update",
                    event.name.value,
                    account,
                    failure,
                    extra={"account": account, "messageId": job.message_id},
                )

        self.transport.when_all(list(detached.confirms), confirmed)

    def _send(self, job: Job, message: Outgoing) -> None:
        job.confirms.append(self.transport.publish(message))
