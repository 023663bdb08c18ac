"""Dormant credentials: refresh stored credentials before the provider's inactivity window closes.

Microsoft revokes a refresh token that was not used for 90 days; a flow that merely slept would
need a human to re-authorize it. ``refresh_dormant`` refreshes every stored credential not
updated for ``idle_seconds`` through the same engine the workers use (same single-flight, the
store as coordinator, so a worker refreshing at the same moment is not disturbed), and the
result is stored as a new version.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from oarlock.credentials.manager import CredentialManager
from oarlock.errors import CredentialError
from oarlock.keys.store import KeyStore
from oarlock.protocol.events import EventList


@dataclass(frozen=True)
class DormantResult:
    account: str
    refreshed: bool
    version: int | None = None
    error: str | None = None


def refresh_dormant(
    store: KeyStore, oauth2: dict[str, Any], *, idle_seconds: float, manager: CredentialManager | None = None
) -> list[DormantResult]:
    manager = manager or CredentialManager(coordinator=store)
    results = []
    now = time.time()
    for stored in store.list():
        if now - stored.updated_at < idle_seconds:
            continue
        cfg = {"_account": stored.account, "oauth": stored.oauth, "oauth2": oauth2}
        manager.seed(stored.account, stored.oauth, stored.version)
        try:
            bound = manager.credential(manager.newest_cfg(cfg), sink=EventList())
            bound.refresh()
        except CredentialError as exc:
            results.append(DormantResult(stored.account, False, error=str(exc)))
            continue
        latest = store.get(stored.account)
        results.append(DormantResult(stored.account, True, version=latest.version if latest else None))
    return results
