"""Credential verification (docs/protocol.md §8): run a component's ``verify_credentials.py``.

``verify(cfg)`` (or ``verify(cfg, ctx)``) may return a bool, a dict (``{"verified": …,
"reason": …}``; a dict without ``verified`` counts as verified), or raise: the exception
text, redacted, becomes the reason. A component without a verifier is verified.

With a keys store (:func:`verify_with_keys`, what ``oarlock verify`` and ``oarlock service
verifyCredentials`` use) the check starts from the newest stored credential of the cfg's
``_account``, exactly like ``oarlock call`` (lineage rules:
:func:`oarlock.credentials.manager.start_from_stored`), and what it refreshes is stored: by the
refresh engine inside the store's lock, or here when the engine could not (``persisted`` false).
Given the ``component``, the cfg gets component.json's ``credentials.oauth2`` defaults by the rule
``oarlock call`` follows (:meth:`~oarlock.component.model.Component.oauth2_for`: the cfg's own
values first, ``{{NAME}}`` placeholders only for what it lacks).

A verifier that returns false (or ``{"verified": false}`` without a reason) after requests through
``ctx.http`` gets the last answer as its reason: ``the verifier returned false (last response: 404
from GET https://api.example.com/me)``, the URL without its query.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import requests

from oarlock.awaitables import run_maybe_async
from oarlock.errors import ComponentError, KeyStoreError
from oarlock.keys.store import KeyStore, apply_update_keys
from oarlock.protocol.events import EventList, EventName
from oarlock.protocol.message import Message
from oarlock.redact import redact, redact_text, register_credential
from oarlock.runtime.context import Context

if TYPE_CHECKING:
    from oarlock.component.model import Component
    from oarlock.credentials.manager import CredentialManager

log = logging.getLogger("oarlock.verify")


def load_verifier(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"oarlock_verifier_{abs(hash(str(path)))}", path)
    if spec is None or spec.loader is None:
        raise ComponentError(f"{path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    root = str(path.parent)
    added = root not in sys.path
    if added:
        sys.path.insert(0, root)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ComponentError(f"{path.name} failed to import: {type(exc).__name__}: {redact_text(str(exc))}") from None
    finally:
        if added:
            sys.path.remove(root)
    if not callable(getattr(module, "verify", None)):
        raise ComponentError(f"{path.name} does not define a callable verify(cfg)")
    return module


def verify_with_keys(
    verifier: Path | None,
    cfg: dict[str, Any],
    *,
    keys: KeyStore | None,
    component: Component | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """:func:`verify_credentials` starting from the newest stored credential, storing what it refreshes.

    With ``component``, the cfg's oauth2 is completed from component.json as for ``oarlock call``
    (placeholders from ``env``, default the environment).
    """
    from oarlock.credentials.manager import CredentialManager, start_from_stored

    start = start_from_stored(cfg, keys)
    if component is not None and component.oauth2_template() and isinstance(start.get("oauth"), dict):
        start = {**start, "oauth2": component.oauth2_for(start, os.environ if env is None else env)}
    manager = CredentialManager(coordinator=keys)
    try:
        return verify_credentials(verifier, start, credentials=manager, keys=keys)
    finally:
        manager.close()


def verify_credentials(
    verifier: Path | None,
    cfg: dict[str, Any],
    *,
    credentials: CredentialManager | None = None,
    keys: KeyStore | None = None,
) -> dict[str, Any]:
    """Run the verifier and return ``{"verified": True}`` or ``{"verified": False, "reason": …}``.

    With ``keys``, an updateKeys the refresh engine did not store itself is written there.
    """
    if verifier is None:
        return {"verified": True}
    module = load_verifier(verifier)
    register_credential(cfg)
    events = EventList()
    ctx = _VerifyContext(
        sink=events,
        message=Message(),
        cfg=cfg,
        snapshot={},
        logger=logging.getLogger("oarlock.component.verify"),
        credentials=credentials,
        refresh_hook=getattr(module, "refresh_credentials", None),
    )
    verify = module.verify
    takes_ctx = len(inspect.signature(verify).parameters) >= 2
    try:
        result = run_maybe_async(verify(cfg, ctx) if takes_ctx else verify(cfg))
    except Exception as exc:
        return {"verified": False, "reason": redact_text(str(exc)) or type(exc).__name__}
    finally:
        ctx.close()
        _store_updates(events, keys)
    outcome = _interpret(result)
    if not outcome["verified"] and ctx.last_response is not None and outcome.get("reason") in _BARE_REASONS:
        outcome["reason"] = f"{outcome['reason']} (last response: {ctx.last_response})"
    updates = events.payloads(EventName.UPDATE_KEYS)
    if updates:
        outcome["updateKeys"] = updates
    return outcome


class _VerifyContext(Context):
    """The verifier's ctx: its ``ctx.http`` remembers the last answer (status, method, URL without query)."""

    last_response: str | None = None

    @property
    def http(self) -> requests.Session:
        fresh = self._http is None
        session = super().http
        if fresh:
            session.hooks["response"].append(self._remember)
        return session

    def _remember(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        method = response.request.method if response.request is not None else None
        self.last_response = f"{response.status_code} from {method or 'a request to'} {_bare_url(response.url)}"


def _bare_url(url: str) -> str:
    """The URL without user info, query and fragment (they may hold secrets)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError:
        return "(an unreadable URL)"
    return redact_text(urlunsplit((parts.scheme, netloc, parts.path, "", "")))


def _store_updates(events: EventList, keys: KeyStore | None) -> None:
    if keys is None:
        return
    for event in list(events.events):
        if event.name is EventName.UPDATE_KEYS and not event.persisted:
            try:
                apply_update_keys(keys, event.payload)
            except KeyStoreError as exc:
                log.error("the refreshed credential could not be stored: %s", redact_text(str(exc)))


FALSE_REASON = "the verifier returned false"
FALSE_FIELD_REASON = "the verifier returned verified: false"
_BARE_REASONS = (FALSE_REASON, FALSE_FIELD_REASON)


def _interpret(result: Any) -> dict[str, Any]:
    if isinstance(result, bool):
        return {"verified": True} if result else {"verified": False, "reason": FALSE_REASON}
    if isinstance(result, dict):
        if "verified" not in result:
            return {"verified": True}
        out: dict[str, Any] = {"verified": bool(result["verified"])}
        if not out["verified"]:
            out["reason"] = redact_text(str(result.get("reason") or FALSE_FIELD_REASON))
        extra = {k: v for k, v in result.items() if k not in ("verified", "reason")}
        out.update(redact(extra))
        return out
    return {"verified": True}
