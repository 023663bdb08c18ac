"""The keys store contract: newest version wins, cross-process lock per account.

:class:`StoredCredential` is what a store holds, :class:`KeyStore` what every store does,
:func:`apply_update_keys` how an updateKeys payload is written to one, :func:`safe_url` how a
store's URL appears in messages (its passwords masked: the userinfo's and libpq's ``password``,
``sslpassword``, ``passfile`` query parameters), :func:`register_url_secrets` how a store opener
makes those passwords known to the redactor. Implementations (:mod:`oarlock.keys.sqlite`,
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
from urllib.parse import quote_plus, unquote, unquote_plus

from oarlock.errors import DecodeError
from oarlock.keys.accounts import AccountState, StateChange, refresh_settings
from oarlock.redact import MASK, register_secrets


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


#: query parameters whose values :func:`safe_url` masks, besides any key containing a word of _SECRET_QUERY_WORDS
_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword", "passfile"})
_SECRET_QUERY_WORDS = ("password", "secret", "token")
#: the authority of a URL without userinfo: libpq's host list (``h1:5432,[::1]:5433``, ports optional)
_HOST_LIST_RE = re.compile(r"(?:\[[^\]]*\]|[^:,\[\]@]*)(?::\d*)?(?:,(?:\[[^\]]*\]|[^:,\[\]@]*)(?::\d*)?)*")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")


def _secret_query_key(key: str) -> bool:
    name = unquote_plus(key).strip().lower()
    return name in _SECRET_QUERY_KEYS or any(word in name for word in _SECRET_QUERY_WORDS)


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the userinfo password of a URL lies (start, end), None without one; never raises.

    libpq's rule: the userinfo ends at the first ``@`` before the first ``/`` after ``//`` (taken
    up to the last ``@`` before the query, so an unencoded ``@`` in the password is covered too).
    Without one, a first segment that is not a host list (a password holding an unencoded ``/``:
    ``//u:pa/ss@host``) runs to the next ``@``.
    """
    scheme = _SCHEME_RE.match(url)
    start = scheme.end() if scheme else 0
    if not url.startswith("//", start):
        return None
    start += 2
    slash = url.find("/", start)
    segment = url[start : slash if slash >= 0 else len(url)]
    first = segment.find("@")
    if first >= 0:
        query = segment.find("?", first)
        at = segment.rfind("@", 0, query if query >= 0 else len(segment))
        colon = segment.find(":", 0, first)
        return (start + colon + 1, start + at) if colon >= 0 else None
    colon = segment.find(":")
    if colon < 0 or _HOST_LIST_RE.fullmatch(segment.split("?", 1)[0]) is not None:
        return None
    at = url.find("@", start + colon)
    if at < 0:
        return None
    rest = re.match(r"[^/?]*", url[at + 1 :])  # more unencoded @ before the host's end: the password's too
    last = rest.group(0).rfind("@") if rest else -1
    return start + colon + 1, at + 1 + last if last >= 0 else at


def _query_spans(url: str, begin: int) -> list[tuple[int, int, str]]:
    """(start, end, key) of each non-empty value of a secret query parameter; the query starts after ``begin``."""
    mark = url.find("?", begin)
    if mark < 0:
        return []
    end = url.find("#", mark)
    end = len(url) if end < 0 else end
    spans, at = [], mark + 1
    for part in url[mark + 1 : end].split("&"):
        key, equals, value = part.partition("=")
        if equals and value and _secret_query_key(key):
            spans.append((at + len(key) + 1, at + len(part), unquote_plus(key).strip().lower()))
        at += len(part) + 1
    return spans


def _secret_spans(url: str) -> list[tuple[int, int, str]]:
    """(start, end, name) of each secret in a URL, in order: ``name`` is "" for the userinfo password."""
    userinfo = _password_span(url)
    if userinfo is None or userinfo[1] <= userinfo[0]:
        return _query_spans(url, userinfo[1] if userinfo is not None else 0)
    return [(*userinfo, ""), *_query_spans(url, userinfo[1])]


def url_secrets(url: str) -> list[str]:
    """The passwords a store URL carries (its userinfo's, its secret query values but ``passfile``), as written."""
    return [url[start:end] for start, end, name in _secret_spans(url) if name != "passfile"]


def register_url_secrets(url: str) -> None:
    """Make the passwords of a store URL known to the redactor (as written, percent-decoded, re-encoded).

    Store openers call it once per URL, so a password printed by something other than :func:`safe_url`
    (a driver's message, a traceback) is masked too. Never raises.
    """
    try:
        found = url_secrets(url)
    except Exception:  # pure string code on a str; a store must open whatever happens here
        return
    for raw in found:
        register_secrets({raw, unquote(raw), unquote_plus(raw), quote_plus(unquote_plus(raw))})


def safe_url(url: str) -> str:
    """A store URL fit for messages: the password of its userinfo and the values of its secret query
    parameters (``password``, ``sslpassword``, ``passfile`` and any key containing ``password``,
    ``secret`` or ``token``) replaced by ``***``; the rest kept as written.

    Never raises: a malformed URL is masked as well as it can be read. The passwords found are
    registered with the redactor (:func:`register_url_secrets`).
    """
    try:
        spans = _secret_spans(url)
    except Exception:  # a message must never fail: pure string code, but be sure
        scheme = _SCHEME_RE.match(url) if isinstance(url, str) else None
        return (scheme.group(0) if scheme else "") + "//***"
    if not spans:
        return url
    parts, at = [], 0
    for start, end, _ in spans:
        parts.append(url[at:start])
        parts.append(MASK)
        at = end
    parts.append(url[at:])
    register_url_secrets(url)
    return "".join(parts)
