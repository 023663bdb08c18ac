"""``ctx.http``: an httpx-style auth flow (send; on 401 refresh, resend once) on top of requests.

The flow is a generator that yields requests and receives responses, so it is testable
without a network (:func:`oauth2_flow`); :class:`OAuth2Auth` drives it inside requests
through a response hook, the way requests' own digest auth resends. :func:`authorized_session`
is what ``ctx.http`` is for a cfg with a refreshable credential: a session on the manager's
shared connection pool with this auth. :class:`BearerAuth` is the same origin rule for a
static token (``Context``'s session for a cfg without a refresh engine).

**Where the token goes.** An origin is scheme + host + port; hosts compare case-insensitively
and a missing port is the scheme's default (``https://A.example`` is ``https://a.example:443``).
The bearer token is attached only to the credential's own origins:

- the origin of ``cfg.baseUrl``,
- the origin of ``cfg.oauth.instance_url`` (also the one a refresh returns, e.g. Salesforce's),
- every origin listed in ``cfg.oauth2.api_origins`` (a list of ``scheme://host[:port]`` strings,
  or one such string; a path, query or user info there is a ConfigurationError naming the field).

A request to any other origin goes out without the token, and a 401 from such a host neither
refreshes the credential nor resends anything: it is the function's answer like any other. The
first time a process withholds an account's token from an origin it logs one warning naming that
origin (``oarlock.credentials``). A cfg naming none of the three has no known origin: its token is
sent nowhere (fail closed: no first-request trust, which a message could steer to any host), and the
warning says to set ``baseUrl`` or ``oauth2.api_origins``. The token endpoint (``oauth2.token_uri``)
is not an API origin: it never receives the access token as a bearer.

An ``Authorization`` header never follows a redirect to another origin (requests itself strips it
when the host or port changes; ctx.http also strips it on a scheme change such as http -> https,
which requests would keep), and session auth is not re-applied on redirects, so the resend after a
401 cannot carry the token to another origin either. After a 401 resend the fresh token is what a
same-origin redirect carries.

**Timeouts.** Every request through these sessions without an explicit ``timeout=`` gets the
default ``(connect, read)``: 10 s to connect, 60 s between bytes of the answer. An explicit
``timeout=`` wins (``timeout=None`` explicitly waits forever, as in requests). Configuration, first
match wins: ``cfg.oauth2.http_timeout`` (seconds: one number for both, or ``[connect, read]``), then
the environment ``OARLOCK_HTTP_CONNECT_TIMEOUT`` / ``OARLOCK_HTTP_READ_TIMEOUT`` (each on its own),
then the defaults. A value that is not a positive finite number is a ConfigurationError naming the
field. ctx.http is the function's own requests session: a timeout reaches the function as
``requests.Timeout`` (``ConnectTimeout`` / ``ReadTimeout``), the exception component authors expect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters
from requests.auth import AuthBase
from requests.cookies import extract_cookies_to_jar

from oarlock.credentials.hook import RefreshHook
from oarlock.credentials.manager import BoundCredential, CredentialManager
from oarlock.errors import ConfigurationError, TokenRejected
from oarlock.protocol.events import EventSink

log = logging.getLogger("oarlock.credentials")

Flow = Generator[requests.PreparedRequest, requests.Response, None]
#: scheme, lower-case host, port
Origin = tuple[str, str, int]

DEFAULT_PORTS = {"http": 80, "https": 443}
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
CONNECT_TIMEOUT_ENV = "OARLOCK_HTTP_CONNECT_TIMEOUT"
READ_TIMEOUT_ENV = "OARLOCK_HTTP_READ_TIMEOUT"


# -- origins ---------------------------------------------------------------------------------------
def origin_of(url: object) -> Origin | None:
    """``(scheme, host, port)`` of an absolute http(s) URL, default ports filled in; None otherwise."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return scheme, host.lower(), port if port is not None else DEFAULT_PORTS[scheme]


