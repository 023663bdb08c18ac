"""The platform's account API: ``PUT {API_URI}/v1/accounts/{id}`` with ``{"keys": …}`` (sailor's route).

This is how a sailor platform persists a refreshed credential (sailor-nodejs 2.7.8's
``updateKeys``): basic auth with ``API_USERNAME`` / ``API_KEY``, the account id from the step
cfg's ``_account``, retried like sailor's REST client (3 attempts about 1 s apart on 5xx,
network errors and attempts past their deadline; a 4xx is final). :meth:`AccountsApi.put_keys`
returns when the platform answered 2xx, else raises :class:`~oarlock.errors.KeyStoreError` naming
the account, the status and how many attempts were made: the worker turns that into an error
event and a reject, never an ack. One pooled keep-alive session serves every PUT of the process.

The PUT carries a token set, so it is bounded like a token request (:mod:`oarlock.credentials.endpoint`,
whose deadline watchdog it reuses):

- redirects: never followed (a 307 would re-PUT the token set to the host its ``Location`` names, a
  302 would turn the PUT into a GET whose 200 looks like success). A 3xx is a final failure naming
  the status and only the scheme, host and port of the ``Location``, never its path or query;
- environment: the session ignores proxy variables and ``~/.netrc`` (``trust_env`` off);
- time: connect 10 s / read 30 s per socket operation as before, plus a wall-clock deadline per
  attempt (``attempt_deadline_seconds``, default :data:`ATTEMPT_DEADLINE_SECONDS`, 30 s) covering the
  status line, the headers and the body: when it passes, the attempt's socket is shut down, so an
  answer trickling a byte at a time fails naming the deadline. All attempts and the pauses between
  them share an overall deadline (``budget_seconds``, default :data:`BUDGET_SECONDS`, 60 s): no
  attempt starts, waits or goes on past it;
- memory: the answer is read with ``stream=True`` up to :data:`MAX_ANSWER_BYTES` (64 KiB, undecoded)
  and no further: only its status counts. A body read to its end within the cap lets the connection
  go back to the pool; any other answer's connection is closed.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Generator
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import urllib3.exceptions

# the token client's watchdog: it shuts a request's socket down at its deadline
from oarlock.credentials.endpoint import Deadline, WatchedAdapter
from oarlock.errors import ConfigurationError, KeyStoreError

log = logging.getLogger("oarlock.platform_api")
ATTEMPTS = 3
PAUSE_SECONDS = 1.0
TIMEOUT = (10.0, 30.0)
#: wall-clock deadline of one PUT attempt: connect, status line, headers and body
ATTEMPT_DEADLINE_SECONDS = 30.0
#: wall-clock deadline of one put_keys: every attempt and every pause between attempts
BUDGET_SECONDS = 60.0
#: the most of an answer's body read (its status is all that counts)
MAX_ANSWER_BYTES = 64 * 1024
_CHUNK = 16 * 1024
_HOST = re.compile(r"[A-Za-z0-9.\-:]{1,255}")  # a name or an address, nothing a message should not carry
_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]{0,15}")


class _Final(Exception):
    """An attempt's outcome that no retry changes: why, and what the message adds after the attempts."""

    def __init__(self, reason: str, tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.tail = tail


class _NoRedirectSession(requests.Session):
    """A session that never looks at a redirect: with ``allow_redirects=False`` requests still parses the
    ``Location`` to prepare the next request (``Response.next``), and a garbled one raised a bare ValueError."""

    def resolve_redirects(self, *args: Any, **kwargs: Any) -> Generator[Any, None, None]:
        yield from ()


class AccountsApi:
    def __init__(
        self,
        api_uri: str,
        username: str | None,
        key: str | None,
        *,
        attempts: int = ATTEMPTS,
        pause_seconds: float = PAUSE_SECONDS,
        attempt_deadline_seconds: float = ATTEMPT_DEADLINE_SECONDS,
        budget_seconds: float = BUDGET_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not attempt_deadline_seconds > 0 or not budget_seconds > 0:
            raise ConfigurationError("the deadlines of the platform's account PUT must be positive numbers of seconds")
        self.api_uri = api_uri.rstrip("/")
        self.attempts = max(1, attempts)
        self.pause_seconds = pause_seconds
        self.attempt_deadline_seconds = float(attempt_deadline_seconds)
        self.budget_seconds = float(budget_seconds)
        self._sleep = sleep
        self._session = _NoRedirectSession()
        self._session.auth = (username or "", key or "")
        self._session.trust_env = False  # no proxies, no ~/.netrc credentials from the environment
        adapter = WatchedAdapter(pool_connections=4, pool_maxsize=64)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def url_for(self, account: str) -> str:
        return f"{self.api_uri}/v1/accounts/{quote(account, safe='')}"

    def put_keys(self, account: str, keys: dict[str, Any]) -> None:
        """PUT ``{"keys": keys}`` for ``account``; KeyStoreError when the platform did not take it."""
        url = self.url_for(account)
        started = time.monotonic()
        slept = waited = 0.0  # real time spent in sleep, and the pauses asked for (an injected sleep returns at once)

        def used() -> float:
            return time.monotonic() - started - slept + waited

        reason = "no attempt"
        gave_up = ""
        attempt = 0
        while attempt < self.attempts:
            left = self.budget_seconds - used()
            if left <= 0:
                gave_up = f" (gave up: the overall deadline of {self.budget_seconds:g} s passed)"
                break
            attempt += 1
            if left < self.attempt_deadline_seconds:
                deadline = Deadline(left, f"the overall deadline of {self.budget_seconds:g} s")
            else:
                deadline = Deadline(
                    self.attempt_deadline_seconds, f"the per-attempt deadline of {self.attempt_deadline_seconds:g} s"
                )
            try:
                outcome = self._attempt(url, keys, deadline)
            except _Final as final:
                reason, gave_up = final.reason, final.tail
                break
            if outcome is None:
                return
            reason = outcome
            if attempt < self.attempts:
                if used() + self.pause_seconds >= self.budget_seconds:
                    gave_up = f" (gave up: the next attempt would start past the overall deadline of {self.budget_seconds:g} s)"
                    break
                log.warning("PUT %s failed (%s), attempt %s of %s: retrying", url, reason, attempt, self.attempts)
                before = time.monotonic()
                try:
                    self._sleep(self.pause_seconds)
                finally:
                    slept += time.monotonic() - before
                    waited += self.pause_seconds
        raise KeyStoreError(
            f"the platform did not store the refreshed credential of account {account}: "
            f"PUT {url} {reason} after {attempt} attempt{'s' if attempt != 1 else ''}{gave_up}"
        )

    def _attempt(self, url: str, keys: dict[str, Any], deadline: Deadline) -> str | None:
        """None when the platform took the PUT, else why not (retryable); _Final when no retry helps."""
        late = f"did not answer within {deadline.what}"
        with deadline:
            try:
                answer = self._session.put(
                    url,
                    json={"keys": keys},
                    timeout=(min(TIMEOUT[0], deadline.seconds), min(TIMEOUT[1], deadline.seconds)),
                    allow_redirects=False,  # a redirect would re-PUT the token set, or turn the PUT into a GET
                    stream=True,
                )
            except requests.RequestException as exc:
                return late if deadline.passed() else f"failed with {type(exc).__name__} (network)"
            complete = False
            try:
                status = answer.status_code
                if 300 <= status < 400:
                    target = _redirect_target(answer.headers.get("Location"), url)
                    raise _Final(f"answered {status} ({target})", ": not followed, the credential was not stored")
                complete = _drain(answer, deadline)
                if deadline.passed():
                    complete = False
                    return late  # a trickling answer: whatever its status said, it did not end in time
            finally:
                if complete:
                    answer.raw.release_conn()  # read to its end: the connection goes back to the pool
                else:
                    answer.close()  # not read to its end (or cut by the watchdog): the connection is closed
        if status < 300:
            return None
        if status < 500:  # a 4xx is final: retrying sends the same request to the same refusal
            raise _Final(f"answered HTTP {status}")
        return f"answered HTTP {status}"

    def close(self) -> None:
        self._session.close()


def _drain(answer: requests.Response, deadline: Deadline) -> bool:
    """Read the answer's body (undecoded) up to MAX_ANSWER_BYTES: True when it ended within the cap."""
    size = 0
    try:
        for chunk in answer.raw.stream(_CHUNK, decode_content=False):
            size += len(chunk)
            if size > MAX_ANSWER_BYTES or deadline.passed():
                return False
    except (urllib3.exceptions.HTTPError, OSError, ValueError):
        return False  # broken off (the watchdog's shutdown among others): the status is all that counts
    return not deadline.expired


def _redirect_target(location: str | None, url: str) -> str:
    """Where a redirect points, as scheme://host[:port] only: a Location's path or query may carry anything."""
    if not location:
        return "a redirect without a Location"
    try:
        parts = urlsplit(location.strip())
        base = urlsplit(url)
        host = parts.hostname or base.hostname or ""
        port = parts.port if parts.hostname else base.port
        scheme = (parts.scheme or base.scheme).lower()
    except ValueError:
        return "a redirect with an unreadable Location"
    if not _HOST.fullmatch(host) or not _SCHEME.fullmatch(scheme):
        return "a redirect with an unreadable Location"
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    return f"a redirect to {scheme}://{host}" + (f":{port}" if port else "")


def platform_keys(payload: dict[str, Any]) -> dict[str, Any]:
    """What the platform stores under ``keys``: the payload without oarlock's bookkeeping (``account``,
    ``version``, ``response``, ``persist``): the merged token set as ``oauth`` and whatever a component
    emitted beside it (sailor PUTs the emitted object)."""
    return {
        key: value
        for key, value in payload.items()
        if key not in ("account", "version", "response", "persist", "oauth2")
    }
