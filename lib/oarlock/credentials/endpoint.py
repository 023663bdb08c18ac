"""The token request itself: client authentication, retries with backoff, bounds, failure classes.

Network errors, 5xx and 429 are retried (tenacity) with exponential backoff and jitter. A
``Retry-After`` hint (seconds or an HTTP date) is honoured, but the backoff is a floor under it
(:func:`backoff_floor`: 0.5 s, 1 s, 2 s, 4 s, 8 s, then 10 s), so ``Retry-After: 0`` or a date in
the past cannot turn a refresh into a tight loop. ``invalid_grant`` / ``invalid_client`` are never
retried: they raise CredentialNeedsReauthorization at once.

Every token request is bounded; each bound that is hit is a TokenEndpointError naming it and the
account:

- attempts: at most ``max_attempts`` token requests per refresh (default :data:`MAX_ATTEMPTS`, 6);
- time: each token request has a wall-clock deadline (``request_deadline_seconds``, default
  :data:`REQUEST_DEADLINE_SECONDS`, 30 s) and so does the whole refresh, all attempts and the
  waits between them (``retry_budget_seconds``, default :data:`REFRESH_DEADLINE_SECONDS`, 60 s;
  the attribute ``refresh_deadline_seconds``): no attempt starts, waits or goes on past it. The
  read timeout of ``requests`` counts per socket read, so a server trickling a byte at a time
  would defeat it: instead a watchdog shuts the request's socket down when its deadline passes,
  and the answer is read with ``stream=True``. The refresh deadline counts the time spent in
  requests plus the waits handed to ``sleep`` (an injected ``sleep`` keeps tests off the clock).
  With a ``session`` of its own (not injected) the watchdog covers the headers too; an injected
  session's own adapters are kept, and the watchdog then covers the body only;
- memory: an answer is read up to :data:`MAX_RESPONSE_BYTES` (1 MiB, counted after
  decompression); a longer one is not read further;
- redirects: never followed (a 307 would post the refresh token and the client secret to
  wherever it points); a 3xx names its status and the host of its ``Location``.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters
import tenacity
import urllib3
import urllib3.connection
import urllib3.response

from oarlock.credentials.presets import RefreshSettings
from oarlock.credentials.token import parse_token_response
from oarlock.errors import ConfigurationError, CredentialNeedsReauthorization, TokenEndpointError
from oarlock.metrics import hooks as metrics
from oarlock.redact import register_token

log = logging.getLogger("oarlock.credentials")

#: token requests one refresh makes at most
MAX_ATTEMPTS = 6
#: wall-clock deadline of one token request (connect, headers and body)
REQUEST_DEADLINE_SECONDS = 30.0
#: wall-clock deadline of one refresh: every attempt and every wait between attempts
REFRESH_DEADLINE_SECONDS = 60.0
#: a token answer longer than this (after decompression) is an error
MAX_RESPONSE_BYTES = 1024 * 1024
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0
_CHUNK = 64 * 1024


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def backoff_floor(attempt: int) -> float:
    """The least wait after failed attempt number ``attempt`` (1-based), whatever Retry-After says."""
    return float(min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempt - 1)))


class _Wait(tenacity.wait.wait_base):
    """The backoff (the floor plus up to half of it as jitter), or Retry-After when it asks for longer."""

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        floor = backoff_floor(retry_state.attempt_number)
        backoff = floor + random.uniform(0.0, floor / 2)
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        hinted = getattr(error, "retry_after", None)
        if isinstance(hinted, (int, float)) and hinted >= floor:
            return float(hinted)
        return backoff


class _Budget:
    """One refresh's deadline: time spent in requests (monotonic) plus the waits handed to ``sleep``."""

    def __init__(self, seconds: float, sleep: Callable[[float], None]) -> None:
        self.seconds = seconds
        self.attempts = 0
        self.gave_up: str | None = None
        self._sleep = sleep
        self._start = time.monotonic()
        self._slept = 0.0  # real time spent inside sleep
        self._waited = 0.0  # the waits asked for

    def used(self) -> float:
        return time.monotonic() - self._start - self._slept + self._waited

    def left(self) -> float:
        return self.seconds - self.used()

    def sleep(self, seconds: float) -> None:
        started = time.monotonic()
        try:
            self._sleep(seconds)
        finally:
            self._slept += time.monotonic() - started
            self._waited += seconds


class _Stop(tenacity.stop.stop_base):
    """Stop after the maximum of attempts, or when the next one would start past the refresh deadline."""

    def __init__(self, max_attempts: int, budget: _Budget) -> None:
        self.max_attempts = max_attempts
        self.budget = budget

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        if retry_state.attempt_number >= self.max_attempts:
            self.budget.gave_up = f"the maximum of {self.max_attempts} attempts"
        elif self.budget.used() + (retry_state.upcoming_sleep or 0.0) >= self.budget.seconds:
            self.budget.gave_up = f"the next attempt would start past the refresh deadline of {self.budget.seconds:g} s"
        return self.budget.gave_up is not None


