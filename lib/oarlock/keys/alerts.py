"""Account state reports in, alerts out: the keys service's half of "a human is needed".

**Reports** (:func:`apply_state_report`): a worker whose refresh failed for good publishes, once per
cooldown, a message encrypted like an updateKeys on the routing key ``credentialInvalid``:
``{"type": "credentialInvalid", "account": A, "version": V, "state": "needs_reauthorization" |
"refresh_failing", "reason": R}``. The service records it with :meth:`KeyStore.record_state` (one
atomic transition, so however many workers and replicas report the same dead credential, exactly
one of them *enters* the state); a malformed report is a :class:`~oarlock.errors.DecodeError`.
A report names the dead credential by ``fingerprint`` (:func:`~oarlock.credentials.reports.fingerprint_of`:
16 hex digits of a SHA-256, never the token): when it is not the stored credential's, the report is
about a credential the store no longer holds (one a re-authorization or a rotation replaced) and is
ignored, so a dead credential never shadows a live one; when it is, the report is recorded for the
stored version, whatever version the worker gave it (a worker's own stamp of a credential that came
without one). A report without a fingerprint (an older worker) is recorded for its version, or for
the stored version when it names a newer one the store never held.

**Alerts** (:class:`Alerter`): :meth:`Alerter.notify` is given every :class:`StateChange` (from the
reports, from the keep-alive) and alerts only when the change *entered* ``needs_reauthorization``:
once per transition, never per message, never in a loop. The alert is the JSON object
``{"account", "state", "reason", "since"}`` (``since`` ISO 8601 UTC), handed to ``publish`` (the
service encrypts it and publishes it, confirmed, on ``--exchange`` with ``--alert-routing-key``,
default ``credentialAlert``) and, with ``webhook``, POSTed there as ``application/json``. Each
destination has a thread of its own, so nobody waits on it: :meth:`notify` only queues. A failed
delivery is retried with backoff (5 attempts over about a minute) on connection errors, timeouts
and 5xx (any failure of ``publish``); a redirect or another 4xx is final; redirects are never
followed and the POST carries no credential but what the webhook URL itself holds. After the last
failure, one error line naming the account and the destination (scheme, host and port only).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from queue import Empty, SimpleQueue
from typing import Any, Final
from urllib.parse import urlsplit

import requests

from oarlock.credentials.reports import fingerprint_of
from oarlock.errors import ConfigurationError, DecodeError
from oarlock.keys.accounts import MAX_REASON, NEEDS_REAUTHORIZATION, REFRESH_FAILING, StateChange
from oarlock.keys.base import KeyStore, valid_version
from oarlock.redact import redact_text

log = logging.getLogger("oarlock.keys.alerts")

STATE_REPORT_TYPE: Final = "credentialInvalid"
REPORTED_STATES: Final = (NEEDS_REAUTHORIZATION, REFRESH_FAILING)
DEFAULT_ALERT_ROUTING_KEY: Final = "credentialAlert"
#: the pauses between the 5 attempts of one delivery (about a minute in all, with the requests' timeouts)
RETRY_PAUSES: Final = (2.0, 5.0, 13.0, 30.0)
WEBHOOK_TIMEOUT: Final = (5.0, 10.0)

Publish = Callable[[dict[str, Any]], None]


def is_state_report(payload: dict[str, Any]) -> bool:
    return payload.get("type") == STATE_REPORT_TYPE


def apply_state_report(store: KeyStore, payload: dict[str, Any]) -> StateChange | None:
    """Record one worker's report; the change (None: about an older credential than the state's).

    DecodeError naming what is wrong with a malformed report; KeyStoreError when the store cannot take it.
    """
    account = payload.get("account")
    if not isinstance(account, str) or not account or len(account) > 512:
        raise DecodeError("credentialInvalid report's 'account' must be a non-empty string (at most 512 characters)")
    if "version" not in payload:
        raise DecodeError("credentialInvalid report has no 'version': cannot record it")
    version = valid_version(payload["version"])
    state = payload.get("state", NEEDS_REAUTHORIZATION)
    if state not in REPORTED_STATES:
        shown = str(state)[:40]
        raise DecodeError(
            f"credentialInvalid report's 'state' must be one of {', '.join(REPORTED_STATES)}, not {shown!r}"
        )
    reason = payload.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise DecodeError("credentialInvalid report's 'reason' must be a string")
    fingerprint = payload.get("fingerprint")
    if fingerprint is not None and (not isinstance(fingerprint, str) or len(fingerprint) > 64):
        raise DecodeError("credentialInvalid report's 'fingerprint' must be a string (at most 64 characters)")
    stored = store.get(account)
    if stored is not None and fingerprint is not None:
        if fingerprint != fingerprint_of(stored.oauth):
            return None  # about a credential the store no longer holds: the stored one is not known to be dead
        version = stored.version
    elif stored is not None and version > stored.version:
        # a version the store never held: the worker's own stamp of the stored credential (or a refresh it could not
        # store): about the stored one, so that a dead credential enters its state once, not once per worker restart
        version = stored.version
    return store.record_state(account, state, version=version, reason=reason[:MAX_REASON] if reason else None)


def iso_utc(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def alert_of(change: StateChange) -> dict[str, Any]:
    """The alert's JSON object: ``{"account", "state", "reason", "since"}``."""
    current = change.current
    return {
        "account": current.account,
        "state": current.state,
        "reason": redact_text(current.reason) if current.reason else None,
        "since": iso_utc(current.since),
    }