def format_origin(origin: Origin) -> str:
    scheme, host, port = origin
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" if DEFAULT_PORTS[scheme] == port else f"{scheme}://{shown}:{port}"


class ApiOrigins:
    """The origins a credential's token may be sent to (see the module docstring)."""

    def __init__(self, origins: Iterable[Origin], *, live_instance_url: Callable[[], object] | None = None) -> None:
        self.origins = frozenset(origins)
        self._live_instance_url = live_instance_url

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any], *, live_instance_url: Callable[[], object] | None = None) -> ApiOrigins:
        oauth = cfg.get("oauth")
        oauth2 = cfg.get("oauth2")
        found = [origin_of(cfg.get("baseUrl"))]
        if isinstance(oauth, Mapping):
            found.append(origin_of(oauth.get("instance_url")))
        if isinstance(oauth2, Mapping):
            found.extend(_listed_origins(oauth2.get("api_origins")))
        return cls((o for o in found if o is not None), live_instance_url=live_instance_url)

    @classmethod
    def for_credential(cls, credential: BoundCredential) -> ApiOrigins:
        """The origins of the credential's cfg, plus the instance_url its newest token set names."""
        return cls.from_cfg(credential.cfg, live_instance_url=lambda: credential.data.get("instance_url"))

    def trusts(self, url: object) -> bool:
        origin = origin_of(url)
        if origin is None:
            return False
        if origin in self.origins:
            return True
        return self._live_instance_url is not None and origin_of(self._live_instance_url()) == origin

    def describe(self) -> str:
        if not self.origins:
            return "the credential names no origin: set cfg.baseUrl or cfg.oauth2.api_origins"
        known = ", ".join(sorted(format_origin(o) for o in self.origins))
        return f"not one of the credential's origins ({known}); list it in cfg.oauth2.api_origins if it should get it"


def _listed_origins(raw: object) -> list[Origin]:
    if raw is None:
        return []
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise ConfigurationError(
            f"cfg.oauth2.api_origins must be a list of origins like https://api.example.com, got {type(raw).__name__}"
        )
    out: list[Origin] = []
    for index, item in enumerate(items):
        origin = origin_of(item)
        parts = urlsplit(item.strip()) if isinstance(item, str) and origin is not None else None
        if (
            origin is None
            or parts is None
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or "@" in parts.netloc
        ):
            shown = "a URL with user info (not shown)" if "@" in str(item) else repr(item)[:80]
            raise ConfigurationError(
                f"cfg.oauth2.api_origins[{index}] must be an origin scheme://host[:port] (http or https, "
                f"no path, no user info), got {shown}"
            )
        out.append(origin)
    return out


