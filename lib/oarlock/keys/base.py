"""The keys store contract: newest version wins, cross-process lock per account.

:class:`StoredCredential` is what a store holds, :class:`KeyStore` what every store does,
:func:`apply_update_keys` how an updateKeys payload is written to one, :func:`safe_url` how a
store's URL appears in messages. Implementations (:mod:`oarlock.keys.sqlite`,
:mod:`oarlock.keys.postgres`) import this module; :func:`oarlock.keys.store.open_store` picks
one by URL. A store is also the :class:`~oarlock.credentials.manager.RefreshCoordinator` of the
refresh engine: workers take its lock before refreshing and re-read the newest credential, so
single-use refresh tokens are never burnt twice across processes.

At rest, both stores seal the token fields with the key in ``OARLOCK_KEYS_KEY``
(:mod:`oarlock.keys.sealing`: AES-256-GCM, the envelope format, the mixed-store rules) and
``get``/``list`` return them in clear; the SQLite store keeps its files 0600 in a 0700 folder
(:mod:`oarlock.keys.private`, which also has :func:`~oarlock.keys.private.write_private` for other
files holding secrets). :class:`ResealableStore` is a store that can seal, in place, the rows
written in clear before a key was set.
"""

from __future__ import annotations

import builtins
import re
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from oarlock.errors import DecodeError
from oarlock.keys.accounts import AccountState, StateChange, refresh_settings


@dataclass(frozen=True)
class StoredCredential:
    account: str
    oauth: dict[str, Any]
    version: int
    updated_at: float
    response: dict[str, Any] | None = None
    persist: bool = True
    #: what refreshing needs (:func:`oarlock.keys.accounts.refresh_settings`): never a client secret
    settings: dict[str, Any] | None = None


class KeyStore(Protocol):
    def save(
        self,
        account: str,
        oauth: dict[str, Any],
        version: int,
        response: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> bool:
        """Store a credential unless an equal or newer version is stored; True if it was written.

        ``settings`` (refresh settings, no secret) replace the stored ones when given; when None the
        stored ones are kept.
        """

    def get(self, account: str) -> StoredCredential | None: ...

    def list(self) -> builtins.list[StoredCredential]: ...

    def delete(self, account: str) -> bool:
        """Remove the account's credential; True if there was one."""

    def state(self, account: str) -> AccountState | None:
        """The account's recorded state, None when nothing was ever recorded (it is then active)."""

    def states(self) -> builtins.list[AccountState]: ...

    def record_state(
        self,
        account: str,
        state: str,
        *,
        version: int,
        reason: str | None = None,
        refreshed: bool = False,
        now: float | None = None,
    ) -> StateChange | None:
        """Apply :func:`~oarlock.keys.accounts.next_state` atomically; None when the report was about an older version."""

    def claim(self, account: str, min_interval: float, *, now: float | None = None) -> bool:
        """Take the account's keep-alive turn: True unless one was taken less than ``min_interval`` s ago (any process)."""

    def lock(self, account: str, timeout: float = 30.0) -> AbstractContextManager[None]:
        """Mutual exclusion per account across processes; KeyStoreError on timeout."""

    def close(self) -> None: ...


@runtime_checkable
class ResealableStore(KeyStore, Protocol):
    def reseal(self) -> int:
        """Seal the token fields stored in clear (versions kept); the number of rows rewritten."""


def apply_update_keys(store: KeyStore, payload: dict[str, Any]) -> bool:
    """Persist one updateKeys payload; False when it is older than what is stored or marked persist: false.

    The payload's ``oauth2`` (the cfg block's refresh settings) is stored with the credential without
    its client secret or any key not in :data:`~oarlock.keys.accounts.SETTINGS_KEYS`.
    """
    if payload.get("persist") is False:
        return False
    for name in ("account", "version", "oauth"):
        if name not in payload:
            raise DecodeError(f"updateKeys payload has no {name!r}: cannot store it")
    if not isinstance(payload["oauth"], dict):
        raise DecodeError("updateKeys payload's 'oauth' must be an object")
    account = payload["account"]
    if not isinstance(account, str) or not account or len(account) > 512:
        raise DecodeError("updateKeys payload's 'account' must be a non-empty string (at most 512 characters)")
    version = valid_version(payload["version"])
    response = payload.get("response")
    return store.save(
        account,
        payload["oauth"],
        version,
        response if isinstance(response, dict) else None,
        refresh_settings(payload.get("oauth2")),
    )


#: a version is a time in ms; one further ahead than this is refused (a clock far off, or a forged update
#: that would shadow every later refresh)
VERSION_AHEAD_MS = 24 * 3600 * 1000


def valid_version(value: Any, *, now_ms: int | None = None) -> int:
    """An updateKeys version: a finite integer (not a bool), 0 <= v <= now + 1 day in ms; DecodeError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DecodeError("updateKeys payload's 'version' must be an integer")
    try:
        number = float(value) if isinstance(value, (float, str)) else value
        if isinstance(number, float) and (number != number or number in (float("inf"), float("-inf"))):
            raise ValueError
        version = int(number)
    except (TypeError, ValueError, OverflowError):
        raise DecodeError(f"updateKeys payload's 'version' must be a finite integer, got {str(value)[:40]!r}") from None
    if version != number:
        raise DecodeError(f"updateKeys payload's 'version' must be an integer, got {str(value)[:40]!r}")
    limit = (int(time.time() * 1000) if now_ms is None else now_ms) + VERSION_AHEAD_MS
    if version < 0 or version > limit:
        raise DecodeError(f"updateKeys payload's 'version' {version} is outside 0 .. now + 1 day (in ms): refused")
    return version


def safe_url(url: str) -> str:
    """A store URL fit for messages: any password removed."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", url)
