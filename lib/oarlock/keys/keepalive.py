"""Keep-alive: refresh every stored credential before its provider's inactivity window closes.

Microsoft revokes a refresh token not used for 90 days; a flow that merely slept would need a
human to re-authorize it. :class:`Keepalive` refreshes each stored credential whose last update is
older than its idle window (per provider preset: :meth:`oarlock.credentials.presets.Preset.idle_window`,
Microsoft 14 days, Salesforce and credentials without expiry 24 h, generic 7 days;
``idle_override`` replaces every preset's), through the same engine the workers use
(:class:`~oarlock.credentials.manager.CredentialManager` with the store as coordinator: the
store's lock is taken and the newest stored credential re-read before the provider is called,
and the new version is written under that lock, so a worker refreshing the same account at the
same moment is never disturbed). ``oarlock keys serve --keepalive`` runs it on a schedule
(:meth:`Keepalive.run_forever`), ``oarlock keys refresh-dormant`` once (:meth:`Keepalive.run_once`).

**Which client**: an account is refreshed with its own stored refresh settings (the store never
holds a client secret) and the secret of *its* client_id from the client-secrets file
(:mod:`oarlock.keys.secrets`); an account whose client_id has no secret there is skipped and
reported, never refreshed with another client's. An account without stored settings is skipped
and reported unless a ``default_oauth2`` (the legacy ``--token-uri``/``--client-id`` options of
``refresh-dormant``) is given.

**Where a secret may go**: the stored settings are whatever the account's last updateKeys or PUT
named, so a secret is not simply sent to the stored token_uri. A client whose entry in the
client-secrets file is bound (``{"secret": …, "token_uri": …}``, a :class:`~oarlock.keys.secrets.ClientSecrets`
as :func:`~oarlock.keys.secrets.load_client_secrets` returns it) is refreshed only when the stored
token_uri's origin is one of its own; any other account of that client is skipped and reported
(``skipped_no_secret``, the reason naming the client_id and the origin), its secret sent nowhere. The
``default_oauth2`` secret is bound to the origin of its own token_uri. An unbound secret (the plain
``{"client_id": "secret"}`` form, or a plain mapping given to :class:`Keepalive`) still goes to the
stored token_uri, with one warning per client_id per Keepalive that says how to bind it.

**Replicas**: before refreshing, an account is claimed in the store (:meth:`KeyStore.claim`:
one caller per ``min_interval``, 60 s, across processes), so several replicas refresh a due
account once, and never more than once a minute. An account whose current version is in
``needs_reauthorization`` is not tried again (a dead credential is not hammered); a re-authorized
one (a newer version) is. An account whose refresh keeps failing (``refresh_failing``, a provider
down, say) is tried again only after a backoff from its last attempt: 5 minutes after the first
failure, doubling with every failure in a row, at most 6 hours (:func:`failing_backoff`), so an
outage at one provider costs it one request per account per backoff, not one per cycle. A cycle
given a ``stop`` event ends between two accounts once it is set.

**Outcomes**: success records ``active`` (refreshed) and hands the engine's updateKeys payload to
``publish``; invalid_grant / invalid_client records ``needs_reauthorization`` with the provider's
reason and hands the state change to ``alerter.notify``; any other failure records
``refresh_failing``. One log line per account handled and one summary line per cycle, even when
nothing was due.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from oarlock.credentials.manager import CredentialManager
from oarlock.credentials.presets import PRESETS, Preset
from oarlock.credentials.token import TokenSet, parse_lifetime
from oarlock.errors import CredentialNeedsReauthorization, KeyStoreError, OarlockError
from oarlock.keys.accounts import (
    ACTIVE,
    NEEDS_REAUTHORIZATION,
    REFRESH_FAILING,
    AccountState,
    StateChange,
    refresh_settings,
)
from oarlock.keys.base import KeyStore, StoredCredential
from oarlock.keys.secrets import BOUND_FORMAT, ClientSecrets, permits, token_origin
from oarlock.protocol.events import EventList, EventName
from oarlock.redact import redact_text, register_secret

log = logging.getLogger("oarlock.keys.keepalive")
#: warnings about the client-secrets configuration (the logger of :mod:`oarlock.keys.secrets`), not per account
config_log = logging.getLogger("oarlock.keys")

#: a due account is claimed at most this often (seconds), whichever replica asks
MIN_INTERVAL_SECONDS = 60.0
#: a failing account's backoff from its last attempt (failing_backoff): the first, doubled per failure, at most
FAILING_BACKOFF_FIRST_SECONDS = 300.0
FAILING_BACKOFF_MAX_SECONDS = 6 * 3600.0
NO_SETTINGS = "no refresh settings stored"


class Alerter(Protocol):
    """What the keep-alive tells when an account's state changed (:class:`oarlock.keys.alerts.Alerter`)."""

    def notify(self, change: StateChange) -> Any: ...


