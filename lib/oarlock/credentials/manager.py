"""The process-wide credential manager: one state per account, single-flight refresh, updateKeys.

Every call that needs a token goes through :class:`BoundCredential` (what ``ctx.credentials``
is and what ``ctx.http``'s auth uses). Refreshes of one account are serialised by a lock:
whoever takes it first refreshes, everyone who waited re-checks and uses the result. A
request that got a 401 with an old token never refreshes again when another call already
did (it compares the token it used with the current one under the lock). With a
coordinator (the keys store), the lock is also taken across processes and the newest stored
credential is re-read before refreshing and after an ``invalid_grant``, so a fleet sharing
single-use refresh tokens never burns them.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests
import requests.adapters

from oarlock.awaitables import run_maybe_async
from oarlock.credentials.endpoint import TokenClient
from oarlock.credentials.presets import RefreshSettings
from oarlock.credentials.token import TokenSet
from oarlock.errors import CredentialError, CredentialNeedsReauthorization, TokenEndpointError
from oarlock.jsoncopy import copy_json
from oarlock.protocol.events import Event, EventName, EventSink
from oarlock.redact import register_credential

log = logging.getLogger("oarlock.credentials")

RefreshHook = Callable[[dict[str, Any], dict[str, Any]], Any]


class StoredCredentialLike(Protocol):
    @property
    def oauth(self) -> dict[str, Any]: ...

    @property
    def version(self) -> int: ...


class RefreshCoordinator(Protocol):
    """Cross-process coordination (the keys store implements it)."""

    def lock(self, account: str, timeout: float = 30.0) -> AbstractContextManager[None]: ...

    def get(self, account: str) -> StoredCredentialLike | None: ...

    def save(
        self, account: str, oauth: dict[str, Any], version: int, response: dict[str, Any] | None = None
    ) -> bool: ...


def version_of(oauth: Mapping[str, Any]) -> int:
    """The version a credential carries implicitly: when it was obtained, in ms (0 when unknown)."""
    obtained = oauth.get("obtained_at")
    try:
        return int(float(obtained) * 1000) if obtained is not None else 0
    except (TypeError, ValueError):
        return 0


def account_of(cfg: Mapping[str, Any]) -> str:
    account = cfg.get("_account")
    if isinstance(account, str) and account:
        return account
    oauth = cfg.get("oauth") or {}
    seed = str(oauth.get("refresh_token") or oauth.get("access_token") or "")
    return "anonymous-" + hashlib.sha256(seed.encode()).hexdigest()[:12]


@dataclass
class _AccountState:
    token: TokenSet
    version: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen_at: float = 0.0
    last_attempt: float = 0.0
    dead_until: float = 0.0
    dead_error: CredentialError | None = None
    immutable_logged: bool = False
    #: the access token an API answered 401 to: nobody sends it again, callers wait for its refresh instead
    rejected: str | None = None


class CredentialManager:
    """One per process; thread-safe."""

    def __init__(
        self,
        *,
        coordinator: RefreshCoordinator | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        token_session: requests.Session | None = None,
        retry_budget_seconds: float = 60.0,
        cooldown_seconds: float = 30.0,
        keepalive_seconds: float | None = None,
        min_refresh_interval_seconds: float = 60.0,
    ) -> None:
        self.coordinator = coordinator
        self.clock = clock
        self.cooldown_seconds = cooldown_seconds
        self.keepalive_seconds = keepalive_seconds
        self.min_refresh_interval_seconds = min_refresh_interval_seconds
        self.client = TokenClient(
            session=token_session, retry_budget_seconds=retry_budget_seconds, sleep=sleep, clock=clock
        )
        self._states: dict[str, _AccountState] = {}
        self._states_lock = threading.Lock()
        # one connection pool for every session handed out for this manager (urllib3's pool is thread-safe):
        # a message's ctx.http reuses the keep-alive connections of the messages before it
        self.http_adapter = requests.adapters.HTTPAdapter(pool_connections=32, pool_maxsize=128)

    # -- state ---------------------------------------------------------------------------------
    def _state(self, account: str, oauth: Mapping[str, Any]) -> _AccountState:
        """The account's state; a cfg carrying a newer credential than the one known replaces it."""
        offered = version_of(oauth)
        with self._states_lock:
            state = self._states.get(account)
            if state is None:
                state = _AccountState(TokenSet(dict(oauth)), offered, seen_at=self.clock())
                self._states[account] = state
                register_credential(dict(oauth))
            elif offered > state.version:
                with state.lock:
                    state.token, state.version = TokenSet(dict(oauth)), offered
                    state.dead_until, state.dead_error = 0.0, None
                register_credential(dict(oauth))
            return state

    def seed(self, account: str, oauth: dict[str, Any], version: int) -> None:
        """Make a stored credential known (ignored when not newer than what is known)."""
        state = self._state(account, oauth)
        with state.lock:
            if version > state.version:
                state.token, state.version = TokenSet(dict(oauth)), version
                state.dead_until, state.dead_error = 0.0, None
        register_credential(oauth)

    def newest_cfg(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """A deep copy of cfg whose ``oauth`` is the newest token set this process knows for its account."""
        out = copy_json(cfg)
        oauth = out.get("oauth")
        if not isinstance(oauth, dict):
            return out
        state = self._state(account_of(out), oauth)
        with state.lock:
            out["oauth"] = copy_json(state.token.data)
        return out

    # -- what functions use ----------------------------------------------------------------------
    def credential(
        self, cfg: dict[str, Any], *, sink: EventSink, refresh_hook: RefreshHook | None = None
    ) -> BoundCredential:
        """The account of ``cfg`` as one call sees it; its updateKeys events go to ``sink``."""
        return BoundCredential(self, cfg, sink=sink, refresh_hook=refresh_hook)

    # -- the refresh -----------------------------------------------------------------------------
    def needs_refresh(self, state: _AccountState, settings: RefreshSettings, now: float) -> bool:
        token = state.token
        if not token.access_token:
            return True
        if token.expires_at is not None:
            return token.expires_within(token.leeway(settings.leeway_seconds), now)
        keepalive = self.keepalive_seconds or settings.preset.keepalive_seconds
        last = token.obtained_at or state.seen_at
        return now - last >= keepalive and now - state.last_attempt >= self.min_refresh_interval_seconds

    def refresh(
        self,
        bound: BoundCredential,
        *,
        reason: str,
        used_token: str | None = None,
        started_at: float | None = None,
    ) -> TokenSet:
        """Refresh the account unless another call already did what this one needs; single-flight."""
        account, settings = bound.account, bound.settings
        state = self._state(account, bound.cfg_oauth)
        persisted = False
        with state.lock:
            if not self._still_needed(state, settings, reason, used_token, started_at):
                return state.token
            self._fail_fast_if_dead(state)
            coordinated = self.coordinator is not None and settings.persist
            cross_process = self.coordinator.lock(account) if coordinated and self.coordinator else nullcontext()
            with cross_process:
                if (
                    coordinated
                    and self._adopt_stored(state, account)
                    and not self._still_needed(state, settings, reason, used_token, started_at)
                ):
                    return state.token
                try:
                    response = self._request(bound, state)
                except CredentialNeedsReauthorization as exc:
                    if coordinated and self._adopt_stored(state, account):
                        return state.token  # another process rotated the refresh token meanwhile
                    state.dead_until = self.clock() + self.cooldown_seconds
                    state.dead_error = exc
                    log.error("%s", exc, extra={"account": account})
                    raise
                now = self.clock()
                state.token = TokenSet.from_response(response, now=now, previous=state.token)
                state.version = max(state.version + 1, int(now * 1000))
                register_credential(state.token.data)
                if coordinated and self.coordinator is not None:
                    self.coordinator.save(account, state.token.data, state.version, dict(response))
                    persisted = True
            update = self._update_payload(state, settings, account, response)
            self._log_refresh(state, settings, account, reason)
        bound.sink.emit(Event(EventName.UPDATE_KEYS, update, persisted=persisted))
        return state.token

    def _still_needed(
        self,
        state: _AccountState,
        settings: RefreshSettings,
        reason: str,
        used_token: str | None,
        started_at: float | None,
    ) -> bool:
        if reason == "401":
            return state.token.access_token == used_token
        if reason == "always":
            obtained = state.token.obtained_at
            return obtained is None or started_at is None or obtained < started_at
        if reason == "forced":
            return True
        return self.needs_refresh(state, settings, self.clock())

    def _fail_fast_if_dead(self, state: _AccountState) -> None:
        if state.dead_error is not None and self.clock() < state.dead_until:
            error = state.dead_error
            raise type(error)(str(error), account=error.account)

    def _adopt_stored(self, state: _AccountState, account: str) -> bool:
        """Take the coordinator's credential if it is newer than ours; True if we did."""
        assert self.coordinator is not None
        stored = self.coordinator.get(account)
        if stored is None or stored.version <= state.version:
            return False
        state.token, state.version = TokenSet(dict(stored.oauth)), stored.version
        state.dead_until, state.dead_error = 0.0, None
        register_credential(stored.oauth)
        log.info(
            "account %s: using the credential another process refreshed (version %s)",
            account,
            stored.version,
            extra={"account": account, "version": stored.version},
        )
        return True

    def _request(self, bound: BoundCredential, state: _AccountState) -> dict[str, Any]:
        state.last_attempt = self.clock()
        if bound.refresh_hook is not None:
            try:
                returned = bound.refresh_hook(copy.deepcopy(state.token.data), copy.deepcopy(bound.cfg))
            except CredentialError:
                raise
            except Exception as exc:
                raise TokenEndpointError(
                    f"refresh_credentials() of the component failed for account {bound.account}: "
                    f"{type(exc).__name__}: {exc}",
                    account=bound.account,
                ) from None
            returned = run_maybe_async(returned)
            if not isinstance(returned, Mapping):
                raise TokenEndpointError(
                    f"refresh_credentials() must return a mapping of credential fields, got {type(returned).__name__}",
                    account=bound.account,
                )
            return dict(returned)
        return self.client.refresh(bound.settings, state.token.data, account=bound.account)

    def _update_payload(
        self, state: _AccountState, settings: RefreshSettings, account: str, response: Mapping[str, Any]
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "oauth": copy.deepcopy(state.token.data),
            "response": copy.deepcopy(dict(response)),
            "account": account,
            "version": state.version,
        }
        if not settings.persist:
            payload["persist"] = False
        return payload

    def _log_refresh(self, state: _AccountState, settings: RefreshSettings, account: str, reason: str) -> None:
        expires_at = state.token.expires_at
        lifetime = f"{expires_at - self.clock():.0f} s" if expires_at is not None else "an unknown time"
        log.info(
            "account %s: token refreshed (%s); valid for %s; version %s",
            account,
            reason,
            lifetime,
            state.version,
            extra={"account": account, "version": state.version},
        )
        if not settings.persist and not state.immutable_logged:
            state.immutable_logged = True
            log.warning(
                "credential %s is immutable (persist: false): refreshed tokens are kept in memory only",
                account,
                extra={"account": account},
            )


class BoundCredential:
    """One account's credential as one call sees it (``ctx.credentials``)."""

    def __init__(
        self,
        manager: CredentialManager,
        cfg: dict[str, Any],
        *,
        sink: EventSink,
        refresh_hook: RefreshHook | None = None,
    ) -> None:
        self.manager = manager
        self.cfg = cfg
        self.cfg_oauth: dict[str, Any] = dict(cfg.get("oauth") or {})
        self.account = account_of(cfg)
        self.settings = RefreshSettings.from_cfg(cfg.get("oauth2"))
        self.sink = sink
        self.refresh_hook = refresh_hook

    @property
    def data(self) -> dict[str, Any]:
        state = self.manager._state(self.account, self.cfg_oauth)
        with state.lock:
            return copy.deepcopy(state.token.data)

    @property
    def can_refresh(self) -> bool:
        if self.refresh_hook is not None:
            return True
        if not self.settings.token_uri:
            return False
        return self.settings.grant_type != "refresh_token" or bool(self.data.get("refresh_token"))

    def current_token(self) -> str | None:
        state = self.manager._state(self.account, self.cfg_oauth)
        with state.lock:
            return state.token.access_token

    def token_for_request(self, started_at: float | None = None) -> str | None:
        """The token to send now: refreshed first when the mode says so (auto: near expiry; always)."""
        if self.can_refresh:
            state = self.manager._state(self.account, self.cfg_oauth)
            mode = self.settings.refresh
            if mode == "always":
                return self.manager.refresh(self, reason="always", started_at=started_at).access_token
            if mode == "auto" and self.manager.needs_refresh(state, self.settings, self.manager.clock()):
                return self.manager.refresh(self, reason="proactive").access_token
            token = self.current_token()
            if token is not None and token == state.rejected:
                return self.refresh_after_401(token)  # joins the refresh another call started
            return token
        return self.current_token()

    def refresh_after_401(self, used_token: str | None) -> str | None:
        self.manager._state(self.account, self.cfg_oauth).rejected = used_token
        return self.manager.refresh(self, reason="401", used_token=used_token).access_token

    def access_token(self) -> str:
        """A fresh access token for clients that are not ``requests`` (raises CredentialError if none)."""
        token = self.token_for_request(self.manager.clock())
        if not token:
            raise CredentialNeedsReauthorization(
                f"account {self.account} has no access token: it must be authorized", account=self.account
            )
        return token

    def refresh(self) -> TokenSet:
        """Force a refresh now."""
        return self.manager.refresh(self, reason="forced")
