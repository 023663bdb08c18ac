"""A first real token: the OAuth2 authorization-code flow with PKCE (RFC 6749 4.1, RFC 7636, RFC 8252).

:func:`login` does what ``oarlock auth login`` needs, without the CLI: it listens on
``http://127.0.0.1:PORT/callback`` (an ephemeral port unless one is given), builds the authorization
URL (``response_type=code``, the client id, that redirect_uri, the scope, a random ``state`` and an
S256 ``code_challenge`` of a random ``code_verifier``), hands it to ``show_url`` (the person opens it
and approves), waits for the provider's redirect (bounded: ``timeout`` seconds), checks its
``state``, and exchanges the code for tokens at the token endpoint through
:class:`~oarlock.credentials.endpoint.TokenClient` (the bounds of every token request: deadlines,
size cap, no redirects). It returns the token set as a credential (``obtained_at``, ``expires_at``,
lineage). Storing it is the caller's business (a cfg file, the keys store).

Every failure is a :class:`~oarlock.errors.CredentialError` whose message names what happened and
holds no secret: no code, no state, no token, no client secret. The callback page the browser
shows says whether it worked and never echoes the query.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from oarlock.credentials.endpoint import TokenClient
from oarlock.credentials.presets import RefreshSettings
from oarlock.credentials.token import TokenSet
from oarlock.errors import ConfigurationError, CredentialError, CredentialNeedsReauthorization
from oarlock.serving import ServerThread

CALLBACK_PATH = "/callback"
DEFAULT_TIMEOUT_SECONDS = 300.0
#: component.json credentials.oauth2 keys that are authorization request parameters as they are
#: (Google: ``access_type=offline`` and ``prompt=consent`` for a refresh token)
AUTHORIZE_PARAMS = ("access_type", "prompt", "audience", "resource", "login_hint")
_PAGE = (
    "<!doctype html><html><head><meta charset='utf-8'><title>oarlock</title></head>"
    "<body><h1>oarlock auth login</h1><p>{text}</p></body></html>"
)


@dataclass(frozen=True)
class LoginSettings:
    """Where to authorize and how to redeem the code: ``cfg["oauth2"]`` with component.json's defaults."""

    auth_uri: str
    token: RefreshSettings
    scope: str | None = None
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:  # the client secret stays out of every repr
        return f"LoginSettings(auth_uri={self.auth_uri!r}, token={self.token!r}, scope={self.scope!r})"

    @classmethod
    def from_oauth2(cls, oauth2: Mapping[str, Any]) -> LoginSettings:
        """From an oauth2 block (``auth_uri``, ``token_uri``, ``client_id``, ``client_secret``, ``scope``/``scopes``, …)."""
        missing = [key for key in ("auth_uri", "token_uri", "client_id") if not _text(oauth2.get(key))]
        if missing:
            raise ConfigurationError(
                f"the authorization-code flow needs oauth2.{', oauth2.'.join(missing)}: put them in component.json's "
                "credentials.oauth2 or in the cfg's oauth2"
            )
        auth_uri = str(oauth2["auth_uri"])
        for key in ("auth_uri", "token_uri"):
            if urlsplit(str(oauth2[key])).scheme not in ("http", "https"):
                raise ConfigurationError(f"oauth2.{key} must be an http(s) URL, got {str(oauth2[key])[:200]!r}")
        scope = oauth2.get("scope", oauth2.get("scopes"))
        if isinstance(scope, list):
            scope = " ".join(str(item) for item in scope)
        token = dataclasses.replace(RefreshSettings.from_cfg(oauth2), grant_type="authorization_code")
        params = {key: str(oauth2[key]) for key in AUTHORIZE_PARAMS if _text(oauth2.get(key))}
        return cls(auth_uri=auth_uri, token=token, scope=_text(scope), params=params)


@dataclass(frozen=True)
class Pkce:
    """A code_verifier and its S256 code_challenge (RFC 7636 4.1, 4.2)."""

    verifier: str
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        verifier = secrets.token_urlsafe(48)  # 64 characters of the unreserved alphabet: 384 random bits
        return cls(verifier, s256(verifier))


