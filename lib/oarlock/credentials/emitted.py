"""An updateKeys a component emits itself, the sailor way: ``ctx.emit("updateKeys", {"oauth": new_token})``.

sailor components that refresh by hand (the seed's Outlook example) emit only the new token set.
oarlock gives it the same treatment as its own refresh: the account is the cfg's ``_account``,
the emitted token set is merged into the process's credential (so the next messages use it, and
a rotated refresh token is never sent again), it gets a version, it is written to the keys store
with the bounded retries of a refresh, and the event that goes to the transport carries the
standard payload ``{oauth: <merged token set>, account, version}`` plus whatever else the
component put beside ``oauth`` (sailor PUTs the emitted object as ``keys``), except ``oauth2``.

**oauth2**: the keys service stores an updateKeys' ``oauth2`` as the account's refresh settings, and
its keep-alive sends the client's secret to the token_uri named there. A component does not choose
them: an emitted ``oauth2`` is replaced by what the refresh engine would put there for this cfg
(:meth:`RefreshSettings.public() <oarlock.credentials.presets.RefreshSettings.public>` of
``cfg["oauth2"]``, never a client secret), or dropped when the cfg has no usable refresh settings
(no ``oauth2``, no ``token_uri``, or settings the engine refuses).
"""

from __future__ import annotations

import copy
from typing import Any

from oarlock.credentials.manager import CredentialManager, account_of
from oarlock.credentials.presets import RefreshSettings
from oarlock.credentials.token import TokenSet
from oarlock.errors import ConfigurationError
from oarlock.protocol.events import Event, EventName
from oarlock.redact import register_credential

BOOKKEEPING = ("account", "version", "response", "persist")


def is_component_update(payload: Any) -> bool:
    """An updateKeys emitted without oarlock's bookkeeping (no ``account``/``version``), with a token set."""
    return isinstance(payload, dict) and isinstance(payload.get("oauth"), dict) and "version" not in payload


def accept_emitted(manager: CredentialManager, cfg: dict[str, Any], payload: dict[str, Any]) -> Event:
    """Merge a component's updateKeys into the account's credential; the event to publish for it."""
    account = account_of(cfg)
    state = manager._state(account, cfg.get("oauth") or {})
    store = manager.store
    persisted = False
    with state.lock:
        now = manager.clock()
        state.token = TokenSet.from_response(payload["oauth"], now=now, previous=state.token)
        state.version = max(state.version + 1, int(now * 1000))
        state.dead_until, state.dead_error = 0.0, None
        register_credential(state.token.data)
        if store is not None:
            with store.coordinator.lock(account, timeout=manager.lock_timeout_seconds):
                persisted = store.save(state, account, copy.deepcopy(state.token.data), state.version, None)
        merged = copy.deepcopy(state.token.data)
        version = state.version
    extra = {key: value for key, value in payload.items() if key not in ("oauth", "oauth2") and key not in BOOKKEEPING}
    if "oauth2" in payload:
        engine = engine_settings(cfg)
        if engine is not None:
            extra["oauth2"] = engine
    return Event(
        EventName.UPDATE_KEYS, {**extra, "oauth": merged, "account": account, "version": version}, persisted=persisted
    )


def engine_settings(cfg: dict[str, Any]) -> dict[str, str] | None:
    """The ``oauth2`` the refresh engine's updateKeys carry for this cfg; None when it has none to refresh with."""
    oauth2 = cfg.get("oauth2")
    if not isinstance(oauth2, dict):
        return None
    try:
        public = RefreshSettings.from_cfg(oauth2).public()
    except ConfigurationError:
        return None
    return public if public.get("token_uri") else None