def where(url: str) -> str:
    """scheme://host:port of a URL: what a log line may show of a webhook (its path may be its secret)."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"
    except ValueError:
        return "(unparsable URL)"


def check_webhook(url: str) -> str:
    """The webhook URL, or ConfigurationError when it is not an http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # ValueError for a port that is not a number
    except ValueError:
        valid = False
    if not valid:
        raise ConfigurationError("--webhook must be an http:// or https:// URL with a host")
    return url


class _Final(Exception):
    """A delivery that trying again cannot help (a redirect, a 4xx)."""


class _Retry(Exception):
    """A delivery that may succeed later (a network error, a 5xx)."""


class _Destination:
    """One place alerts go to, with its own thread and queue."""

    def __init__(self, name: str, deliver: Callable[[dict[str, Any]], None], pauses: Sequence[float]) -> None:
        self.name = name
        self.deliver = deliver
        self.pauses = tuple(pauses)
        self.delivered = 0
        self.failed = 0
        self._queue: SimpleQueue[dict[str, Any] | None] = SimpleQueue()
        self._abort = threading.Event()
        self._busy = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._loop, name=f"oarlock-alerts-{name}", daemon=True)
        self._thread.start()

    def put(self, alert: dict[str, Any]) -> None:
        with self._lock:
            self._busy += 1
        self._queue.put(alert)

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def close(self, grace: float) -> None:
        self._queue.put(None)
        self._thread.join(grace)
        if self._thread.is_alive():  # a delivery still waiting between attempts: give up on it
            self._abort.set()
            self._thread.join(2)

    def _loop(self) -> None:
        while (alert := self._queue.get()) is not None:
            try:
                self._one(alert)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()
        # what is still queued after the close is dropped, and said
        while True:
            try:
                left = self._queue.get_nowait()
            except Empty:
                return
            if left is not None:
                log.error("alert for account %s not sent to %s: the service stopped", left["account"], self.name)

    def _one(self, alert: dict[str, Any]) -> None:
        account = alert["account"]
        attempts = len(self.pauses) + 1
        reason = "not tried"
        for attempt in range(1, attempts + 1):
            try:
                self.deliver(alert)
            except _Final as exc:
                reason, attempts = str(exc), attempt
                break
            except Exception as exc:  # a network error, a 5xx, a publish not confirmed: try again
                reason = redact_text(str(exc)) or type(exc).__name__
            else:
                self.delivered += 1
                log.info("alert for account %s sent to %s", account, self.name, extra={"account": account})
                return
            if attempt < attempts:
                log.warning(
                    "alert for account %s to %s failed (attempt %s of %s): %s",
                    account,
                    self.name,
                    attempt,
                    attempts,
                    reason,
                    extra={"account": account},
                )
                if self._abort.wait(self.pauses[attempt - 1]):
                    break
        self.failed += 1
        log.error(
            "alert for account %s not delivered to %s after %s attempt%s: %s",
            account,
            self.name,
            attempts,
            "s" if attempts > 1 else "",
            reason,
            extra={"account": account},
        )


