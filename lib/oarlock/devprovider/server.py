"""The dev provider's HTTP surface: an OAuth2 token endpoint and a small protected REST API.

``DevProvider(clock=...)`` takes the clock its tokens live by: a callable returning epoch
seconds (default ``time.time``). Access-token expiry, ``expires_in``/``issued_at``,
``/__mint``, ``mint()`` and the ``expires_at`` written by ``cfg()`` all read it, so a test
holding a :class:`~oarlock.devprovider.state.ManualClock` expires tokens with
``clock.advance(ttl)`` instead of sleeping. Simulated latency (``latency_ms``,
``token_latency_ms``) and the rate limit keep to real time. ``oarlock dev-provider`` always
runs on the real clock.

``DevProvider(routes=...)`` adds API routes of one's own beside ``/api/me`` and ``/api/items``
(:func:`oarlock.devprovider.routes.load_routes`): each answers a fixed JSON body and status,
behind the same bearer-token check unless ``"auth": false``; ``provider.route(...)`` adds or replaces one at run time, and
``provider.received`` lists the API requests (method, path, query, JSON body) in arrival order.

``GET /authorize`` (:mod:`oarlock.devprovider.authorize`) approves at once: a 302 to the
``redirect_uri`` with ``code`` and ``state``; PKCE (S256, plain) is checked when the code is redeemed.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from oarlock.devprovider.authorize import Refusal, authorize
from oarlock.devprovider.routes import Route, RouteKey, load_routes
from oarlock.devprovider.state import AccessToken, Clock, ManualClock, ProviderState, Rotation, Settings, TokenError

MAINTENANCE_PAGE = b"<html><body><h1>503 Service Unavailable</h1><p>try again later</p></body></html>"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    state: ProviderState
    log_requests: bool
    routes: dict[RouteKey, Route]
    received: collections.deque[dict[str, Any]]

    def server_bind(self) -> None:
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().server_bind()

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.open_connections.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self.connections_lock:
                self.open_connections.discard(request)

    def close_open_connections(self) -> None:
        """End keep-alive connections too, so a stopped provider really stops answering."""
        with self.connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that hangs up mid-answer is not news (and a traceback could quote a request)."""
        if self.log_requests:
            print(f"dev provider: error while answering: {type(sys.exc_info()[1]).__name__}", file=sys.stderr)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    _cached_body: bytes | None = None
    # headers and body go out in two writes: without this, Nagle + delayed ACK stall keep-alive clients 40 ms
    disable_nagle_algorithm = True

    # -- plumbing -------------------------------------------------------------------------------
    @property
    def state(self) -> ProviderState:
        return self.server.state

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the standard messages may quote a whole request line."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.server.log_requests:
            path = urlsplit(self.path).path  # never the query: it may carry a code
            status = code.value if hasattr(code, "value") else code
            print(f"{self.command} {path} {status}", file=sys.stderr, flush=True)

    def _body(self) -> bytes:
        """The request body, read once (every request's body is drained so keep-alive stays in step)."""
        cached = self._cached_body
        if cached is None:
            length = int(self.headers.get("Content-Length") or 0)
            cached = self.rfile.read(length) if length > 0 else b""
            self._cached_body = cached
        return cached

    def _form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self._body().decode("utf-8", "replace")).items()}

    def _send(
        self,
        status: int,
        payload: Any = None,
        *,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> None:
        body = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json_body(self) -> Any:
        raw = self._body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            return None

    # -- routing --------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def _route(self, method: str) -> None:
        self._cached_body = None
        try:
            self._body()
        except ValueError:
            self.close_connection = True
            return self._send(400, {"error": "invalid_request", "error_description": "bad Content-Length"})
        try:
            self._dispatch(method)
        except (ConnectionError, TimeoutError):
            raise
        except Exception as exc:  # a bug here must answer, not hang the client
            self.close_connection = True
            self._send(500, {"error": "server_error", "error_description": type(exc).__name__})

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        route = (method, parts.path.rstrip("/") or "/")
        if route == ("POST", "/token"):
            return self._token()
        if route == ("GET", "/authorize"):
            return self._authorize(query)
        if route == ("GET", "/__stats"):
            return self._send(200, self.state.snapshot_stats())
        if route == ("POST", "/__mint"):
            data = self._json_body() or {}
            return self._send(200, self.state.mint(str(data.get("subject", "user-1")), data.get("scope")))
        if route == ("POST", "/__revoke"):
            data = self._json_body() or {}
            return self._send(200, {"revoked": self.state.revoke(data.get("subject"))})
        if route == ("POST", "/revoke"):
            return self._revoke_one()
        own = self.server.routes.get(route)
        if own is not None:
            return self._own_route(own, method, parts.path, query)
        if parts.path.startswith("/api/"):
            return self._api(method, parts.path, query)
        self._send(404, {"error": "not_found", "path": parts.path})

    # -- OAuth2 ----------------------------------------------------------------------------------
    def _authorize(self, query: dict[str, str]) -> None:
        try:
            location = authorize(self.state, query)
        except Refusal as exc:
            return self._send(400, exc.body)
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _client(self, form: dict[str, str]) -> tuple[str | None, str | None]:
        header = self.headers.get("Authorization", "")
        if header.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None, None
            client_id, _, secret = decoded.partition(":")
            return unquote(client_id), unquote(secret)  # RFC 6749 2.3.1 form-encoding, read leniently (a raw + stays +)
        return form.get("client_id"), form.get("client_secret")

    def _revoke_one(self) -> None:
        """RFC 7009: the client authenticates; the answer is 200 whether or not the token was known."""
        form = self._form()
        try:
            self.state.check_client(*self._client(form))
        except TokenError as exc:
            return self._send(exc.status, {"error": exc.error, "error_description": exc.description})
        self.state.revoke_token(form.get("token", ""))
        self._send(200, {})

    def _token(self) -> None:
        form = self._form()
        grant = form.get("grant_type", "")
        state = self.state
        refusal = state.enter_token_call(grant)
        try:
            if state.settings.token_latency_ms:  # inside the call, so max_concurrent_token_calls sees overlaps
                time.sleep(state.settings.token_latency_ms / 1000)
            if refusal is not None:
                status, retry_after = refusal
                if status == 503:
                    return self._send(503, raw=MAINTENANCE_PAGE, content_type="text/html")
                return self._send(
                    429,
                    {"error": "rate_limited", "error_description": "slow down"},
                    headers={"Retry-After": str(int(retry_after))},
                )
            state.check_client(*self._client(form))
            if not grant:
                raise TokenError(400, "invalid_request", "grant_type is missing")
            if grant == "refresh_token":
                response = state.grant_refresh(form.get("refresh_token"), form.get("scope"))
            elif grant == "client_credentials":
                response = state.client_credentials(form.get("scope"))
            elif grant == "authorization_code":
                response = state.redeem_code(
                    form.get("code"),
                    client_id=self._client(form)[0],
                    redirect_uri=form.get("redirect_uri"),
                    verifier=form.get("code_verifier"),
                )
            else:
                raise TokenError(400, "unsupported_grant_type", f"grant_type {grant!r} is not supported")
            self._send(200, response)
        except TokenError as exc:
            self._send(exc.status, {"error": exc.error, "error_description": exc.description})
        finally:
            state.leave_token_call()

    # -- protected API ---------------------------------------------------------------------------
    def _received(self, method: str, path: str, query: dict[str, str]) -> None:
        """Recorded for ``provider.received`` (never a header: the Authorization header is a secret)."""
        body = self._json_body() if self._body() else None
        self.server.received.append({"method": method, "path": path, "query": query, "json": body})
        if self.state.settings.latency_ms:
            time.sleep(self.state.settings.latency_ms / 1000)

    def _unauthorized(self, reason: str) -> None:
        challenge = f'Bearer error="invalid_token", error_description="{reason}"'
        self._send(
            401, {"error": "invalid_token", "error_description": reason}, headers={"WWW-Authenticate": challenge}
        )

    def _own_route(self, route: Route, method: str, path: str, query: dict[str, str]) -> None:
        self._received(method, path, query)
        token = self.state.authorize(self.headers.get("Authorization")) if route.auth else None
        if isinstance(token, str):
            return self._unauthorized(token)
        self._send(route.status, route.json, headers=route.headers, raw=b"" if route.status in (204, 304) else None)

    def _api(self, method: str, path: str, query: dict[str, str]) -> None:
        settings = self.state.settings
        self._received(method, path, query)
        token = self.state.authorize(self.headers.get("Authorization"))
        if not isinstance(token, AccessToken):
            return self._unauthorized(token)
        if (method, path) == ("GET", "/api/me"):
            return self._send(200, {"subject": token.subject, "client_id": settings.client_id, "scope": token.scope})
        if (method, path) == ("GET", "/api/items"):
            try:
                since = int(query.get("since", 0))
            except ValueError:
                return self._send(400, {"error": "since must be an integer"})
            return self._send(200, {"items": self.state.list_items(since)})
        if (method, path) == ("POST", "/api/items"):
            data = self._json_body()
            if not isinstance(data, dict):
                return self._send(400, {"error": "the body must be a JSON object"})
            return self._send(201, self.state.add_item(data))
        self._send(404, {"error": "not_found", "path": path})


class DevProvider:
    """A real local OAuth2 authorization server plus a protected API, on 127.0.0.1.

    ``clock`` (epoch seconds, default ``time.time``) decides when tokens expire; pass a
    :class:`~oarlock.devprovider.state.ManualClock` to move time by hand.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ttl: float = 3600,
        rotation: Rotation = "none",
        expires_in: bool = True,
        expires_in_as_string: bool = False,
        omit_refresh_token: bool = False,
        fail_first: int = 0,
        throttle_first: int = 0,
        rate_limit: float = 0,
        retry_after: float = 1,
        latency_ms: float = 0,
        token_latency_ms: float = 0,
        client_id: str = "oarlock-dev",
        client_secret: str = "oarlock-dev-secret",
        extra_fields: dict[str, Any] | None = None,
        log_requests: bool = False,
        clock: Clock = time.time,
        routes: Any = None,
    ) -> None:
        if rotation not in ("none", "rotate", "single-use"):
            raise ValueError(f"rotation must be none, rotate or single-use, not {rotation!r}")
        self.settings = Settings(
            ttl=ttl,
            rotation=rotation,
            expires_in=expires_in,
            expires_in_as_string=expires_in_as_string,
            omit_refresh_token=omit_refresh_token,
            fail_first=fail_first,
            throttle_first=throttle_first,
            rate_limit=rate_limit,
            retry_after=retry_after,
            latency_ms=latency_ms,
            token_latency_ms=token_latency_ms,
            client_id=client_id,
            client_secret=client_secret,
            extra_fields=dict(extra_fields or {}),
        )
        self.clock = clock
        self.state = ProviderState(self.settings, clock=clock)
        self._host, self._port, self._log_requests = host, port, log_requests
        #: the routes of one's own (:func:`load_routes`); :meth:`route` changes them while it runs
        self.routes = load_routes(routes)
        #: the API requests received, oldest first (the last 1000): method, path, query, json body
        self.received: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self._server: _Server | None = None
        self._address: str | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> DevProvider:
        server = _Server((self._host, self._port), _Handler)
        server.state = self.state
        server.log_requests = self._log_requests
        server.routes, server.received = self.routes, self.received
        self._server = server
        host, port = server.server_address[:2]
        self._address = f"http://{host!s}:{port}"  # kept after stop(): the address it had
        self.state.instance_url = self._address
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="oarlock-dev-provider", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_open_connections()

    def serve_forever(self) -> None:
        """Block until stop() is called from another thread (or a signal handler)."""
        if self._thread is not None:
            while self._server is not None and self._thread.is_alive():
                self._thread.join(0.2)

    def __enter__(self) -> DevProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._address is None:
            raise RuntimeError("the dev provider is not started")
        return self._address

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def authorize_url(self) -> str:
        return f"{self.url}/authorize"

    # -- test controls ---------------------------------------------------------------------------
    def mint(self, subject: str = "user-1", scope: str | None = None) -> dict[str, Any]:
        return self.state.mint(subject, scope)

    def cfg(self, *, account: str = "acct-1", subject: str = "user-1", **oauth2: Any) -> dict[str, Any]:
        """A ready oarlock cfg for this provider: a freshly minted credential and how to refresh it.

        ``oauth.expires_at`` is on the provider's clock (the real time unless a clock was injected).
        """
        token = self.mint(subject)
        oauth = dict(token)
        if "expires_in" in token:
            oauth["expires_at"] = self.clock() + float(token["expires_in"])
        return {
            "_account": account,
            "baseUrl": self.url,
            "oauth": oauth,
            "oauth2": {
                "token_uri": self.token_url,
                "client_id": self.settings.client_id,
                "client_secret": self.settings.client_secret,
                "client_auth": "post",
                **oauth2,
            },
        }

    def stats(self) -> dict[str, Any]:
        return self.state.snapshot_stats()

    def advance(self, seconds: float) -> float:
        """Move the provider's ManualClock forward (its tokens expire without sleeping); returns the new time."""
        if not isinstance(self.clock, ManualClock):
            raise RuntimeError("advance() needs a provider started with clock=ManualClock()")
        return self.clock.advance(seconds)

    def route(self, method: str, path: str, *, status: int = 200, json: Any = None, **answer: Any) -> None:
        """Add or replace a route of one's own (``headers=``, ``auth=`` as in :func:`load_routes`)."""
        self.routes.update(load_routes({(method, path): {"status": status, "json": json, **answer}}))

    def reset_stats(self) -> None:
        with self.state.lock:
            self.state.reset_stats()

    def revoke(self, subject: str | None = None) -> int:
        return self.state.revoke(subject)

    def configure(self, **changes: Any) -> None:
        """Change constructor options at run time, e.g. ``configure(fail_first=3)`` (thread-safe)."""
        if "log_requests" in changes:
            self._log_requests = bool(changes.pop("log_requests"))
            if self._server is not None:
                self._server.log_requests = self._log_requests
        if changes.get("rotation", "none") not in ("none", "rotate", "single-use"):
            raise ValueError(f"rotation must be none, rotate or single-use, not {changes['rotation']!r}")
        self.state.configure(changes)