# -- the per-request deadline ---------------------------------------------------------------------
_active = threading.local()


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):  # the plain socket's shutdown, also under TLS: wakes a blocked read
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Deadline:
    """One request's wall-clock deadline: when it passes, the request's socket is shut down (token requests, the
    platform's account PUT)."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds = seconds
        self.what = what  # "the per-request deadline of 30 s", for messages
        self.expired = False
        self._at = time.monotonic() + seconds
        self._done = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        _active.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _active.deadline = None
        with self._lock:
            self._done = True
        self._timer.cancel()

    def passed(self) -> bool:
        return self.expired or time.monotonic() >= self._at

    def attach(self, connection: Any) -> None:
        """Watch the connection's socket (taken now: http.client forgets it once a closing answer began)."""
        sock = getattr(connection, "sock", None)
        if sock is None:
            return
        with self._lock:
            self._sock = sock
            if self.expired:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            _shutdown(self._sock)


def _watch(connection: Any) -> None:
    deadline = getattr(_active, "deadline", None)
    if deadline is not None:
        deadline.attach(connection)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]  # as urllib3 does
        _watch(self)  # before the status line and the headers are read
        return super().getresponse()


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]  # as urllib3 does
        _watch(self)
        return super().getresponse()


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS: dict[str, type[urllib3.HTTPConnectionPool]] = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class WatchedAdapter(requests.adapters.HTTPAdapter):
    """An adapter whose connections let the current request's deadline shut them down."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:  # SOCKS proxies keep their own pools
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


def token_session() -> requests.Session:
    """A session for token requests whose deadlines also cover the status line and the headers."""
    session = requests.Session()
    adapter = WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class TokenClient:
    """Sends refresh requests to token endpoints, within the bounds of the module docstring.

    ``retry_budget_seconds`` is the refresh deadline (attribute ``refresh_deadline_seconds``);
    ``request_deadline_seconds`` and ``max_attempts`` are kept as attributes of the same names.
    """

    def __init__(
        self,
        *,
        session: requests.Session | None = None,
        retry_budget_seconds: float = REFRESH_DEADLINE_SECONDS,
        request_deadline_seconds: float = REQUEST_DEADLINE_SECONDS,
        max_attempts: int = MAX_ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not retry_budget_seconds > 0 or not request_deadline_seconds > 0:
            raise ConfigurationError("token request deadlines must be positive numbers of seconds")
        if max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be at least 1, got {max_attempts}")
        self._session = session or token_session()
        self.refresh_deadline_seconds = float(retry_budget_seconds)
        self.request_deadline_seconds = float(request_deadline_seconds)
        self.max_attempts = max_attempts
        self._sleep = sleep
        self._clock = clock

    def refresh(
        self, settings: RefreshSettings, oauth: dict[str, Any], *, account: str, extra: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """The token response for a refresh of ``oauth`` after retries (``extra``: another grant's fields, e.g. a code)."""
        if not settings.token_uri:
            raise CredentialNeedsReauthorization(
                f"account {account} cannot be refreshed: oauth2.token_uri is not configured", account=account
            )
        form = {**self._form(settings, oauth, account), **(extra or {})}
        budget = _Budget(self.refresh_deadline_seconds, self._sleep)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, TokenEndpointError) and e.retryable),
            wait=_Wait(),
            stop=_Stop(self.max_attempts, budget),
            sleep=budget.sleep,
            reraise=True,
            before_sleep=lambda state: log.warning(
                "account %s: token endpoint failed (%s), retrying in %.1f s",
                account,
                state.outcome.exception() if state.outcome else "?",
                state.upcoming_sleep,
                extra={"account": account, "attempt": state.attempt_number},
            ),
        )
        try:
            response = retrying(self._timed_send, settings, form, account, budget)
        except CredentialNeedsReauthorization:
            metrics.active.token_refresh("needs_reauthorization", budget.attempts)
            raise
        except TokenEndpointError as exc:
            metrics.active.token_refresh("failed", budget.attempts)
            if not exc.retryable or budget.gave_up is None:
                raise
            attempts = "1 attempt" if budget.attempts == 1 else f"{budget.attempts} attempts"
            final = TokenEndpointError(
                f"{exc} (gave up after {attempts}: {budget.gave_up})",
                account=account,
                status=exc.status,
                retryable=True,
            )
            final.retry_after = exc.retry_after
            raise final from None
        metrics.active.token_refresh("ok", budget.attempts)
        return response

    def _form(self, settings: RefreshSettings, oauth: dict[str, Any], account: str) -> dict[str, str]:
        form: dict[str, str] = {"grant_type": settings.grant_type}
        if settings.grant_type == "refresh_token":
            refresh_token = oauth.get("refresh_token")
            if not isinstance(refresh_token, str) or not refresh_token:
                raise CredentialNeedsReauthorization(
                    f"account {account} must be re-authorized: the credential has no refresh_token", account=account
                )
            form["refresh_token"] = refresh_token
        scope = settings.scope
        if scope is None and settings.preset.send_credential_scope:
            scope = str(oauth.get("scope") or "")
            required = settings.preset.default_scope
            if required and required not in scope.split():
                scope = f"{scope} {required}".strip()  # Microsoft: without offline_access no new refresh token
        if scope:
            form["scope"] = str(scope)
        if settings.client_auth == "post":
            if settings.client_id:
                form["client_id"] = settings.client_id
            if settings.client_secret:
                form["client_secret"] = settings.client_secret
        return form

    def _deadline(self, budget: _Budget, endpoint: str, account: str) -> Deadline:
        left = budget.left()
        if left <= 0:
            raise TokenEndpointError(
                f"the refresh deadline of {budget.seconds:g} s passed before a token request to {endpoint} "
                f"for account {account}",
                account=account,
                retryable=True,
            )
        if left < self.request_deadline_seconds:
            return Deadline(left, f"the refresh deadline of {budget.seconds:g} s")
        return Deadline(
            self.request_deadline_seconds, f"the per-request deadline of {self.request_deadline_seconds:g} s"
        )

    def _timed_send(self, *request: Any) -> dict[str, Any]:  # _send's arguments
        started = time.monotonic()
        try:
            return self._send(*request)
        finally:
            metrics.active.token_request(time.monotonic() - started)  # oarlock_token_request_seconds

    def _send(self, settings: RefreshSettings, form: dict[str, str], account: str, budget: _Budget) -> dict[str, Any]:
        budget.attempts += 1
        endpoint = str(settings.token_uri)
        auth = None
        if settings.client_auth == "basic":
            # sent as they are: RFC 6749 2.3.1 asks for form-urlencoding first, but many token endpoints do not
            # decode, and the ones that do (unquote) read plain secrets unchanged unless they hold a '%'
            auth = (settings.client_id or "", settings.client_secret or "")
        with self._deadline(budget, endpoint, account) as deadline:
            late = TokenEndpointError(
                f"the token endpoint {endpoint} did not answer within {deadline.what} for account {account}",
                account=account,
                retryable=True,
            )
            try:
                response = self._session.post(
                    endpoint,
                    data=form,
                    auth=auth,
                    timeout=(deadline.seconds, deadline.seconds),
                    headers={"Accept": "application/json"},
                    allow_redirects=False,  # a redirect would re-post the refresh token and the client secret
                    stream=True,
                )
            except requests.RequestException as exc:
                if deadline.passed():
                    raise late from None
                raise TokenEndpointError(
                    f"cannot reach the token endpoint {endpoint} for account {account}: {_network_reason(exc)}",
                    account=account,
                    retryable=True,
                ) from None
            try:
                deadline.attach(response.raw.connection)  # an injected session's connection: its body at least
                if 300 <= response.status_code < 400:
                    raise _redirect_error(response, endpoint, account)
                body = _read_capped(response, deadline, late, endpoint, account)
            finally:
                response.close()
        try:
            data = parse_token_response(
                response.status_code,
                response.headers.get("Content-Type"),
                body,
                endpoint=endpoint,
                account=account,
            )
        except TokenEndpointError as exc:
            hint = retry_after_seconds(response.headers.get("Retry-After"), self._clock())
            if hint is not None:
                exc.retry_after = hint
            raise
        register_token(data.get("access_token"))
        register_token(data.get("refresh_token"))
        register_token(data.get("id_token"))
        return data


