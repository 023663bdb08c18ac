"""``oarlock keys serve --http HOST:PORT``: sailor's account route, served from the keys store.

The route a sailor-nodejs worker (and oarlock's ``api`` updateKeys route,
:mod:`oarlock.keys.platform_api`) PUTs a refreshed credential to, so both kinds of worker persist
into the same store, and the route a worker or a platform reads the newest credential from:

- ``PUT /v1/accounts/{id}`` with ``{"keys": {"oauth": TOKEN_SET, "oauth2": SETTINGS?, …}}``: the
  token set (an object with ``access_token`` or ``refresh_token``) is stored through
  :func:`oarlock.keys.reauth.store_authorization` as the newest version, with the refresh
  settings of ``keys.oauth2`` (never its client secret). A token set carrying its own
  ``oarlock_lineage`` (an oarlock worker's refresh) keeps its lineage and is refused (``stored:
  false``) when the store holds a descendant of it or a newer version of it; any other is a new
  authorization and wins. Answered after the commit: 200 ``{"id", "version", "stored"}``.
- ``GET /v1/accounts/{id}``: 200 ``{"id", "keys": {"oauth": …}, "version", "state", "updated_at"}``
  (``state``: the stored version's state; ``updated_at``: ISO 8601 UTC), 404 when unknown.
- ``GET /healthz`` (no auth): 200 ``{"status": "ok", "broker": true, "store": true}`` while the broker
  consumer is connected and the store answers a cheap read (cached for a second), else 503.

Both account routes need HTTP basic auth with ``OARLOCK_API_USERNAME`` / ``OARLOCK_API_KEY``
(compared in constant time); 401 with ``WWW-Authenticate`` otherwise. 400 for a body that is not
JSON, nested deeper than 200 levels or without a token set in ``keys.oauth``; 411 without a length;
413 above 1 MiB (``Content-Length`` checked before reading, a chunked body read up to 1 MiB + 1);
404 for other paths, 405 for other methods; 503 when the store cannot take the request in 30 s
(the message names the store, never a secret). Every socket has a 10 s timeout, at most 64
connections are served at once, a garbage request gets 400 and the server goes on. One log line
per request (method, path, status, duration; ``/healthz`` answered 200 at debug level), never a
header or a body.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, TypeVar
from urllib.parse import unquote, urlsplit

from oarlock.credentials.token import LINEAGE_FIELD
from oarlock.errors import ConfigurationError, DecodeError, KeyStoreError
from oarlock.jsonlimits import loads
from oarlock.keys.accounts import ACTIVE, refresh_settings
from oarlock.keys.alerts import iso_utc
from oarlock.keys.base import KeyStore
from oarlock.keys.reauth import store_authorization
from oarlock.metrics.address import parse_address
from oarlock.redact import redact_text, register_credential
from oarlock.serving import ServerThread

log = logging.getLogger("oarlock.keys.http")

USERNAME_ENV = "OARLOCK_API_USERNAME"
KEY_ENV = "OARLOCK_API_KEY"
MAX_BODY = 1024 * 1024
REQUEST_TIMEOUT_SECONDS = 10.0
STORE_TIMEOUT_SECONDS = 30.0
HEALTH_TIMEOUT_SECONDS = 2.0
HEALTH_CACHE_SECONDS = 1.0
MAX_CONNECTIONS = 64
ACCOUNTS = "/v1/accounts/"
HEALTH = "/healthz"
HEALTH_PROBE_ACCOUNT = "oarlock-healthz-probe"
T = TypeVar("T")


class ApiCredentials(NamedTuple):
    username: str
    key: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiCredentials | None:
        """Both variables set and not empty, else None."""
        env = os.environ if environ is None else environ
        username, key = env.get(USERNAME_ENV, ""), env.get(KEY_ENV, "")
        return cls(username, key) if username and key else None

    def accepts(self, header: str | None) -> bool:
        """Whether an Authorization header is basic auth with these credentials (constant-time compare)."""
        if not header or header[:6].lower() != "basic ":
            return False
        try:
            user, colon, key = base64.b64decode(header[6:].strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        same_user = hmac.compare_digest(user, self.username.encode("utf-8"))
        same_key = hmac.compare_digest(key, self.key.encode("utf-8"))
        return bool(colon) and same_user & same_key


class _Answer(Exception):
    """An answer decided before the end of the handler (a 4xx), with whether the connection must close."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


