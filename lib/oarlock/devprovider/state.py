"""The dev provider's state: clients, tokens, items and counters (no HTTP here).

Every decision about time that makes a token valid or not (an access token's expiry, the
``expires_in`` and ``issued_at`` sent, what ``/__mint`` issues) is taken on the provider's
*clock*: a callable returning epoch seconds, ``time.time`` unless one is injected. Tests
inject a :class:`ManualClock` to expire tokens without waiting::

    clock = ManualClock()
    with DevProvider(ttl=60, clock=clock) as provider:
        token = provider.mint()
        clock.advance(60)  # the access token is expired now: /api answers 401

Share the same clock with a ``CredentialManager(clock=clock)`` when the client side must
agree about expiry. Latency simulation and the rate limit stay on real time: they must
actually wait.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Rotation = Literal["none", "rotate", "single-use"]
#: epoch seconds now, as the provider sees it
Clock = Callable[[], float]


class ManualClock:
    """A clock in epoch seconds that moves only when told to (thread-safe).

    It starts at ``start`` (the real time when omitted, so issued tokens look plausible) and
    stands still until :meth:`advance` moves it forward.
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward; returns the new time."""
        if not seconds >= 0:
            raise ValueError(f"a clock only moves forward, not by {seconds!r} s")
        with self._lock:
            self._now += seconds
            return self._now

    def __repr__(self) -> str:
        return f"ManualClock({self():.3f})"


@dataclass
class Settings:
    ttl: float = 3600
    rotation: Rotation = "none"
    expires_in: bool = True
    expires_in_as_string: bool = False
    omit_refresh_token: bool = False
    fail_first: int = 0
    throttle_first: int = 0
    rate_limit: float = 0
    retry_after: float = 1
    latency_ms: float = 0
    token_latency_ms: float = 0
    client_id: str = "oarlock-dev"
    client_secret: str = "oarlock-dev-secret"
    extra_fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class AccessToken:
    subject: str
    scope: str
    expires_at: float


@dataclass
class RefreshToken:
    subject: str
    scope: str
    alive: bool = True
    used: bool = False


#: how long an authorization code may wait for its redemption (on the provider's clock)
CODE_TTL_SECONDS = 600.0


@dataclass(frozen=True)
class AuthorizationCode:
    """What an authorization code was issued for (RFC 6749 4.1, with PKCE: RFC 7636)."""

    subject: str
    scope: str
    client_id: str = ""
    #: the redirect_uri of the authorization request: the token request must repeat it
    redirect_uri: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str = "plain"
    expires_at: float = math.inf


def pkce_challenge(verifier: str, method: str = "S256") -> str:
    """The code_challenge of a code_verifier: BASE64URL(SHA256(verifier)) without padding, or the verifier (plain)."""
    if method == "plain":
        return verifier
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class TokenError(Exception):
    """An OAuth2 error answer: (HTTP status, error code, description)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


def _refused(
    grant: AuthorizationCode | None, now: float, client_id: str | None, redirect_uri: str | None, verifier: str | None
) -> str | None:
    """Why a token request may not redeem ``grant``, or None."""
    if grant is None:
        return "unknown or used authorization code"
    if grant.expires_at <= now:
        return "authorization code expired"
    if grant.client_id and client_id != grant.client_id:
        return "the authorization code was issued to another client"
    if grant.redirect_uri is not None and redirect_uri != grant.redirect_uri:
        return "redirect_uri is missing or differs from the authorization request's"
    if grant.code_challenge is None:
        return None
    if not verifier:
        return "code_verifier is missing (the authorization request had a code_challenge)"
    expected = pkce_challenge(verifier, grant.code_challenge_method)
    if not hmac.compare_digest(expected.encode("ascii", "replace"), grant.code_challenge.encode("ascii", "replace")):
        return "code_verifier does not match the code_challenge"
    return None