class Alerter:
    """Alerts once per account entering ``needs_reauthorization``; see the module docstring.

    ``publish``: delivers the alert object as a message (blocks until the broker confirmed it, raises
    otherwise); ``webhook``: a URL to POST it to. Neither: :meth:`notify` only logs.
    """

    def __init__(
        self,
        *,
        publish: Publish | None = None,
        webhook: str | None = None,
        pauses: Sequence[float] = RETRY_PAUSES,
        timeout: tuple[float, float] = WEBHOOK_TIMEOUT,
    ) -> None:
        self.webhook = check_webhook(webhook) if webhook else None
        self.timeout = timeout
        self.alerts = 0  # changes that alerted
        self._session: requests.Session | None = None
        self._destinations: list[_Destination] = []
        if publish is not None:
            self._destinations.append(_Destination("the alert routing key", publish, pauses))
        if self.webhook is not None:
            session = self._session = requests.Session()
            session.trust_env = False  # no ~/.netrc credentials, no proxy settings of the environment
            self._destinations.append(_Destination(f"the webhook {where(self.webhook)}", self._post, pauses))

    @property
    def destinations(self) -> list[str]:
        return [destination.name for destination in self._destinations]

    def notify(self, change: StateChange | None) -> bool:
        """Queue the alert when ``change`` entered ``needs_reauthorization`` (True then); never blocks."""
        if change is None or not change.entered or change.current.state != NEEDS_REAUTHORIZATION:
            return False
        alert = alert_of(change)
        self.alerts += 1
        account = alert["account"]
        log.warning(
            "account %s needs re-authorization (since %s): %s",
            account,
            alert["since"],
            alert["reason"] or "no reason given",
            extra={"account": account, "version": change.current.version, "status": NEEDS_REAUTHORIZATION},
        )
        for destination in self._destinations:
            destination.put(alert)
        return True

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """True once every queued alert was delivered or given up on (for tests and a clean stop)."""
        deadline = time.monotonic() + timeout
        return all(d.wait_idle(max(0.0, deadline - time.monotonic())) for d in self._destinations)

    @property
    def delivered(self) -> dict[str, int]:
        return {destination.name: destination.delivered for destination in self._destinations}

    def close(self, grace: float = 10.0) -> None:
        """Deliver what is queued (at most ``grace`` seconds each), then stop the threads."""
        for destination in self._destinations:
            destination.close(grace)
        if self._session is not None:
            self._session.close()

    def _post(self, alert: dict[str, Any]) -> None:
        assert self._session is not None and self.webhook is not None
        body = json.dumps(alert, ensure_ascii=False).encode("utf-8")
        try:
            answer = self._session.post(
                self.webhook,
                data=body,
                headers={"Content-Type": "application/json", "User-Agent": "oarlock-keys-service"},
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise _Retry(f"{type(exc).__name__} (network)") from None
        status = answer.status_code
        answer.close()
        if status < 300:
            return
        if status >= 500:
            raise _Retry(f"HTTP {status}")
        if status < 400:
            raise _Final(f"HTTP {status}: a redirect, not followed")
        raise _Final(f"HTTP {status}")


__all__ = [
    "DEFAULT_ALERT_ROUTING_KEY",
    "STATE_REPORT_TYPE",
    "Alerter",
    "alert_of",
    "apply_state_report",
    "is_state_report",
]