def s256(verifier: str) -> str:
    """BASE64URL(SHA256(ASCII(verifier))) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorization_url(settings: LoginSettings, *, redirect_uri: str, state: str, pkce: Pkce) -> str:
    """The URL the person opens: the auth_uri with the authorization request's parameters added."""
    params = {
        "response_type": "code",
        "client_id": str(settings.token.client_id),
        "redirect_uri": redirect_uri,
        **({"scope": settings.scope} if settings.scope else {}),
        **settings.params,
        "state": state,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
    }
    separator = "&" if urlsplit(settings.auth_uri).query else ("" if settings.auth_uri.endswith("?") else "?")
    return f"{settings.auth_uri}{separator}{urlencode(params)}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    received: dict[str, str] | None
    arrived: threading.Event
    expected_state: str
    first: threading.Lock


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request line carries the code."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != CALLBACK_PATH:
            return self._page(404, "Nothing here: the authorization answer goes to /callback.")
        with self.server.first:  # the first answer counts, a second one is turned away
            if self.server.received is not None:
                return self._page(409, "An answer was received already: this window can be closed.")
            query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
            self.server.received = query
        if "error" in query:
            text = "The authorization server refused: back to the terminal for why."
        elif not hmac.compare_digest(query.get("state", "").encode(), self.server.expected_state.encode()):
            text = "The answer does not belong to this login (its state differs): nothing is stored."
        else:
            text = "Authorization received: oarlock now fetches the tokens. This window can be closed."
        self._page(200 if text.startswith("Authorization") else 400, text)
        self.server.arrived.set()

    def _page(self, status: int, text: str) -> None:
        body = _PAGE.format(text=text).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(body)


class CallbackListener:
    """The loopback redirect target (RFC 8252 7.3): one answer on 127.0.0.1, then it is done."""

    def __init__(self, *, state: str, port: int = 0) -> None:
        try:
            server = _Server(("127.0.0.1", port), _Handler)
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
        server.received, server.arrived, server.expected_state = None, threading.Event(), state
        server.first = threading.Lock()
        self._server = server
        self._serving = ServerThread(server, name="oarlock-login-callback", poll_interval=0.1)
        self.port: int = self._serving.port

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}{CALLBACK_PATH}"

    def wait(self, timeout: float) -> dict[str, str]:
        """The callback's query parameters; CredentialError when none arrives within ``timeout`` seconds."""
        if not self._server.arrived.wait(timeout):
            raise CredentialError(
                f"no authorization answer reached {self.redirect_uri} within {timeout:g} s (--timeout): nothing stored"
            )
        return dict(self._server.received or {})

    def close(self) -> None:
        self._serving.close()

    def __enter__(self) -> CallbackListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def login(
    settings: LoginSettings,
    *,
    show_url: Callable[[str], None],
    account: str,
    port: int = 0,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    token_client: TokenClient | None = None,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Run the flow (module docstring) and return the new credential (``cfg["oauth"]``)."""
    state, pkce = secrets.token_urlsafe(24), Pkce.new()
    with CallbackListener(state=state, port=port) as listener:
        show_url(authorization_url(settings, redirect_uri=listener.redirect_uri, state=state, pkce=pkce))
        answer = listener.wait(timeout)
    check_answer(answer, state)
    client = token_client or TokenClient()
    extra = {"code": answer["code"], "redirect_uri": listener.redirect_uri, "code_verifier": pkce.verifier}
    try:
        response = client.refresh(settings.token, {}, account=account, extra=extra)
    except CredentialError as exc:
        # "account A must be re-authorized: the token endpoint … answered invalid_client (…)": this is the authorization
        text = (
            str(exc).partition(" must be re-authorized: ")[2] if isinstance(exc, CredentialNeedsReauthorization) else ""
        )
        raise CredentialError(f"the code exchange failed: {text or exc}: nothing stored", account=account) from None
    return TokenSet.from_response(response, now=clock()).data


def check_answer(answer: Mapping[str, str], state: str) -> None:
    """The callback's query must carry our state and a code; an ``error`` is the provider's refusal."""
    if "error" in answer:
        error = _printable(answer["error"])
        description = _printable(answer.get("error_description", ""))
        detail = f" ({description})" if description else ""
        raise CredentialError(f"the authorization server answered {error}{detail}: nothing stored")
    if not hmac.compare_digest(answer.get("state", "").encode(), state.encode()):
        raise CredentialError(
            "the authorization answer's state does not match this login's (a stale or forged redirect): nothing stored"
        )
    if not answer.get("code"):
        raise CredentialError("the authorization answer carries no code: nothing stored")


def _printable(text: str, limit: int = 200) -> str:
    """A provider's error text for one line: printable characters, bounded."""
    return "".join(ch if ch.isprintable() else " " for ch in text)[:limit]


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None
