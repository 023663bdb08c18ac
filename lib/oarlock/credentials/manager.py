"""The process-wide credential manager: one state per account, single-flight refresh, updateKeys.

Every call that needs a token goes through :class:`BoundCredential` (``ctx.credentials``, and
``ctx.http``'s auth). Refreshes of one account are serialised: whoever takes its lock first
refreshes, everyone who waited re-checks and uses the result; a 401 with an old token never
refreshes again when another call already did. With a coordinator (the keys store) the lock is also
taken across processes (awaited for the token client's refresh deadline + 15 s, so a waiter never
gives up on a healthy holder) and the newest stored credential is re-read before refreshing and after
an ``invalid_grant``, so a fleet sharing single-use refresh tokens never burns them. A refresh holds
its own account only.

**Which credential is live**: the lineage rules of :mod:`oarlock.credentials.token`. A credential the
cfg offers that is a re-authorization wins at once and ends any needs-re-authorization or rejection
state; with a keys store it is compared with the stored one at the account's first use, and a
re-authorization is saved as a version newer than the stored one, so every other worker adopts it.
``obtained_at`` is stamped (the clock's now) on a credential first seen without one.

**After the provider answered** the new credential is kept in memory and its updateKeys emitted
whatever the store says. The write is tried up to 4 times (at once, then after
:data:`STORE_RETRY_DELAYS` 0.2, 0.5, 1 s, on the manager's ``sleep``); if all fail, an ERROR names
account and store, ``store_write_failures`` counts it, the event says ``persisted=False`` (a transport
with a store of its own then writes it) and it stays a pending write, tried once more at most every
5 s when the account is used or refreshed, and by :meth:`CredentialManager.flush`/``close``. A
KeyStoreError of ``lock``/``get`` before the provider is called propagates as it is.

**A token the API rejects**: a 401 for a token a refresh of this process obtained less than
``cooldown_seconds`` (30 s) ago, in the first half of its lifetime, raises TokenRejected at once, and
until the cooldown ends its 401s refresh no more (requests still go out); the auth flow can say so
too (:meth:`BoundCredential.rejected_after_refresh`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import requests
import requests.adapters

from oarlock.credentials.endpoint import TokenClient
from oarlock.credentials.hook import RefreshHook, call_refresh_hook
from oarlock.credentials.presets import RefreshSettings
from oarlock.credentials.reports import dead_credential_report
from oarlock.credentials.storesync import (
    PENDING_RETRY_SECONDS,
    REASONS,
    STALE_OFFERS_MAX,
    STORE_RETRY_DELAYS,
    AccountState,
    RefreshCoordinator,
    StoredCredentialLike,
    StoreSync,
    note,
    start_from_stored,
)
from oarlock.credentials.token import Relation, TokenSet, identity_of, stored_wins, take_offered, version_of
from oarlock.errors import CredentialNeedsReauthorization, TokenRejected
from oarlock.jsoncopy import copy_json
from oarlock.metrics import hooks as metrics
from oarlock.protocol.events import Event, EventName, EventSink
from oarlock.redact import register_credential

__all__ = [
    "BoundCredential",
    "CredentialManager",
    "RefreshCoordinator",
    "StoredCredentialLike",
    "account_of",
    "start_from_stored",
    "version_of",
]
log = logging.getLogger("oarlock.credentials")

#: added to the token client's refresh deadline to give the cross-process lock wait
LOCK_MARGIN_SECONDS = 15.0
#: during a dead credential's cooldown, the keys store is asked for a re-authorization at most this often
DEAD_STORE_CHECK_SECONDS = 1.0


def account_of(cfg: Mapping[str, Any]) -> str:
    account = cfg.get("_account")
    if isinstance(account, str) and account:
        return account
    oauth = cfg.get("oauth") or {}
    seed = str(oauth.get("refresh_token") or oauth.get("access_token") or "")
    return "anonymous-" + hashlib.sha256(seed.encode()).hexdigest()[:12]


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
        store_retry_delays: Sequence[float] = STORE_RETRY_DELAYS,
        pending_retry_seconds: float = PENDING_RETRY_SECONDS,
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        self.cooldown_seconds = cooldown_seconds
        self.keepalive_seconds = keepalive_seconds
        self.min_refresh_interval_seconds = min_refresh_interval_seconds
        self.store_retry_delays = tuple(store_retry_delays)
        self.pending_retry_seconds = pending_retry_seconds
        self.store: StoreSync | None = None
        self.coordinator = coordinator
        self.client = TokenClient(
            session=token_session, retry_budget_seconds=retry_budget_seconds, sleep=sleep, clock=clock
        )
        self._states: dict[str, AccountState] = {}
        self._states_lock = threading.Lock()
        # one connection pool for every session handed out for this manager (urllib3's pool is thread-safe):
        # a message's ctx.http reuses the keep-alive connections of the messages before it
        self.http_adapter = requests.adapters.HTTPAdapter(pool_connections=32, pool_maxsize=128)

    @property
    def coordinator(self) -> RefreshCoordinator | None:
        return self.store.coordinator if self.store is not None else None

    @coordinator.setter
    def coordinator(self, coordinator: RefreshCoordinator | None) -> None:
        failures = self.store_write_failures
        self.store = None
        if coordinator is not None:
            self.store = StoreSync(
                coordinator,
                clock=self.clock,
                sleep=self.sleep,
                retry_delays=self.store_retry_delays,
                pending_retry_seconds=self.pending_retry_seconds,
            )
            self.store.failures = failures

    @property
    def store_write_failures(self) -> int:
        """Failed keys-store writes so far (an operator metric): see :class:`~oarlock.credentials.storesync.StoreSync`."""
        return self.store.failures if self.store is not None else 0

    @property
    def lock_timeout_seconds(self) -> float:
        """How long a refresh waits for another process's lock: longer than that holder's refresh may take."""
        return float(getattr(self.client, "refresh_deadline_seconds", 60.0)) + LOCK_MARGIN_SECONDS

    # -- state ---------------------------------------------------------------------------------
    def _state(self, account: str, oauth: Mapping[str, Any]) -> AccountState:
        """The account's state; a credential offered by the cfg that wins over the known one replaces it."""
        with self._states_lock:  # never held while an account's lock is awaited: a hung refresh holds its account only
            state = self._states.get(account)
            if state is None:
                now = self.clock()
                offered = TokenSet(dict(oauth))
                token = offered.stamped(now)
                self._states[account] = AccountState(
                    token, version_of(token.data), seen_at=now, offered_version=version_of(oauth)
                )
                self._states[account].stamped = offered.obtained_at is None
        if state is None:
            register_credential(dict(oauth))
            return self._states[account]
        key = identity_of(oauth)
        if (key is None or key == state.token.identity) and version_of(oauth) <= state.version:
            return state  # the usual case, without a lock: the same credential, not newer
        if key is not None and key in state.stale_offers:
            return state
        with state.lock:
            taken = take_offered(oauth, state.token.data, state.version, now=self.clock())
            if taken is None:
                if key is not None and key != state.token.identity:
                    if len(state.stale_offers) >= STALE_OFFERS_MAX:
                        state.stale_offers.clear()
                    state.stale_offers.add(key)
                return state
            data, version, relation = taken
            state.replace(TokenSet(data), version, offered_version=version_of(oauth), unreconciled=True)
            state.stamped = TokenSet(dict(oauth)).obtained_at is None
        if relation is not Relation.SAME:
            note(logging.INFO, account, "the cfg's credential %s the known one: it replaces it", REASONS[relation])
        register_credential(dict(oauth))
        return state

    def seed(self, account: str, oauth: dict[str, Any], version: int) -> None:
        """Make a stored credential known (taken when the stored-vs-memory rules say it is newer)."""
        with self._states_lock:
            state = self._states.get(account)
            if state is None:
                self._states[account] = AccountState(TokenSet(dict(oauth)), version, seen_at=self.clock())
                self._states[account].unreconciled = False
        if state is not None:
            with state.lock:
                if stored_wins(oauth, version, state.token.data, state.version):
                    state.replace(TokenSet(dict(oauth)), version)
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

    def flush(self) -> int:
        """Try every pending keys-store write once now; the number still pending."""
        with self._states_lock:
            states = list(self._states.items())
        left = 0
        for account, state in states:
            if state.pending is not None and self.store is not None:
                with state.lock:
                    left += not self.store.flush_pending(state, account)
        return left

    def close(self) -> None:
        """The end of the manager's use: pending writes are tried once more."""
        self.flush()

    # -- what functions use ----------------------------------------------------------------------
    def credential(
        self, cfg: dict[str, Any], *, sink: EventSink, refresh_hook: RefreshHook | None = None
    ) -> BoundCredential:
        """The account of ``cfg`` as one call sees it; its updateKeys events go to ``sink``."""
        return BoundCredential(self, cfg, sink=sink, refresh_hook=refresh_hook)

    # -- the refresh -----------------------------------------------------------------------------
    def needs_refresh(self, state: AccountState, settings: RefreshSettings, now: float) -> bool:
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
            store = self.store if settings.persist else None
            if self._reauthorized_during_cooldown(state, account, store):
                return state.token
            cross_process = (
                store.coordinator.lock(account, timeout=self.lock_timeout_seconds)
                if store is not None
                else nullcontext()
            )
            with cross_process:
                if store is not None:
                    store.flush_pending(state, account)
                    if store.sync(state, account) and not self._still_needed(
                        state, settings, reason, used_token, started_at
                    ):
                        return state.token
                try:
                    response = self._request(bound, state)
                except CredentialNeedsReauthorization as exc:
                    if store is not None and store.sync(state, account):
                        return state.token  # another process rotated the refresh token meanwhile
                    if store is not None:
                        store.remember_dead(state, account)
                    state.dead_until = self.clock() + self.cooldown_seconds
                    state.dead_error = exc
                    log.error("%s", exc, extra={"account": account})
                    report = dead_credential_report(account, state.version, state.token.data, str(exc))
                    bound.sink.emit(Event(EventName.CREDENTIAL_INVALID, report))  # once per cooldown
                    raise
                # the provider answered: from here on the new credential is never lost, whatever the store says
                now = self.clock()
                state.token = TokenSet.from_response(response, now=now, previous=state.token)
                state.version = max(state.version + 1, int(now * 1000))
                state.refreshed_token, state.refreshed_at = state.token.access_token, now
                state.stamped = False
                register_credential(state.token.data)
                if store is not None:
                    data = copy.deepcopy(state.token.data)
                    persisted = store.save(state, account, data, state.version, response, settings.public())
            update = self._update_payload(state, settings, account, response)
            self._log_refresh(state, settings, account, reason)
        bound.sink.emit(Event(EventName.UPDATE_KEYS, update, persisted=persisted))
        return state.token

    def _still_needed(
        self,
        state: AccountState,
        settings: RefreshSettings,
        reason: str,
        used_token: str | None,
        started_at: float | None,
    ) -> bool:
        if reason == "401":
            return state.token.access_token == used_token
        if reason == "always":
            obtained = None if state.stamped else state.token.obtained_at
            return obtained is None or started_at is None or obtained < started_at
        if reason == "forced":
            return True
        return self.needs_refresh(state, settings, self.clock())

    def _reauthorized_during_cooldown(self, state: AccountState, account: str, store: StoreSync | None) -> bool:
        """False outside a dead credential's cooldown; in it, True once the store holds a newer credential (asked
        at most once a second: a re-authorization ends the cooldown at once), else the dead error again."""
        now = self.clock()
        if state.dead_error is None or now >= state.dead_until:
            return False
        if store is not None and now - state.dead_checked_at >= DEAD_STORE_CHECK_SECONDS:
            state.dead_checked_at = now
            if store.sync(state, account):
                return True
        error = state.dead_error
        raise type(error)(str(error), account=error.account)

    def _refuse_if_rejected(self, state: AccountState, account: str, used_token: str | None) -> None:
        """TokenRejected instead of a refresh for a 401 to a token the API rejects (see the module docstring)."""
        now = self.clock()
        with state.lock:
            if used_token is None:
                return
            if state.rejected_error is None or used_token != state.rejected_token or now >= state.rejected_until:
                age = now - state.refreshed_at
                lifetime = state.token.lifetime
                fresh = used_token == state.token.access_token == state.refreshed_token
                if not (fresh and age < self.cooldown_seconds and (not lifetime or age < lifetime / 2)):
                    return
                self._mark_rejected(state, account, used_token, now)
            error = state.rejected_error
        raise TokenRejected(str(error), account=account)

    def _mark_rejected(self, state: AccountState, account: str, token: str, now: float) -> None:
        state.rejected_token, state.rejected_until = token, now + self.cooldown_seconds
        state.rejected_error = TokenRejected(
            f"the API rejects a freshly refreshed token for account {account} (401 right after the refresh): "
            f"no refresh on its 401s for {self.cooldown_seconds:g} s; check the scopes and the API's client "
            "configuration",
            account=account,
        )
        log.error("%s", state.rejected_error, extra={"account": account})
        metrics.active.token_rejected()

    def _request(self, bound: BoundCredential, state: AccountState) -> dict[str, Any]:
        state.last_attempt = self.clock()
        if bound.refresh_hook is not None:
            return call_refresh_hook(bound.refresh_hook, state.token.data, bound.cfg, bound.account)
        return self.client.refresh(bound.settings, state.token.data, account=bound.account)

    def _update_payload(
        self, state: AccountState, settings: RefreshSettings, account: str, response: Mapping[str, Any]
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "oauth": copy.deepcopy(state.token.data),
            "response": copy.deepcopy(dict(response)),
            "account": account,
            "version": state.version,
            "oauth2": settings.public(),  # what the keys service needs to keep it alive; never the client secret
        }
        if not settings.persist:
            payload["persist"] = False
        return payload

    def _log_refresh(self, state: AccountState, settings: RefreshSettings, account: str, reason: str) -> None:
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
        self.store = manager.store if self.settings.persist else None

    def _live_state(self) -> AccountState:
        state = self.manager._state(self.account, self.cfg_oauth)
        if self.store is not None and (state.unreconciled or state.pending is not None):
            self.store.catch_up(state, self.account)
        return state

    @property
    def data(self) -> dict[str, Any]:
        state = self._live_state()
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
        state = self._live_state()
        with state.lock:
            return state.token.access_token

    def token_for_request(self, started_at: float | None = None) -> str | None:
        """The token to send now: refreshed first when the mode says so (auto: near expiry; always)."""
        if self.can_refresh:
            state = self._live_state()
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
        state = self._live_state()
        self.manager._refuse_if_rejected(state, self.account, used_token)
        state.rejected = used_token
        return self.manager.refresh(self, reason="401", used_token=used_token).access_token

    def rejected_after_refresh(self, token: str | None) -> None:
        """The API answered 401 to ``token`` right after it was refreshed: its 401s refresh no more for the cooldown."""
        if token is None:
            return
        state = self.manager._state(self.account, self.cfg_oauth)
        with state.lock:
            self.manager._mark_rejected(state, self.account, token, self.manager.clock())

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
