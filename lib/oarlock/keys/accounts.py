"""An account's state beside its credential, and the per-account refresh settings: plain rules, no I/O.

Each account has a state (:data:`ACTIVE`, :data:`REFRESH_FAILING`, :data:`NEEDS_REAUTHORIZATION`)
about one credential version: a failure recorded for version V says nothing about a newer
version (a re-authorization), which is therefore :data:`ACTIVE` until a failure of its own is
recorded. :func:`next_state` is the one transition rule both stores apply inside a transaction,
so two replicas recording the same failure see exactly one of them *enter* the state (the one
that alerts). :func:`refresh_settings` keeps what refreshing an account needs (token_uri,
client_id, client_auth, scope, provider preset, grant_type) and never a client secret: the
settings are stored with the credential, the secret is looked up by client_id elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final

from oarlock.redact import redact_text

ACTIVE: Final = "active"
REFRESH_FAILING: Final = "refresh_failing"
NEEDS_REAUTHORIZATION: Final = "needs_reauthorization"
STATES: Final = (ACTIVE, REFRESH_FAILING, NEEDS_REAUTHORIZATION)

#: the keys of cfg["oauth2"] that are stored with a credential; anything else (client_secret above all) is dropped
SETTINGS_KEYS: Final = ("token_uri", "client_id", "client_auth", "scope", "provider", "grant_type", "refresh")
MAX_REASON = 300
STATE_COLUMNS: Final = "account, state, version, failures, reason, since, last_refresh, last_attempt"


@dataclass(frozen=True)
class AccountState:
    """What the store knows about an account beyond its credential.

    ``version``: the credential version the state is about; ``failures``: transient refresh
    failures in a row; ``reason``: the last failure's reason (redacted, at most 300 characters);
    ``since``: when the current state began; ``last_refresh``/``last_attempt``: the last successful
    refresh and the last keep-alive claim (epoch seconds).
    """

    account: str
    state: str = ACTIVE
    version: int = 0
    failures: int = 0
    reason: str | None = None
    since: float | None = None
    last_refresh: float | None = None
    last_attempt: float | None = None

    def effective(self, stored_version: int | None) -> str:
        """The state of the stored credential: a failure of an older version does not count."""
        if stored_version is not None and stored_version > self.version:
            return ACTIVE
        return self.state


@dataclass(frozen=True)
class StateChange:
    previous: str  # the effective state before, for the version recorded
    current: AccountState

    @property
    def entered(self) -> bool:
        """True when this change moved the account into its state (the one moment to alert)."""
        return self.previous != self.current.state


def next_state(
    old: AccountState | None,
    account: str,
    state: str,
    *,
    version: int,
    reason: str | None,
    now: float,
    refreshed: bool = False,
) -> StateChange | None:
    """The transition for one report, or None when it is about an older credential than the state's (ignored)."""
    if state not in STATES:
        raise ValueError(f"unknown account state {state!r}")
    base = old or AccountState(account, since=now)
    if old is not None and version < old.version:
        return None  # a late report about a superseded credential
    previous = base.state if version == base.version else ACTIVE
    text = redact_text(reason)[:MAX_REASON] if reason else None
    if state == ACTIVE:
        current = replace(
            base,
            state=ACTIVE,
            version=version,
            failures=0,
            reason=None,
            since=base.since if previous == ACTIVE and old is not None else now,
            last_refresh=now if refreshed else base.last_refresh,
        )
    else:
        same = previous == state
        current = replace(
            base,
            state=state,
            version=version,
            failures=(base.failures + 1) if same and state == REFRESH_FAILING else 1,
            reason=text or base.reason,
            since=base.since if same else now,
        )
    return StateChange(previous, current)


def refresh_settings(oauth2: Any) -> dict[str, Any] | None:
    """What refreshing needs from cfg["oauth2"], never the client secret; None when there is nothing usable."""
    if not isinstance(oauth2, dict):
        return None
    kept: dict[str, Any] = {}
    for key in SETTINGS_KEYS:
        value = oauth2.get(key)
        if isinstance(value, list) and key == "scope":
            value = " ".join(str(v) for v in value)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value):
            kept[key] = str(value)[:2048]
    return kept or None


def state_row(state: AccountState) -> tuple[Any, ...]:
    """The columns both stores keep, in their order (account, state, version, failures, reason, since, ...)."""
    return (
        state.account,
        state.state,
        state.version,
        state.failures,
        state.reason,
        state.since,
        state.last_refresh,
        state.last_attempt,
    )


def state_from_row(row: Any) -> AccountState:
    return AccountState(
        account=str(row[0]),
        state=str(row[1]),
        version=int(row[2]),
        failures=int(row[3]),
        reason=row[4],
        since=None if row[5] is None else float(row[5]),
        last_refresh=None if row[6] is None else float(row[6]),
        last_attempt=None if row[7] is None else float(row[7]),
    )
