"""Credential verification (docs/protocol.md §8): run a component's ``verify_credentials.py``.

``verify(cfg)`` (or ``verify(cfg, ctx)``) may return a bool, a dict (``{"verified": …,
"reason": …}``; a dict without ``verified`` counts as verified), or raise: the exception
text, redacted, becomes the reason. A component without a verifier is verified.

With a keys store (:func:`verify_with_keys`, what ``oarlock verify`` and ``oarlock service
verifyCredentials`` use) the check starts from the newest stored credential of the cfg's
``_account``, exactly like ``oarlock call`` (lineage rules:
:func:`oarlock.credentials.manager.start_from_stored`), and what it refreshes is stored: by the
refresh engine inside the store's lock, or here when the engine could not (``persisted`` false).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from oarlock.awaitables import run_maybe_async
from oarlock.errors import ComponentError, KeyStoreError
from oarlock.keys.store import KeyStore, apply_update_keys
from oarlock.protocol.events import EventList, EventName
from oarlock.protocol.message import Message
from oarlock.redact import redact, redact_text, register_credential
from oarlock.runtime.context import Context

if TYPE_CHECKING:
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


def verify_with_keys(verifier: Path | None, cfg: dict[str, Any], *, keys: KeyStore | None) -> dict[str, Any]:
    """:func:`verify_credentials` starting from the newest stored credential, storing what it refreshes."""
    from oarlock.credentials.manager import CredentialManager, start_from_stored

    manager = CredentialManager(coordinator=keys)
    try:
        return verify_credentials(verifier, start_from_stored(cfg, keys), credentials=manager, keys=keys)
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
    ctx = Context(
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
    updates = events.payloads(EventName.UPDATE_KEYS)
    if updates:
        outcome["updateKeys"] = updates
    return outcome


def _store_updates(events: EventList, keys: KeyStore | None) -> None:
    if keys is None:
        return
    for event in list(events.events):
        if event.name is EventName.UPDATE_KEYS and not event.persisted:
            try:
                apply_update_keys(keys, event.payload)
            except KeyStoreError as exc:
                log.error("the refreshed credential could not be stored: %s", redact_text(str(exc)))


def _interpret(result: Any) -> dict[str, Any]:
    if isinstance(result, bool):
        return {"verified": True} if result else {"verified": False, "reason": "the verifier returned false"}
    if isinstance(result, dict):
        if "verified" not in result:
            return {"verified": True}
        out: dict[str, Any] = {"verified": bool(result["verified"])}
        if not out["verified"]:
            out["reason"] = redact_text(str(result.get("reason") or "the verifier returned verified: false"))
        extra = {k: v for k, v in result.items() if k not in ("verified", "reason")}
        out.update(redact(extra))
        return out
    return {"verified": True}
