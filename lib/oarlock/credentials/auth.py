"""``ctx.http``'s auth: an httpx-style flow (send; on 401 refresh, resend once) on top of requests.

The flow is a generator that yields requests and receives responses, so it is testable
without a network (:func:`oauth2_flow`); :class:`OAuth2Auth` drives it inside requests
through a response hook, the way requests' own digest auth resends. :func:`authorized_session`
is what ``ctx.http`` is: a session on the manager's shared connection pool with this auth.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Generator
from typing import Any

import requests
import requests.adapters
from requests.auth import AuthBase
from requests.cookies import extract_cookies_to_jar

from oarlock.credentials.manager import BoundCredential, CredentialManager, RefreshHook
from oarlock.errors import TokenRejected
from oarlock.protocol.events import EventSink

Flow = Generator[requests.PreparedRequest, requests.Response, None]


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


def oauth2_flow(request: requests.PreparedRequest, credential: BoundCredential, started_at: float) -> Flow:
    """Send with the current (proactively refreshed) token; on 401 refresh once and resend once."""
    token = credential.token_for_request(started_at)
    if token:
        request.headers["Authorization"] = f"Bearer {token}"
    response = yield request
    if not is_unauthorized(response) or not credential.can_refresh or not _resendable(request):
        return
    fresh = credential.refresh_after_401(token)
    retry = request.copy()
    retry.headers["Authorization"] = f"Bearer {fresh}"
    response = yield retry
    if is_unauthorized(response):
        raise TokenRejected(
            f"the API at {_where(request)} rejects a freshly refreshed token for account {credential.account} "
            f"({response.status_code} after refresh): check the scopes and the API's client configuration",
            account=credential.account,
        )


def _where(request: requests.PreparedRequest) -> str:
    url = request.url or "?"
    return f"{request.method} {url.split('?', 1)[0]}"


class OAuth2Auth(AuthBase):
    """requests auth keeping one account's credential alive."""

    def __init__(self, credential: BoundCredential) -> None:
        self.credential = credential

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        flow = oauth2_flow(request, self.credential, self.credential.manager.clock())
        prepared = next(flow)

        def on_response(response: requests.Response, **kwargs: Any) -> requests.Response:
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
        retry.hooks["response"] = []
        if response.raw is not None and response.request is not None:
            extract_cookies_to_jar(retry._cookies, response.request, response.raw)  # type: ignore[attr-defined,no-untyped-call]
            retry.prepare_cookies(retry._cookies)  # type: ignore[attr-defined]
        connection = response.connection
        second: requests.Response = connection.send(retry, **send_kwargs)
        second.history.append(response)
        second.request = retry
        with contextlib.suppress(StopIteration):
            flow.send(second)
        return second


def authorized_session(
    manager: CredentialManager, cfg: dict[str, Any], *, sink: EventSink, refresh_hook: RefreshHook | None = None
) -> requests.Session:
    """A ``requests.Session`` keeping the credential of ``cfg`` alive; its updateKeys events go to ``sink``."""
    session = _PooledSession(manager.http_adapter)
    session.auth = OAuth2Auth(manager.credential(cfg, sink=sink, refresh_hook=refresh_hook))
    return session


class _PooledSession(requests.Session):
    """A session on the manager's shared connection pool; closing it leaves the pool open."""

    def __init__(self, adapter: requests.adapters.HTTPAdapter) -> None:
        super().__init__()
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def close(self) -> None:
        self.adapters.clear()
