"""A credential that comes from outside the refresh engine: a re-authorization, stored so it wins.

``oarlock keys put``, the service's ``PUT /v1/accounts/{id}`` (sailor's route) and any other
door through which a token set enters the store from outside use :func:`store_authorization`: the
token set is stamped (``obtained_at`` when missing), the superseded credential and its lineage are
carried in its lineage (so a worker still holding the old one recognises it as an ancestor and
adopts the new one, never the reverse), its version is later than both now and the stored one,
and the account returns to ``active``. What comes in with the token set's own lineage (an oarlock
worker's PUT of a refresh) keeps it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from oarlock.credentials.token import LINEAGE_FIELD, TokenSet, supersede, version_of
from oarlock.keys.accounts import ACTIVE
from oarlock.keys.base import KeyStore
from oarlock.redact import register_credential


@dataclass(frozen=True)
class Authorization:
    account: str
    written: bool
    version: int
    replaced_version: int | None
    oauth: dict[str, Any]


def store_authorization(
    store: KeyStore,
    account: str,
    oauth: dict[str, Any],
    *,
    settings: dict[str, Any] | None = None,
    fresh: bool = True,
    now: float | None = None,
) -> Authorization:
    """Store ``oauth`` as the newest version of ``account``; ``fresh``: a new authorization (no history of its own)."""
    moment = time.time() if now is None else now
    register_credential(oauth)
    stored = store.get(account)
    token = TokenSet(oauth).stamped(moment).data
    if fresh or LINEAGE_FIELD not in token:
        token = {LINEAGE_FIELD: [], **token} if fresh else dict(token)
    if stored is not None:
        token = supersede(token, stored.oauth)
    version = max(version_of(token), int(moment * 1000), stored.version + 1 if stored is not None else 0)
    written = store.save(account, token, version, None, settings)
    if written:
        store.record_state(account, ACTIVE, version=version, now=moment)
    return Authorization(account, written, version, stored.version if stored is not None else None, token)