Publish = Callable[[dict[str, Any]], Any]


@dataclass
class KeepaliveSummary:
    """One cycle: the accounts in each outcome.

    ``due``: accounts idle past their window and not dead; each of them ends in exactly one of
    ``refreshed``, ``skipped_no_secret``, ``skipped_no_settings``, ``skipped_elsewhere`` (claimed by
    another replica, or refreshed by someone else meanwhile), ``failed``, ``needs_reauthorization``.
    ``skipped_needs_reauthorization``: accounts whose current version is known dead (not due, not tried again).
    ``reasons``: why, for every account skipped, failed or dead; ``versions``: the new versions.
    """

    checked: int = 0
    due: list[str] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)
    skipped_no_secret: list[str] = field(default_factory=list)
    skipped_no_settings: list[str] = field(default_factory=list)
    skipped_elsewhere: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    needs_reauthorization: list[str] = field(default_factory=list)
    skipped_needs_reauthorization: list[str] = field(default_factory=list)
    skipped_backoff: list[str] = field(default_factory=list)
    #: the cycle ended early: its stop event was set between two accounts
    interrupted: bool = False
    reasons: dict[str, str] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)

    @property
    def problems(self) -> bool:
        """This cycle found something for a human: a failure, a credential found dead, a due account not tried."""
        return bool(self.failed or self.needs_reauthorization or self.skipped_no_secret or self.skipped_no_settings)

    def counts(self) -> dict[str, int]:
        return {name: len(value) if isinstance(value, list) else value for name, value in self._lists().items()}

    def as_dict(self) -> dict[str, Any]:
        return {**self._lists(), "reasons": dict(self.reasons), "versions": dict(self.versions)}

    def _lists(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "due": list(self.due),
            "refreshed": list(self.refreshed),
            "skipped_no_secret": list(self.skipped_no_secret),
            "skipped_no_settings": list(self.skipped_no_settings),
            "skipped_elsewhere": list(self.skipped_elsewhere),
            "failed": list(self.failed),
            "needs_reauthorization": list(self.needs_reauthorization),
            "skipped_needs_reauthorization": list(self.skipped_needs_reauthorization),
            "skipped_backoff": list(self.skipped_backoff),
        }


