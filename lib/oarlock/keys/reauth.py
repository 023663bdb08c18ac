"""A credential that comes from outside the refresh engine: a re-authorization, stored so it wins.

``oarlock keys put``, the service's ``PUT /v1/accounts/{id}`` (sailor's route) and any other
door through which a token set enters the store from outside use :func:`store_authorization`: the
token set is stamped (``obtained_at`` when missing), the superseded credential and its lineage are
carried in its lineage (so a worker still holding the old one recognises it as an ancestor and
adopts the new one, never the reverse), its version is later than both now and the stored one,
and the account returns to ``active``. What comes in with the token set's own lineage (an oarlock
worker's PUT of a refresh) keeps it.

It all happens under the account's cross-process lock (:meth:`KeyStore.lock`), the one a worker
holds from reading the stored credential to writing its refresh: a re-authorization that arrives
while a worker's refresh of the old credential is at the token endpoint waits for that write and is
then stored over it, never the reverse (without the lock the refresh landed later, with a later
version, and the re-authorization answered ``stored`` was gone).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from oarlock.credentials.token import LINEAGE_FIELD, TokenSet, offered_wins, supersede, version_of
from oarlock.keys.accounts import ACTIVE
from oarlock.keys.base import KeyStore
from oarlock.redact import register_credential

#: how long a re-authorization waits for a worker's refresh that holds the account's lock (its token request is
#: bounded by the refresh deadline, 60 s by default, plus the lock margin)
LOCK_TIMEOUT_SECONDS = 90.0


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
    only_if_newer: bool = False,
    lock_timeout: float = LOCK_TIMEOUT_SECONDS,
) -> Authorization:
    """Store ``oauth`` as the newest version of ``account``; ``fresh``: a new authorization (no history of its own).

    ``only_if_newer``: not written (``written`` False, the stored version) unless it wins over the stored
    credential by the lineage rules (a token set with its own history, say a worker's PUT of a refresh).
    KeyStoreError when the account's lock is not had within ``lock_timeout`` seconds.
    """
    register_credential(oauth)
    with store.lock(account, timeout=lock_timeout):
        moment = time.time() if now is None else now
        stored = store.get(account)
        if (
            only_if_newer
            and stored is not None
            and not offered_wins(oauth, version_of(oauth), stored.oauth, stored.version)
        ):
            return Authorization(account, False, stored.version, stored.version, dict(stored.oauth))
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