class ProviderState:
    """Everything the provider knows, behind one lock; token expiry is decided on ``clock``."""

    def __init__(self, settings: Settings, *, clock: Clock = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.lock = threading.Lock()
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, RefreshToken] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.items: list[dict[str, Any]] = [
            {"id": i, "name": f"item {i}", "created": 1_700_000_000 + i} for i in range(1, 6)
        ]
        self.instance_url = "http://127.0.0.1"  # the provider's own URL once it listens (Salesforce mode)
        self.bucket: float | None = None  # rate limit: a token bucket holding up to max(1, rate) requests
        self.bucket_time = 0.0
        self.concurrent_token_calls = 0
        self.reset_stats()

    def reset_stats(self) -> None:
        self.stats: dict[str, Any] = {
            "token_calls": 0,
            "token_calls_by_grant": {},
            "refresh_calls": 0,
            "api_calls": 0,
            "unauthorized": 0,
            "invalid_grant": 0,
            "invalid_client": 0,
            "throttled": 0,
            "failed": 0,
            "max_concurrent_token_calls": 0,
        }

    def snapshot_stats(self) -> dict[str, Any]:
        with self.lock:
            out = dict(self.stats)
            out["token_calls_by_grant"] = dict(self.stats["token_calls_by_grant"])
            out["active_refresh_tokens"] = sum(1 for t in self.refresh.values() if t.alive)
            return out

    # -- token endpoint ------------------------------------------------------------------------
    def enter_token_call(self, grant: str) -> tuple[int, float] | None:
        """Count a token call; returns (status, retry_after) when it must fail as 503/429, else None."""
        with self.lock:
            s = self.stats
            s["token_calls"] += 1
            s["token_calls_by_grant"][grant] = s["token_calls_by_grant"].get(grant, 0) + 1
            if grant == "refresh_token":
                s["refresh_calls"] += 1
            self.concurrent_token_calls += 1
            s["max_concurrent_token_calls"] = max(s["max_concurrent_token_calls"], self.concurrent_token_calls)
            settings = self.settings
            if settings.fail_first > 0:
                settings.fail_first -= 1
                s["failed"] += 1
                return 503, 0
            if settings.throttle_first > 0:
                settings.throttle_first -= 1
                s["throttled"] += 1
                return 429, math.ceil(settings.retry_after)
            if settings.rate_limit > 0:
                wait = self._take_from_bucket(settings.rate_limit)
                if wait > 0:
                    s["throttled"] += 1
                    return 429, max(1, math.ceil(wait))
            return None

    def _take_from_bucket(self, rate: float) -> float:
        """0 when a request may pass now, else the seconds until it may; lock must be held."""
        capacity = max(1.0, rate)
        now = time.monotonic()  # real time, not the clock: a throttled client really waits
        if self.bucket is None:
            self.bucket = capacity
        else:
            self.bucket = min(capacity, self.bucket + (now - self.bucket_time) * rate)
        self.bucket_time = now
        if self.bucket >= 1:
            self.bucket -= 1
            return 0
        return (1 - self.bucket) / rate

    def leave_token_call(self) -> None:
        with self.lock:
            self.concurrent_token_calls -= 1

    def check_client(self, client_id: str | None, client_secret: str | None) -> None:
        if client_id != self.settings.client_id or client_secret != self.settings.client_secret:
            with self.lock:
                self.stats["invalid_client"] += 1
            raise TokenError(401, "invalid_client", "client authentication failed")

    def issue(self, subject: str, scope: str, *, refresh: str | None, new_refresh: bool) -> dict[str, Any]:
        """Create an access token (and a refresh token if asked); lock must be held."""
        settings = self.settings
        access = "at-" + secrets.token_urlsafe(24)
        now = self.clock()
        self.access[access] = AccessToken(subject, scope, now + settings.ttl)
        response: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "scope": scope}
        if new_refresh:
            refresh = "rt-" + secrets.token_urlsafe(24)
            self.refresh[refresh] = RefreshToken(subject, scope)
        if refresh is not None:
            response["refresh_token"] = refresh
        if settings.expires_in:
            ttl = int(settings.ttl) if float(settings.ttl).is_integer() else settings.ttl
            response["expires_in"] = str(ttl) if settings.expires_in_as_string else ttl
        else:
            response["instance_url"] = self.instance_url
            response["id"] = f"{self.instance_url}/id/{subject}"
            response["issued_at"] = str(int(now * 1000))
            response["signature"] = secrets.token_urlsafe(16)
        response.update(settings.extra_fields)
        return response

    def grant_refresh(self, token: str | None, scope: str | None) -> dict[str, Any]:
        if not token:
            raise TokenError(400, "invalid_request", "refresh_token is missing")
        with self.lock:
            record = self.refresh.get(token or "")
            if record is None or not record.alive:
                self.stats["invalid_grant"] += 1
                why = "unknown refresh token" if record is None else "refresh token revoked or already used"
                raise TokenError(400, "invalid_grant", why)
            scope = scope or record.scope
            if self.settings.omit_refresh_token:  # Google-like: no refresh_token in the answer, the old one lives on
                return self.issue(record.subject, scope, refresh=None, new_refresh=False)
            if self.settings.rotation == "none":
                return self.issue(record.subject, scope, refresh=token, new_refresh=False)
            if self.settings.rotation == "single-use":
                record.alive, record.used = False, True
            return self.issue(record.subject, scope, refresh=None, new_refresh=True)

    def mint(self, subject: str, scope: str | None = None) -> dict[str, Any]:
        with self.lock:
            return self.issue(subject, scope or "read write", refresh=None, new_refresh=True)

    def client_credentials(self, scope: str | None) -> dict[str, Any]:
        with self.lock:
            return self.issue(self.settings.client_id, scope or "read", refresh=None, new_refresh=False)

    def new_code(self, grant: AuthorizationCode) -> str:
        code = "code-" + secrets.token_urlsafe(16)
        with self.lock:
            self.codes[code] = dataclasses.replace(grant, expires_at=self.clock() + CODE_TTL_SECONDS)
        return code

    def redeem_code(
        self,
        code: str | None,
        *,
        client_id: str | None = None,
        redirect_uri: str | None = None,
        verifier: str | None = None,
    ) -> dict[str, Any]:
        """Tokens for an authorization code, used once; PKCE and redirect_uri checked as RFC 7636 / 6749 4.1.3 ask."""
        if not code:
            raise TokenError(400, "invalid_request", "code is missing")
        with self.lock:
            grant = self.codes.pop(code or "", None)  # a failed redemption uses the code up too
            why = _refused(grant, self.clock(), client_id, redirect_uri, verifier)
            if grant is None or why is not None:
                self.stats["invalid_grant"] += 1
                raise TokenError(400, "invalid_grant", why or "unknown or used authorization code")
            return self.issue(grant.subject, grant.scope, refresh=None, new_refresh=True)

    def revoke(self, subject: str | None = None) -> int:
        with self.lock:
            count = 0
            for record in self.refresh.values():
                if record.alive and (subject is None or record.subject == subject):
                    record.alive = False
                    count += 1
            return count

    def configure(self, changes: dict[str, Any]) -> None:
        with self.lock:
            unknown = sorted(name for name in changes if not hasattr(self.settings, name))
            if unknown:
                raise TypeError(f"unknown dev provider option(s): {', '.join(unknown)}")
            for name, value in changes.items():
                setattr(self.settings, name, dict(value or {}) if name == "extra_fields" else value)
            if "rate_limit" in changes:
                self.bucket = None

    def revoke_token(self, token: str) -> None:
        with self.lock:
            if token in self.refresh:
                self.refresh[token].alive = False
            self.access.pop(token, None)

    # -- protected API -------------------------------------------------------------------------
    def authorize(self, header: str | None) -> AccessToken | str:
        """The token behind an Authorization header, or the reason it is refused."""
        with self.lock:
            self.stats["api_calls"] += 1
            if not header or not header.lower().startswith("bearer "):
                self.stats["unauthorized"] += 1
                return "missing bearer token"
            record = self.access.get(header[7:].strip())
            if record is None:
                self.stats["unauthorized"] += 1
                return "unknown access token"
            if record.expires_at <= self.clock():
                self.stats["unauthorized"] += 1
                return "access token expired"
            return record

    def list_items(self, since: int) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(item) for item in self.items if item["id"] > since]

    def add_item(self, data: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            item = {**data, "id": self.items[-1]["id"] + 1 if self.items else 1, "created": int(self.clock())}
            self.items.append(item)
            return dict(item)