def _read_capped(
    response: requests.Response, deadline: Deadline, late: TokenEndpointError, endpoint: str, account: str
) -> bytes:
    """The body, up to MAX_RESPONSE_BYTES and within the request's deadline."""
    too_large = TokenEndpointError(
        f"the token endpoint {endpoint} answered {response.status_code} with more than the "
        f"{MAX_RESPONSE_BYTES // 1024 // 1024} MiB cap of a token response for account {account}",
        account=account,
        status=response.status_code,
    )
    length = response.headers.get("Content-Length", "").strip()
    if length.isdigit() and int(length) > MAX_RESPONSE_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(_CHUNK):
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise too_large
            if deadline.passed():
                raise late
            chunks.append(chunk)
    except requests.RequestException as exc:
        if deadline.passed():
            raise late from None
        raise TokenEndpointError(
            f"the token endpoint {endpoint} broke off its answer for account {account}: {_network_reason(exc)}",
            account=account,
            retryable=True,
        ) from None
    if deadline.expired:  # the watchdog cut a body that ends with the connection short
        raise late
    return b"".join(chunks)


def _redirect_error(response: requests.Response, endpoint: str, account: str) -> TokenEndpointError:
    location = response.headers.get("Location")
    target = "without a Location"
    if location:
        try:
            parts = urlsplit(location)
            host = parts.hostname or urlsplit(endpoint).hostname or "?"
            port = parts.port if parts.hostname else urlsplit(endpoint).port
        except ValueError:
            host, port = "an unreadable Location", None
        target = f"to host {host}" + (f":{port}" if port else "")
    return TokenEndpointError(
        f"the token endpoint {endpoint} answered {response.status_code} redirecting {target} for account "
        f"{account}: token requests never follow redirects (they carry the refresh token and client secret)",
        account=account,
        status=response.status_code,
    )


def _network_reason(exc: Exception) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if "Name or service not known" in text or "getaddrinfo" in text:
        return "host name not resolved"
    return type(exc).__name__