class _WarnOnce:
    """Remembers which (account, origin) pairs were warned about; bounded, thread-safe."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._seen: set[tuple[str, Origin | None]] = set()
        self._lock = threading.Lock()

    def first(self, key: tuple[str, Origin | None]) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            if len(self._seen) >= self.LIMIT:
                self._seen.clear()
            self._seen.add(key)
            return True


_withheld = _WarnOnce()


def _warn_withheld(account: str, url: str | None, origins: ApiOrigins) -> None:
    origin = origin_of(url)
    if not _withheld.first((account, origin)):
        return
    where = format_origin(origin) if origin is not None else "a URL that is not absolute http(s)"
    log.warning(
        "ctx.http does not send the token of account %s to %s: %s",
        account,
        where,
        origins.describe(),
        extra={"account": account, "origin": where},
    )


# -- timeouts --------------------------------------------------------------------------------------
def http_timeout(cfg: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> tuple[float, float]:
    """The default ``(connect, read)`` timeout of ctx.http: cfg.oauth2.http_timeout, else environment, else 10/60 s."""
    oauth2 = cfg.get("oauth2")
    raw = oauth2.get("http_timeout") if isinstance(oauth2, Mapping) else None
    if raw is not None:
        field = "cfg.oauth2.http_timeout"
        if isinstance(raw, (list, tuple)):
            if len(raw) != 2:
                raise ConfigurationError(f"{field} must be one number or [connect, read], got {len(raw)} values")
            return _seconds(raw[0], f"{field}[0]"), _seconds(raw[1], f"{field}[1]")
        value = _seconds(raw, field)
        return value, value
    env = os.environ if environ is None else environ
    connect, read = env.get(CONNECT_TIMEOUT_ENV, "").strip(), env.get(READ_TIMEOUT_ENV, "").strip()
    return (
        _seconds(connect, CONNECT_TIMEOUT_ENV) if connect else DEFAULT_CONNECT_TIMEOUT,
        _seconds(read, READ_TIMEOUT_ENV) if read else DEFAULT_READ_TIMEOUT,
    )


def _seconds(value: object, field: str) -> float:
    number: float | None = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            number = float(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise ConfigurationError(f"{field} must be a positive number of seconds, got {repr(value)[:40]}")
    return number


# -- the sessions ----------------------------------------------------------------------------------
class HttpSession(requests.Session):
    """A session with a default timeout whose Authorization never follows a redirect to another origin."""

    def __init__(self, timeout: tuple[float, float]) -> None:
        super().__init__()
        self.default_timeout = timeout

    def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if "timeout" not in kwargs and len(args) < 7:  # the 7th positional after url is timeout
            kwargs["timeout"] = self.default_timeout
        return super().request(method, url, *args, **kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.default_timeout)  # a direct send(prepared) without timeout
        return super().send(request, **kwargs)

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        previous = response.request.url if response.request is not None else None
        if origin_of(previous) != origin_of(prepared_request.url) or origin_of(previous) is None:
            prepared_request.headers.pop("Authorization", None)
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]


class _PooledSession(HttpSession):
    """A session on the manager's shared connection pool; closing it leaves the pool open."""

    def __init__(self, adapter: requests.adapters.HTTPAdapter, timeout: tuple[float, float]) -> None:
        super().__init__(timeout)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def close(self) -> None:
        self.adapters.clear()


class BearerAuth(AuthBase):
    """A static bearer token, attached only to ``origins`` (a header the caller set wins)."""

    def __init__(self, token: str, origins: ApiOrigins, account: str) -> None:
        self.token, self.origins, self.account = token, origins, account

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if not self.origins.trusts(request.url):
            _warn_withheld(self.account, request.url, self.origins)
        elif "Authorization" not in request.headers:
            request.headers["Authorization"] = f"Bearer {self.token}"
        return request


def static_session(cfg: Mapping[str, Any], *, account: str, environ: Mapping[str, str] | None = None) -> HttpSession:
    """A session without refresh: ``cfg.oauth.access_token`` as a bearer for the cfg's origins, if there is one."""
    session = HttpSession(http_timeout(cfg, environ))
    oauth = cfg.get("oauth")
    if isinstance(oauth, Mapping) and isinstance(oauth.get("access_token"), str):
        session.auth = BearerAuth(oauth["access_token"], ApiOrigins.from_cfg(cfg), account)
    return session


def authorized_session(
    manager: CredentialManager,
    cfg: dict[str, Any],
    *,
    sink: EventSink,
    refresh_hook: RefreshHook | None = None,
    environ: Mapping[str, str] | None = None,
) -> requests.Session:
    """A session keeping the credential of ``cfg`` alive for its origins; its updateKeys events go to ``sink``.

    Raises ConfigurationError for a malformed ``oauth2.api_origins`` or ``oauth2.http_timeout``.
    """
    session = _PooledSession(manager.http_adapter, http_timeout(cfg, environ))
    credential = manager.credential(cfg, sink=sink, refresh_hook=refresh_hook)
    session.auth = OAuth2Auth(credential)
    return session


