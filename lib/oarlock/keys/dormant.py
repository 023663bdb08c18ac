"""The one-shot dormant refresh of before, kept for its callers: a thin wrapper over :mod:`oarlock.keys.keepalive`.

``refresh_dormant(store, oauth2, idle_seconds=...)`` runs one :meth:`Keepalive.run_once` with
``oauth2`` as the default refresh settings (for accounts without stored ones; an account with
stored settings is refreshed with its own, and with ``oauth2``'s secret only if it names the same
client_id) and ``idle_seconds`` overriding every preset's idle window, and returns one
:class:`DormantResult` per due account.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oarlock.credentials.manager import CredentialManager
from oarlock.keys.base import KeyStore
from oarlock.keys.keepalive import Keepalive


@dataclass(frozen=True)
class DormantResult:
    account: str
    refreshed: bool
    version: int | None = None
    error: str | None = None


def refresh_dormant(
    store: KeyStore, oauth2: dict[str, Any], *, idle_seconds: float, manager: CredentialManager | None = None
) -> list[DormantResult]:
    keepalive = Keepalive(store, {}, idle_override=idle_seconds, default_oauth2=oauth2, manager=manager)
    summary = keepalive.run_once()
    keepalive.close()
    return [
        DormantResult(account, True, version=summary.versions[account])
        if account in summary.versions
        else DormantResult(account, False, error=summary.reasons.get(account))
        for account in summary.due
    ]