class Keepalive:
    """Refreshes the store's dormant credentials; see the module docstring. Use from one thread."""

    def __init__(
        self,
        store: KeyStore,
        secrets: Mapping[str, str],
        *,
        idle_override: float | None = None,
        min_interval: float = MIN_INTERVAL_SECONDS,
        publish: Publish | None = None,
        alerter: Alerter | None = None,
        clock: Callable[[], float] = time.time,
        default_oauth2: Mapping[str, Any] | None = None,
        manager: CredentialManager | None = None,
    ) -> None:
        if idle_override is not None and not idle_override >= 0:
            raise ValueError(f"idle_override must be a number of seconds >= 0, not {idle_override!r}")
        self.store = store
        self.secrets = dict(secrets)
        #: client_id -> the token-endpoint origins its secret may go to (bound clients only)
        self.token_origins: dict[str, frozenset[str]] = (
            dict(secrets.bindings) if isinstance(secrets, ClientSecrets) else {}
        )
        self._unbound_warned: set[str] = set()
        self.idle_override = idle_override
        self.min_interval = min_interval
        self.publish = publish
        self.alerter = alerter
        self.clock = clock
        self.default_settings = refresh_settings(dict(default_oauth2)) if default_oauth2 else None
        self.default_secret: str | None = None
        if default_oauth2:
            secret = default_oauth2.get("client_secret")
            self.default_secret = secret if isinstance(secret, str) and secret else None
            register_secret(self.default_secret)
        default_origin = token_origin(self.default_settings.get("token_uri")) if self.default_settings else None
        #: the default secret goes only to its own token_uri's origin
        self.default_origins = frozenset({default_origin} if default_origin else ())
        for secret in self.secrets.values():
            register_secret(secret)
        self.manager = manager or CredentialManager(coordinator=store, clock=clock)
        self.cycles = 0

    # -- the schedule ----------------------------------------------------------------------------
    def run_forever(self, stop: threading.Event, period_seconds: float) -> None:
        """A cycle at once, then one every ``period_seconds`` until ``stop`` is set (a cycle's failure is logged)."""
        while not stop.is_set():
            try:
                self.run_once(stop)
            except OarlockError as exc:  # the store is unreachable, say: the next cycle tries again
                log.error("keep-alive cycle failed: %s", redact_text(str(exc)))
            except Exception as exc:  # a bug must not end the keep-alive silently
                log.error("keep-alive cycle failed: %s: %s", type(exc).__name__, redact_text(str(exc)))
            stop.wait(period_seconds)

    def close(self) -> None:
        """Pending store writes of the engine are tried once more (the store itself is the caller's)."""
        self.manager.close()

    # -- one cycle -------------------------------------------------------------------------------
    def run_once(self, stop: threading.Event | None = None) -> KeepaliveSummary:
        """Refresh every due account once (ending early once ``stop`` is set); KeyStoreError when the store
        cannot even be listed."""
        summary = KeepaliveSummary()
        stored = self.store.list()
        states = {state.account: state for state in self.store.states()}
        summary.checked = len(stored)
        for credential in stored:
            if stop is not None and stop.is_set():
                summary.interrupted = True
                log.info("keep-alive cycle %s stopped before account %s", self.cycles + 1, credential.account)
                break
            state = states.get(credential.account)
            effective = state.effective(credential.version) if state is not None else ACTIVE
            if state is not None and effective == NEEDS_REAUTHORIZATION:
                summary.skipped_needs_reauthorization.append(credential.account)
                summary.reasons[credential.account] = state.reason or NEEDS_REAUTHORIZATION
                continue
            if state is not None and effective == REFRESH_FAILING and self._backing_off(state, summary):
                continue
            if self._idle(credential) < self._window(credential):
                continue
            summary.due.append(credential.account)
            self._handle(credential, summary)
        self.manager.flush()
        self.cycles += 1
        log.info("keep-alive cycle %s: %s", self.cycles, json.dumps(summary.counts()))
        return summary

    def _backing_off(self, state: AccountState, summary: KeepaliveSummary) -> bool:
        """True (and the account reported) while a failing account's backoff since its last attempt runs."""
        if not state.failures or state.last_attempt is None:
            return False
        wait = failing_backoff(state.failures)
        left = state.last_attempt + wait - self.clock()
        if left <= 0:
            return False
        summary.skipped_backoff.append(state.account)
        summary.reasons[state.account] = (
            f"refresh failing ({state.failures} in a row, last: {state.reason or 'unknown'}): "
            f"next attempt in {left:.0f} s"
        )
        return True

    def _idle(self, credential: StoredCredential) -> float:
        return self.clock() - credential.updated_at

    def _window(self, credential: StoredCredential) -> float:
        if self.idle_override is not None:
            return self.idle_override
        preset = preset_of(credential.settings or self.default_settings)
        oauth = credential.oauth
        expires = TokenSet(oauth).expires_at is not None or parse_lifetime(oauth.get("expires_in")) is not None
        return preset.idle_window(expires=expires)

    def _oauth2(self, credential: StoredCredential) -> tuple[dict[str, Any] | None, str | None, str]:
        """(cfg["oauth2"] with the client secret, None) or (None, the bucket, the reason) when it cannot be refreshed."""
        settings = credential.settings
        if not settings:
            if self.default_settings is None:
                return None, "skipped_no_settings", NO_SETTINGS
            return {**self.default_settings, "client_secret": self.default_secret}, None, ""
        if not settings.get("token_uri"):
            return None, "skipped_no_settings", "its refresh settings have no token_uri"
        client_id = settings.get("client_id")
        if not client_id:
            return None, "skipped_no_secret", "its refresh settings name no client_id"
        allowed: frozenset[str] | None
        if client_id in self.secrets:
            secret: str | None = self.secrets[client_id]
            allowed = self.token_origins.get(client_id)
        elif self.default_settings is not None and client_id == self.default_settings.get("client_id"):
            secret = self.default_secret
            allowed = self.default_origins if secret else None
        else:
            return None, "skipped_no_secret", f"no client secret for client_id {client_id!r} in the client secrets"
        if not permits(allowed, settings.get("token_uri")):
            assert allowed is not None
            return (
                None,
                "skipped_no_secret",
                foreign_endpoint(client_id, token_origin(settings.get("token_uri")), allowed),
            )
        if allowed is None and secret:
            self._warn_unbound(client_id)
        return {**settings, "client_secret": secret}, None, ""

    def _warn_unbound(self, client_id: str) -> None:
        """Once per client_id: its secret goes to whatever token_uri an account's settings name."""
        if client_id in self._unbound_warned:
            return
        self._unbound_warned.add(client_id)
        config_log.warning(
            "keep-alive: the client secret of client_id %r is not bound to a token endpoint: it is sent to whatever "
            "token_uri an account's stored settings name (they come from updateKeys); bind it in the client secrets "
            "file: %s",
            client_id,
            BOUND_FORMAT.replace("<client_id>", client_id),
        )

    def _handle(self, credential: StoredCredential, summary: KeepaliveSummary) -> None:
        account = credential.account
        oauth2, bucket, why = self._oauth2(credential)
        if oauth2 is None:
            assert bucket is not None
            getattr(summary, bucket).append(account)
            summary.reasons[account] = why
            log.warning("keep-alive: account %s skipped: %s", account, why, extra={"account": account})
            return
        try:
            started = self.clock()
            if not self.store.claim(account, self.min_interval, now=started):
                self._elsewhere(
                    summary, account, "claimed less than a minute ago (by another replica or an earlier run)"
                )
                return
            fresh = self.store.get(account)
            if fresh is None:
                self._elsewhere(summary, account, "deleted meanwhile")
                return
            if fresh.version != credential.version:
                if self._idle(fresh) < self._window(fresh):
                    self._elsewhere(summary, account, f"refreshed meanwhile (version {fresh.version})")
                    return
                oauth2, bucket, why = self._oauth2(fresh)  # re-authorized meanwhile, perhaps with another client
                if oauth2 is None:
                    self._elsewhere(summary, account, f"stored anew meanwhile, and now {why}")
                    return
            self._refresh(fresh, oauth2, started, summary)
        except KeyStoreError as exc:
            self._fail(summary, account, redact_text(str(exc)), record=None)

    def _refresh(
        self, fresh: StoredCredential, oauth2: dict[str, Any], started: float, summary: KeepaliveSummary
    ) -> None:
        account = fresh.account
        self.manager.seed(account, fresh.oauth, fresh.version)
        sink = EventList()
        cfg = {"_account": account, "oauth": fresh.oauth, "oauth2": oauth2}
        try:
            bound = self.manager.credential(self.manager.newest_cfg(cfg), sink=sink)
            # "always" with the claim's moment: skipped when a worker refreshed after it (seen under the lock)
            self.manager.refresh(bound, reason="always", started_at=started)
        except CredentialNeedsReauthorization as exc:
            reason = redact_text(str(exc))
            summary.needs_reauthorization.append(account)
            summary.reasons[account] = reason
            log.error("keep-alive: account %s needs re-authorization: %s", account, reason, extra={"account": account})
            change = self.store.record_state(
                account, NEEDS_REAUTHORIZATION, version=fresh.version, reason=reason, now=self.clock()
            )
            if change is not None and self.alerter is not None:
                try:
                    self.alerter.notify(change)
                except Exception as alert_error:  # the alerter's failure is its own; the cycle goes on
                    log.error("keep-alive: account %s: alert failed: %s", account, type(alert_error).__name__)
            return
        except KeyStoreError:
            raise
        except OarlockError as exc:  # a transient endpoint failure, settings the engine refuses, …
            self._fail(summary, account, redact_text(str(exc)), record=fresh.version)
            return
        updates = [event for event in sink.events if event.name is EventName.UPDATE_KEYS]
        if not updates:
            self._elsewhere(summary, account, "refreshed by another process meanwhile")
            return
        event = updates[-1]
        version = int(event.payload["version"])
        if not event.persisted:
            # the engine keeps it pending and retries; the event is still published so it is not lost
            self._publish(account, event.payload)
            self._fail(summary, account, "refreshed, but the keys store could not be written yet", record=None)
            return
        self.store.record_state(account, ACTIVE, version=version, refreshed=True, now=self.clock())
        summary.refreshed.append(account)
        summary.versions[account] = version
        log.info(
            "keep-alive: account %s refreshed after %.0f s idle: version %s",
            account,
            started - fresh.updated_at,
            version,
            extra={"account": account, "version": version},
        )
        self._publish(account, event.payload)

    def _publish(self, account: str, payload: dict[str, Any]) -> None:
        if self.publish is None:
            return
        try:
            self.publish(payload)
        except Exception as exc:  # stored already: a publish that fails loses nothing, the cycle goes on
            log.warning(
                "keep-alive: account %s: stored but not published: %s: %s",
                account,
                type(exc).__name__,
                redact_text(str(exc)),
                extra={"account": account},
            )

    def _elsewhere(self, summary: KeepaliveSummary, account: str, why: str) -> None:
        summary.skipped_elsewhere.append(account)
        summary.reasons[account] = why
        log.info("keep-alive: account %s not refreshed here: %s", account, why, extra={"account": account})

    def _fail(self, summary: KeepaliveSummary, account: str, reason: str, *, record: int | None) -> None:
        summary.failed.append(account)
        summary.reasons[account] = reason
        log.warning("keep-alive: account %s: refresh failed: %s", account, reason, extra={"account": account})
        if record is not None:
            try:
                self.store.record_state(account, REFRESH_FAILING, version=record, reason=reason, now=self.clock())
            except KeyStoreError as exc:
                log.warning("keep-alive: account %s: state not recorded: %s", account, redact_text(str(exc)))