def account_of(path: str) -> str | None:
    """The account id of ``/v1/accounts/{id}`` (URL-decoded), None for any other path."""
    if not path.startswith(ACCOUNTS):
        return None
    raw = path[len(ACCOUNTS) :]
    if not raw or "/" in raw:
        return None
    account = unquote(raw)
    if len(account) > 512 or any(ord(c) < 32 for c in account):
        return None
    return account


class AccountsServer:
    """The running route; :meth:`close` stops it. The store is used from a few threads of its own."""

    def __init__(
        self,
        address: tuple[str, int],
        store: KeyStore,
        credentials: ApiCredentials,
        *,
        broker_ok: Callable[[], bool] = lambda: True,
        store_timeout: float = STORE_TIMEOUT_SECONDS,
    ) -> None:
        self.store = store
        self.credentials = credentials
        self.broker_ok = broker_ok
        self.store_timeout = store_timeout
        self.puts = 0  # credentials PUT and stored
        # a few long-lived threads: each keeps its own store connection (ThreadingHTTPServer's are per request)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="oarlock-accounts-store")
        self._health_lock = threading.Lock()
        self._health: tuple[float, bool] = (-HEALTH_CACHE_SECONDS, False)
        self._serving = ServerThread(_Server(address, self), name="oarlock-accounts")
        self.host, self.port = self._serving.host, self._serving.port

    @property
    def url(self) -> str:
        return self._serving.url

    def close(self) -> None:
        self._serving.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the routes (handler threads) ----------------------------------------------------------------
    def put(self, account: str, body: bytes) -> dict[str, Any]:
        """Store the PUT's token set; the answer's JSON. _Answer(400) for a bad body, KeyStoreError."""
        try:
            payload = loads(body, what="the request body")
        except DecodeError as exc:
            raise _Answer(400, str(exc)) from None
        keys = payload.get("keys") if isinstance(payload, dict) else None
        if not isinstance(keys, dict):
            raise _Answer(400, 'the request body must be a JSON object {"keys": {"oauth": {...}}}')
        oauth = keys.get("oauth")
        if not isinstance(oauth, dict) or not any(
            isinstance(oauth.get(name), str) and oauth[name] for name in ("access_token", "refresh_token")
        ):
            raise _Answer(400, "keys.oauth must be a token set: an object with access_token or refresh_token")
        register_credential(oauth)
        settings = refresh_settings(keys.get("oauth2"))
        fresh = LINEAGE_FIELD not in oauth  # an oarlock worker's refresh carries its own lineage
        return self._in_store(self._store_put, account, dict(oauth), settings, fresh)

    def _store_put(
        self, account: str, oauth: dict[str, Any], settings: dict[str, Any] | None, fresh: bool
    ) -> dict[str, Any]:
        # the lineage check and the write under the account's lock: an oarlock worker's PUT of a refresh only
        # when it wins; a re-authorization after any refresh in flight, over it
        done = store_authorization(self.store, account, oauth, settings=settings, fresh=fresh, only_if_newer=not fresh)
        if done.written:
            self.puts += 1
        return {"id": account, "version": done.version, "stored": done.written}

    def get(self, account: str) -> dict[str, Any] | None:
        return self._in_store(self._store_get, account)

    def _store_get(self, account: str) -> dict[str, Any] | None:
        stored = self.store.get(account)
        if stored is None:
            return None
        state = self.store.state(account)
        return {
            "id": account,
            "keys": {"oauth": stored.oauth},
            "version": stored.version,
            "state": state.effective(stored.version) if state is not None else ACTIVE,
            "updated_at": iso_utc(stored.updated_at),
        }

    def health(self) -> dict[str, Any]:
        broker = bool(self.broker_ok())
        store = self._store_answers()
        return {"status": "ok" if broker and store else "unavailable", "broker": broker, "store": store}

    def _store_answers(self) -> bool:
        with self._health_lock:
            checked_at, answered = self._health
            if time.monotonic() - checked_at < HEALTH_CACHE_SECONDS:
                return answered
            try:
                self._in_store(self.store.state, HEALTH_PROBE_ACCOUNT, timeout=HEALTH_TIMEOUT_SECONDS)
                answered = True
            except Exception as exc:
                if answered or checked_at < 0:
                    log.warning("/healthz: the keys store does not answer: %s", redact_text(str(exc)))
                answered = False
            self._health = (time.monotonic(), answered)
            return answered

    def _in_store(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """``fn(*args)`` on a store thread, within the store timeout (KeyStoreError past it)."""
        limit = self.store_timeout if timeout is None else timeout
        future = self._pool.submit(fn, *args)
        try:
            return future.result(limit)
        except FutureTimeout:
            future.cancel()
            raise KeyStoreError(f"the keys store did not answer within {limit:g} s") from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], accounts: AccountsServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.accounts = accounts
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # a flood of connections: the newest are dropped
            log.warning("account route: %s connections already open: one dropped", MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line instead of a traceback on stderr; the server goes on."""
        kind = sys.exc_info()[0]
        log.warning("account route: a request failed: %s", kind.__name__ if kind else "unknown error")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_SECONDS  # every read and write of the socket: a slow client is dropped
    protocol_version = "HTTP/1.1"
    server_version = "oarlock-keys"

    def version_string(self) -> str:
        return self.server_version

    _started = 0.0

    def parse_request(self) -> bool:
        self._started = time.monotonic()  # per request: a connection may carry several
        return super().parse_request()

    # -- methods -------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = self._path()
        if path == HEALTH:
            health = self.server.accounts.health()
            self._send(200 if health["status"] == "ok" else 503, health)
            return
        account = account_of(path)
        if account is None:
            self._not_found(path)
            return
        if not self._authorized():
            return
        try:
            found = self.server.accounts.get(account)
        except KeyStoreError as exc:
            self._send(503, {"error": redact_text(str(exc))})
            return
        if found is None:
            self._send(404, {"error": f"no credential stored for account {account}"})
            return
        self._send(200, found)

    def do_PUT(self) -> None:
        path = self._path()
        account = account_of(path)
        if account is None:
            self._wrong(path, "PUT")
            return
        if not self._authorized():
            return
        try:
            answer = self.server.accounts.put(account, self._body())
        except _Answer as exc:
            self._send(exc.status, {"error": exc.message}, close=exc.close)
            return
        except KeyStoreError as exc:
            self._send(503, {"error": redact_text(str(exc))})
            return
        self._send(200, answer)

    def _refuse(self) -> None:
        self._wrong(self._path(), self.command)

    do_POST = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse

    # -- pieces --------------------------------------------------------------------------------------
    def _path(self) -> str:
        return urlsplit(self.path).path

    def _wrong(self, path: str, method: str) -> None:
        """405 on a known path (after the body is dropped with the connection), else 404."""
        allowed = "GET" if path == HEALTH else "GET, PUT" if account_of(path) is not None else None
        if allowed is None:
            self._not_found(path, close=self._skip_body())
            return
        self._send(
            405,
            {"error": f"{method} is not allowed on {path}: use {allowed}"},
            close=self._skip_body(),
            headers={"Allow": allowed},
        )

    def _not_found(self, path: str, *, close: bool = False) -> None:
        self._send(404, {"error": f"no such route: use GET/PUT {ACCOUNTS}{{id}} or GET {HEALTH}"}, close=close)

    def _skip_body(self) -> bool:
        """Read and drop a refused request's body of at most MAX_BODY bytes; True when the connection must close."""
        length = self.headers.get("Content-Length", "").strip()
        if self.headers.get("Transfer-Encoding"):
            return True
        if not length or length == "0":
            return False
        if not length.isdigit() or int(length) > MAX_BODY:
            return True
        try:
            return len(self.rfile.read(int(length))) < int(length)
        except OSError:  # a client too slow: the timeout
            return True

    def _authorized(self) -> bool:
        if self.server.accounts.credentials.accepts(self.headers.get("Authorization")):
            return True
        self._send(
            401,
            {"error": "basic auth with OARLOCK_API_USERNAME / OARLOCK_API_KEY required"},
            close=self._skip_body(),  # a body not read means the connection cannot carry another request
            headers={"WWW-Authenticate": 'Basic realm="oarlock keys", charset="UTF-8"'},
        )
        return False

    def _body(self) -> bytes:
        """The request body, within MAX_BODY; _Answer for 411, 413, 400 and a client too slow."""
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._chunked()
            length_text = self.headers.get("Content-Length")
            if length_text is None:
                raise _Answer(411, "a PUT needs a Content-Length (or a chunked body)", close=True)
            if not length_text.strip().isdigit():
                raise _Answer(400, "Content-Length must be a number", close=True)
            length = int(length_text)
            if length > MAX_BODY:
                raise _Answer(413, f"the body is larger than {MAX_BODY} bytes", close=True)
            body = self.rfile.read(length)
            if len(body) < length:
                raise _Answer(400, "the body ended before its Content-Length", close=True)
            return body
        except (TimeoutError, OSError):
            raise _Answer(408, f"the body did not arrive within {REQUEST_TIMEOUT_SECONDS:g} s", close=True) from None

    def _chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Answer(400, "malformed chunked body", close=True) from None
            if size < 0:
                raise _Answer(400, "malformed chunked body", close=True)
            if size == 0:
                break
            if len(body) + size > MAX_BODY:
                raise _Answer(413, f"the body is larger than {MAX_BODY} bytes", close=True)
            chunk = self.rfile.read(size)
            if len(chunk) < size or self.rfile.read(2) != b"\r\n":
                raise _Answer(400, "malformed chunked body", close=True)
            body += chunk
        for _ in range(100):  # trailers, up to the empty line
            if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                break
        return bytes(body)

    def _send(self, status: int, value: Any, *, close: bool = False, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(value, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, text in (headers or {}).items():
            self.send_header(name, text)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a garbage request line, headers too long, a method it does not know) as JSON."""
        reason = message or (HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "error")
        self._send(code, {"error": reason}, close=True)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """One line per request: method, path (no query), status, duration; never a header or the body."""
        status = int(code) if isinstance(code, int) or str(code).isdigit() else 0
        method = getattr(self, "command", None) or "-"
        path = urlsplit(getattr(self, "path", "") or "").path or "-"
        started = self._started or time.monotonic()
        level = logging.DEBUG if path == HEALTH and status == 200 else logging.INFO
        log.log(
            level,
            "%s %s: %s",
            method,
            path[:200],
            status,
            extra={"status": status, "duration_ms": round((time.monotonic() - started) * 1000, 1)},
        )

    def log_message(self, format: str, *args: Any) -> None:
        """http.server's own lines (a garbage request, a timeout) at debug level."""
        log.debug("account route: %s", redact_text(format % args))


def serve_accounts(
    address: str,
    store: KeyStore,
    credentials: ApiCredentials | None,
    *,
    broker_ok: Callable[[], bool] = lambda: True,
) -> AccountsServer:
    """Serve the account route on ``address`` (``HOST:PORT``, ``:PORT``, ``PORT``: host 127.0.0.1).

    ConfigurationError without credentials, or for an address that cannot be parsed or bound.
    """
    if credentials is None:
        raise ConfigurationError(f"--http needs {USERNAME_ENV} and {KEY_ENV} (basic auth of the account route)")
    host, port = parse_address(address, what="--http")
    try:
        server = AccountsServer((host, port), store, credentials, broker_ok=broker_ok)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigurationError(f"cannot serve the account route on {host}:{port}: {reason.lower()}") from None
    log.info("account route on %s (PUT/GET %s{id}, GET %s)", server.url, ACCOUNTS, HEALTH)
    return server


__all__ = ["KEY_ENV", "USERNAME_ENV", "AccountsServer", "ApiCredentials", "account_of", "serve_accounts"]
