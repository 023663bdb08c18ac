"""What a worker tells the keys service about a credential it found dead (docs/protocol.md §7).

The report names the credential by a one-way :func:`fingerprint_of`, never by a token, so the
service can tell a report about the credential it stores from one about a credential a
re-authorization or a rotation already replaced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from oarlock.credentials.token import identity_of

NEEDS_REAUTHORIZATION_STATE = "needs_reauthorization"


def fingerprint_of(oauth: Mapping[str, Any]) -> str | None:
    """A one-way name of a credential: 16 hex digits of the SHA-256 of its identity (None without one).

    The identity is its refresh token, else its access token (:func:`~oarlock.credentials.token.identity_of`).
    """
    identity = identity_of(oauth)
    if identity is None:
        return None
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]


def dead_credential_report(account: str, version: int, oauth: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """``{"type": "credentialInvalid", account, version, fingerprint, state, reason}`` for a credential found dead."""
    report: dict[str, Any] = {"type": "credentialInvalid", "account": account, "version": version}
    fingerprint = fingerprint_of(oauth)
    if fingerprint is not None:
        report["fingerprint"] = fingerprint
    report.update(state=NEEDS_REAUTHORIZATION_STATE, reason=reason)
    return report