def failing_backoff(failures: int) -> float:
    """Seconds a failing account waits from its last attempt: 5 min after one failure, doubling, at most 6 h."""
    doublings = min(max(failures, 1) - 1, 16)
    return min(FAILING_BACKOFF_MAX_SECONDS, FAILING_BACKOFF_FIRST_SECONDS * float(2**doublings))


def foreign_endpoint(client_id: str, origin: str | None, allowed: frozenset[str]) -> str:
    """Why an account is not refreshed with its client's bound secret (names the origins, never the secret)."""
    where = (
        f"the stored token_uri's origin {origin}" if origin else "the stored token_uri (not an absolute http(s) URL)"
    )
    bound = ", ".join(sorted(allowed)) or "no token endpoint"
    return (
        f"the client secret of client_id {client_id!r} is bound to {bound}, not to {where}: "
        "not sent there (add that token endpoint to the client's entry if it is the client's own)"
    )


def preset_of(settings: Mapping[str, Any] | None) -> Preset:
    """The preset an account's stored settings name (generic when none or unknown)."""
    name = str((settings or {}).get("provider") or "generic")
    return PRESETS.get(name) or PRESETS["generic"]


__all__ = ["Alerter", "Keepalive", "KeepaliveSummary", "Publish", "failing_backoff", "foreign_endpoint", "preset_of"]