# -- the OAuth2 flow -------------------------------------------------------------------------------
def is_unauthorized(response: requests.Response) -> bool:
    """401, or a 400/403 whose challenge or body says ``invalid_token``."""
    if response.status_code == 401:
        return True
    if response.status_code not in (400, 403):
        return False
    if "invalid_token" in response.headers.get("WWW-Authenticate", ""):
        return True
    if "json" not in response.headers.get("Content-Type", ""):
        return False
    try:
        body = json.loads(response.content or b"null")
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("error") == "invalid_token"


def _resendable(request: requests.PreparedRequest) -> bool:
    return request.body is None or isinstance(request.body, (bytes, str))


def oauth2_flow(
    request: requests.PreparedRequest,
    credential: BoundCredential,
    started_at: float,
    origins: ApiOrigins | None = None,
) -> Flow:
    """Send with the current (proactively refreshed) token; on 401 refresh once and resend once.

    The flow attaches the token to the request it is given: the caller decides whether the request
    is for the credential (:class:`OAuth2Auth` runs it only for a trusted origin). With ``origins``
    the resend is checked again, so it can never carry the token elsewhere.
    """
    token = credential.token_for_request(started_at)
    if token:
        request.headers["Authorization"] = f"Bearer {token}"
    response = yield request
    if not is_unauthorized(response) or not credential.can_refresh or not _resendable(request):
        return
    retry = request.copy()
    if origins is not None and not origins.trusts(retry.url):
        return
    fresh = credential.refresh_after_401(token)
    retry.headers["Authorization"] = f"Bearer {fresh}"
    response = yield retry
    if is_unauthorized(response):
        credential.rejected_after_refresh(fresh)  # no more refreshes on this token's 401s for a cooldown
        raise TokenRejected(
            f"the API at {_where(request)} rejects a freshly refreshed token for account {credential.account} "
            f"({response.status_code} after refresh): check the scopes and the API's client configuration",
            account=credential.account,
        )


def _where(request: requests.PreparedRequest) -> str:
    url = request.url or "?"
    return f"{request.method} {url.split('?', 1)[0]}"


class OAuth2Auth(AuthBase):
    """requests auth keeping one account's credential alive, for the credential's own origins only."""

    def __init__(self, credential: BoundCredential, origins: ApiOrigins | None = None) -> None:
        self.credential = credential
        self.origins = origins if origins is not None else ApiOrigins.for_credential(credential)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if not self.origins.trusts(request.url):
            _warn_withheld(self.credential.account, request.url, self.origins)
            return request
        flow = oauth2_flow(request, self.credential, self.credential.manager.clock(), self.origins)
        prepared = next(flow)
        answered = threading.Event()

        def on_response(response: requests.Response, **kwargs: Any) -> requests.Response:
            # the hooks travel with redirected copies of the request: only its own first answer drives the flow
            if answered.is_set() or response.request is not prepared:
                return response
            answered.set()
            return self._continue(flow, response, kwargs)

        prepared.register_hook("response", on_response)  # type: ignore[no-untyped-call]
        return prepared

    def _continue(self, flow: Flow, response: requests.Response, send_kwargs: dict[str, Any]) -> requests.Response:
        try:
            retry = flow.send(response)
        except StopIteration:
            return response
        # consume and release the first answer before resending on the same adapter
        _ = response.content
        response.close()
        retry.hooks = {"response": []}
        first = response.request
        if response.raw is not None and first is not None:
            extract_cookies_to_jar(retry._cookies, first, response.raw)  # type: ignore[attr-defined,no-untyped-call]
            retry.prepare_cookies(retry._cookies)  # type: ignore[attr-defined]
        if first is not None:
            # redirects of the resent answer are built from the first request: they carry the fresh token
            # (and requests/HttpSession strip it when a redirect leaves the origin)
            first.headers["Authorization"] = retry.headers["Authorization"]
        connection = response.connection
        second: requests.Response = connection.send(retry, **send_kwargs)
        second.history.append(response)
        second.request = retry
        with contextlib.suppress(StopIteration):
            flow.send(second)
        return second
