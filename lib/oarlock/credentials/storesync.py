"""The refresh engine's side of the keys store: per-account state, reconcile, bounded writes, pending writes.

:class:`RefreshCoordinator` is what the engine needs of a keys store (every store of
:mod:`oarlock.keys` is one). :class:`StoreSync` is how the credential manager uses it; every
method runs with the account's lock held:

- **reconcile** (at the account's first use, and inside a refresh): the credential the cfg offered
  against the stored one, by the lineage rules of :mod:`oarlock.credentials.token`: a stale one
  gives way to the stored one; a re-authorization (or a descendant) is saved as a version newer
  than the stored one, so every other worker adopts it. :func:`start_from_stored` is the same rule
  for a run that starts from a cfg file (``oarlock call``, ``verify``, ``service``).
- **adopt** (inside a refresh): a stored credential that descends from ours, or an unrelated newer one.
- **save**: after the provider answered, the write is tried ``1 + len(STORE_RETRY_DELAYS)`` times (at
  once, then after 0.2, 0.5 and 1 s on the manager's ``sleep``). When every attempt fails, an ERROR
  names the account and the store (never a secret), :attr:`StoreSync.failures` counts it, and the
  credential stays a *pending write*: tried once more at the next refresh, when the account is next
  used (at most every :data:`PENDING_RETRY_SECONDS`), and by ``CredentialManager.flush``/``close``.
  A failed retry of a pending write counts as a failure too.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from oarlock.credentials.presets import RefreshSettings
from oarlock.credentials.token import Relation, TokenSet, shadowed, stored_wins, take_offered, version_of
from oarlock.errors import CredentialError, KeyStoreError, TokenRejected
from oarlock.redact import redact_text, register_credential

log = logging.getLogger("oarlock.credentials")

#: waits before the 2nd, 3rd and 4th attempt to write a refreshed credential to the keys store
STORE_RETRY_DELAYS = (0.2, 0.5, 1.0)
#: a pending write (or a store read that failed at a use) is tried again at most this often
PENDING_RETRY_SECONDS = 5.0
REASONS = {Relation.NEWER: "descends from", Relation.UNRELATED: "is a re-authorization: not in the lineage of"}
SHADOWED = (
    "the cfg's credential is not in the lineage of the stored one, whose history began before lineage tracking: "
    "the stored one is kept; if the cfg's is a re-authorization, store it with `oarlock keys put %s --oauth FILE`"
)


def note(level: int, account: str, message: str, *args: object) -> None:
    log.log(level, "account %s: " + message, account, *args, extra={"account": account})


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
        self,
        account: str,
        oauth: dict[str, Any],
        version: int,
        response: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> bool: ...


@dataclass
class PendingWrite:
    oauth: dict[str, Any]
    version: int
    response: dict[str, Any] | None
    next_try: float = 0.0


STALE_OFFERS_MAX = 64


@dataclass
class AccountState:
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
    offered_version: int = 0  # what the offered (cfg) credential carried before obtained_at was stamped
    stamped: bool = False  # its obtained_at is oarlock's first sight of it, not when it was obtained
    unreconciled: bool = True  # the offered credential was not compared with the keys store yet
    reconcile_after: float = 0.0
    #: identities of credentials found rotated away or replaced: this process never takes one of them back
    stale_offers: set[str] = field(default_factory=set)
    dead_checked_at: float = 0.0  # when the store was last asked for a re-authorization during the cooldown
    refreshed_token: str | None = None  # what the last refresh of this process obtained, and when
    refreshed_at: float = 0.0
    rejected_token: str | None = None  # a token the API rejects right after its refresh: no refresh on its 401s
    rejected_until: float = 0.0
    rejected_error: TokenRejected | None = None
    pending: PendingWrite | None = None  # a refreshed credential the keys store could not take yet

    def replace(self, token: TokenSet, version: int, *, offered_version: int = 0, unreconciled: bool = False) -> None:
        """Another credential becomes the account's: every state of the one it replaces ends (lock held).

        The replaced credential is remembered as stale: a worker's static cfg offers it again with every
        message, and it must not come back as a "re-authorization" over the one that replaced it.
        """
        replaced = self.token.identity
        if replaced is not None and replaced != token.identity:
            if len(self.stale_offers) >= STALE_OFFERS_MAX:
                self.stale_offers.clear()
            self.stale_offers.add(replaced)
        self.token, self.version, self.offered_version = token, version, offered_version
        self.unreconciled, self.reconcile_after = unreconciled, 0.0
        self.dead_until, self.dead_error = 0.0, None
        self.rejected_token, self.rejected_until, self.rejected_error = None, 0.0, None
        self.refreshed_token, self.pending, self.stamped = None, None, False


def start_from_stored(
    cfg: dict[str, Any], store: RefreshCoordinator | None, *, now: float | None = None
) -> dict[str, Any]:
    """The cfg a run starts from: the stored credential of its ``_account`` unless the cfg's wins (lineage rules).

    A re-authorization is saved as a version newer than the stored one (a failed save is logged; the
    manager saves it again at the first use); ``obtained_at`` is stamped on a cfg credential without one.
    """
    account, oauth = cfg.get("_account"), cfg.get("oauth")
    if store is None or not isinstance(account, str) or not account or not isinstance(oauth, dict):
        return cfg
    now = time.time() if now is None else now
    stored = store.get(account)
    if stored is None:
        return {**cfg, "oauth": TokenSet(dict(oauth)).stamped(now).data}
    taken = take_offered(oauth, stored.oauth, stored.version, now=now)
    if taken is None:
        if shadowed(oauth, version_of(oauth), stored.oauth):
            note(logging.WARNING, account, SHADOWED, account)
        note(
            logging.INFO,
            account,
            "starting from the stored credential (version %s), newer than the cfg's",
            stored.version,
        )
        return {**cfg, "oauth": dict(stored.oauth)}
    data, version, relation = taken
    if relation is not Relation.SAME:
        note(
            logging.INFO,
            account,
            "the cfg's credential %s the stored one: stored as version %s",
            REASONS[relation],
            version,
        )
        if RefreshSettings.from_cfg(cfg.get("oauth2")).persist:
            try:
                store.save(account, data, version, None)
            except KeyStoreError as exc:
                note(logging.ERROR, account, "%s (saved again at the first use)", redact_text(str(exc)))
    return {**cfg, "oauth": data}


class StoreSync:
    """The keys store as the credential manager uses it (see the module docstring)."""

    def __init__(
        self,
        coordinator: RefreshCoordinator,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        retry_delays: Sequence[float] = STORE_RETRY_DELAYS,
        pending_retry_seconds: float = PENDING_RETRY_SECONDS,
    ) -> None:
        self.coordinator = coordinator
        self.clock, self.sleep = clock, sleep
        self.retry_delays = tuple(retry_delays)
        self.pending_retry_seconds = pending_retry_seconds
        #: failed writes: a refreshed credential's after all its attempts, and each failed retry of a pending one
        self.failures = 0

    def sync(self, state: AccountState, account: str) -> bool:
        """Compare with the stored credential (a KeyStoreError propagates); True if the stored one became ours."""
        stored = self.coordinator.get(account)
        if state.unreconciled:
            return self.reconcile(state, account, stored)
        if stored is None or not stored_wins(stored.oauth, stored.version, state.token.data, state.version):
            return False
        self.adopt(state, account, stored, "using the credential another process refreshed")
        return True

    def reconcile(self, state: AccountState, account: str, stored: StoredCredentialLike | None) -> bool:
        """The offered credential against the stored one; True if the stored one became ours."""
        state.unreconciled = False
        if stored is None:
            return False
        if stored.oauth == state.token.data:
            state.version = max(state.version, stored.version)
            return False
        taken = take_offered(
            state.token.data, stored.oauth, stored.version, now=self.clock(), offered_version=state.offered_version
        )
        if taken is None:
            if shadowed(state.token.data, state.offered_version, stored.oauth):
                note(logging.WARNING, account, SHADOWED, account)
            self.adopt(state, account, stored, "starting from the stored credential, newer than the cfg's")
            return True
        data, version, relation = taken
        if relation is not Relation.SAME:
            state.token, state.version = TokenSet(data), max(state.version, version)
            why = REASONS[relation]
            note(logging.INFO, account, "the cfg's credential %s the stored one: stored as version %s", why, version)
            self.save(state, account, copy.deepcopy(data), state.version, None)
        return False

    def remember_dead(self, state: AccountState, account: str) -> None:
        """A credential found dead that the store never held is written to it, so that the re-authorization an
        operator stores next supersedes it (it is then in the new one's lineage) and a worker restarted from a
        cfg that still holds it starts from the re-authorization, never the reverse. A store that holds
        anything is left as it is."""
        try:
            if self.coordinator.get(account) is not None:
                return
        except KeyStoreError:
            return  # the report and the error go on; the store is asked again at the next failure
        self.save(state, account, copy.deepcopy(state.token.data), state.version, None)

    def adopt(self, state: AccountState, account: str, stored: StoredCredentialLike, why: str) -> None:
        state.replace(TokenSet(dict(stored.oauth)), stored.version)
        register_credential(stored.oauth)
        note(logging.INFO, account, "%s (version %s)", why, stored.version)

    def save(
        self,
        state: AccountState,
        account: str,
        oauth: dict[str, Any],
        version: int,
        response: dict[str, Any] | None,
        settings: dict[str, Any] | None = None,
    ) -> bool:
        """Write with bounded retries; True if the store has it. When every attempt fails it becomes pending."""
        attempts = 1 + len(self.retry_delays)
        error = ""
        for attempt in range(attempts):
            if attempt:
                self.sleep(self.retry_delays[attempt - 1])
            try:
                self.coordinator.save(account, oauth, version, response, settings)
            except KeyStoreError as exc:
                error = redact_text(str(exc))
                note(
                    logging.WARNING,
                    account,
                    "keys store write failed (attempt %s of %s): %s",
                    attempt + 1,
                    attempts,
                    error,
                )
                continue
            state.pending = None
            return True
        self.failures += 1
        state.pending = PendingWrite(oauth, version, response, next_try=self.clock() + self.pending_retry_seconds)
        note(
            logging.ERROR,
            account,
            "the keys store %s cannot be written (%s attempts; %s): the credential (version %s) is kept in memory "
            "and in its updateKeys event, and written again when the account is next used",
            redact_text(repr(self.coordinator)),
            attempts,
            error,
            version,
        )
        return False

    def flush_pending(self, state: AccountState, account: str) -> bool:
        """One attempt to write the pending credential; True if the store has it now (or nothing is pending)."""
        pending = state.pending
        if pending is None:
            return True
        try:
            self.coordinator.save(account, pending.oauth, pending.version, pending.response)
        except KeyStoreError as exc:
            self.failures += 1
            pending.next_try = self.clock() + self.pending_retry_seconds
            note(logging.WARNING, account, "the pending credential still cannot be stored: %s", redact_text(str(exc)))
            return False
        state.pending = None
        note(logging.INFO, account, "the pending credential (version %s) is stored now", pending.version)
        return True

    def catch_up(self, state: AccountState, account: str) -> None:
        """At a use of the account: compare the offered credential with the store once, retry a pending write."""
        now = self.clock()
        due = state.unreconciled and now >= state.reconcile_after
        if not due and not (state.pending is not None and now >= state.pending.next_try):
            return
        with state.lock:
            if state.unreconciled and now >= state.reconcile_after:
                try:
                    stored = self.coordinator.get(account)
                except KeyStoreError as exc:  # not fatal here: a refresh reads it again (and fails on it)
                    state.reconcile_after = now + self.pending_retry_seconds
                    note(logging.WARNING, account, "%s", redact_text(str(exc)))
                else:
                    self.reconcile(state, account, stored)
            if state.pending is not None and now >= state.pending.next_try:
                self.flush_pending(state, account)
