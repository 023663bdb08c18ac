"""Token sets: parse any token response, compute the expiry once, merge without losing anything.

Merge rules (ARCHITECTURE.md behaviour 4):
- the new response is laid over the stored credential: unknown fields (``instance_url``,
  ``id_token``, ``scope``, ``ext_expires_in`` …) are kept, new values win;
- a response without ``refresh_token`` keeps the old one (Google, Microsoft sometimes);
- ``expires_at`` (absolute epoch seconds) is computed when the response arrives from
  ``expires_in`` (an int or a numeric string) and never recomputed later; a response with
  no expiry information leaves the expiry unknown (Salesforce), and so does one whose
  ``expires_in`` is not a finite number > 0 (``0``, ``-5``, ``"abc"``, ``NaN``, ``null``: some
  APIs say "no expiry" that way), so such a token is refreshed on a 401 and by the keep-alive,
  never before every request; an ``expires_at`` equal to ``obtained_at`` next to such an
  ``expires_in`` (what ``expires_in: 0`` gave before) counts as unknown too;
- ``obtained_at`` records when the response arrived;
- ``oarlock_lineage`` (oarlock's own field, kept inside ``oauth`` so it travels with the
  credential through every store and updateKeys without a schema change) lists the first 16
  hex characters of the sha256 of each refresh token this credential was rotated FROM, newest
  first, and of the credentials it superseded as a re-authorization (with their own lineage). A
  credential without a refresh token uses its access token the same way. Every merge carries it
  over and adds the token it rotated away. At most :data:`LINEAGE_MAX` (20) hashes: the newest,
  and always the last two, the pins: the root (the first credential oarlock saw of the account)
  and, after a re-authorization, the re-authorized credential itself (otherwise the second-oldest
  hash), so a cfg file or platform cfg that never follows the rotations is recognised forever.

Lineage decides which of two credentials of one account is the live one (:func:`relate`):
the same refresh token -> the newer version wins (as before); the offered token's hash is in the
known one's lineage -> the offered one is stale (the known one descends from it); the known
token's hash is in the offered one's lineage -> the offered one descends from it and wins;
neither -> the offered one is a re-authorization (the platform's own OAuth callback, ``oarlock
keys put``) and wins at once (:func:`offered_wins`), unless it carries an ``obtained_at`` older
than the known version (then it is a descendant whose link fell out of the bounded lineage), or it
is a raw token set (no ``obtained_at``) and the known one's history began before lineage tracking
(:func:`lineage_known`; its lineage then ends with :data:`LINEAGE_UNKNOWN`): then the versions
decide as before, so an upgrade never lets a cfg's long-rotated token replace a live stored one
(:func:`shadowed` says when; ``oarlock keys put`` re-authorizes such an account). A credential
without any token never counts as a re-authorization.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from oarlock.errors import CredentialNeedsReauthorization, TokenEndpointError

#: camelCase spellings a custom refresh hook may return (seed 003), mapped to OAuth2 names
ALIASES = {
    "accessToken": "access_token",
    "refreshToken": "refresh_token",
    "expiresIn": "expires_in",
    "tokenType": "token_type",
    "expiresAt": "expires_at",
}
REAUTHORIZE_ERRORS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})
#: the field of ``oauth`` holding the hashes of the tokens a credential was rotated from
LINEAGE_FIELD = "oarlock_lineage"
LINEAGE_MAX = 20
#: the last entry of a lineage whose beginning oarlock does not know (it started before lineage tracking)
LINEAGE_UNKNOWN = "unknown"


def version_of(oauth: Mapping[str, Any]) -> int:
    """The version a credential carries implicitly: when it was obtained, in ms (0 when unknown)."""
    obtained = oauth.get("obtained_at")
    try:
        return int(float(obtained) * 1000) if obtained is not None else 0
    except (TypeError, ValueError):
        return 0


def lineage_hash(token: str) -> str:
    """The short, non-secret name of a token in a lineage: 16 hex characters of its sha256."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def identity_of(oauth: Mapping[str, Any]) -> str | None:
    """What identifies a credential: its refresh token, else its access token (None without either)."""
    for name in ("refresh_token", "access_token"):
        value = oauth.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def lineage_of(oauth: Mapping[str, Any]) -> list[str]:
    raw = oauth.get(LINEAGE_FIELD)
    return [h for h in raw if isinstance(h, str)] if isinstance(raw, list) else []


def lineage_known(oauth: Mapping[str, Any]) -> bool:
    """Whether oarlock knows the credential's history from its start.

    True for a raw token set (no ``obtained_at``) and for one oarlock tracked from its first sight;
    False for one with an ``obtained_at`` but no lineage (written before lineage tracking) and for
    every credential descending from such a one.
    """
    raw = oauth.get(LINEAGE_FIELD)
    if isinstance(raw, list):
        return not raw or raw[-1] != LINEAGE_UNKNOWN
    return parse_seconds(oauth.get("obtained_at")) is None


def history_of(oauth: Mapping[str, Any]) -> list[str]:
    """The lineage a successor carries on: the credential's own, or the unknown mark for an untracked one."""
    lineage = lineage_of(oauth)
    return lineage if lineage or lineage_known(oauth) else [LINEAGE_UNKNOWN]


def bounded_lineage(hashes: list[str]) -> list[str]:
    """At most LINEAGE_MAX hashes: the newest ones, and always the last two (the pins, see the module docstring)."""
    return hashes if len(hashes) <= LINEAGE_MAX else [*hashes[: LINEAGE_MAX - 2], *hashes[-2:]]


class Relation(enum.Enum):
    """How an offered credential relates to a known one of the same account (see the module docstring)."""

    SAME = "same"
    OLDER = "older"
    NEWER = "newer"
    UNRELATED = "unrelated"


def relate(offered: Mapping[str, Any], known: Mapping[str, Any]) -> Relation:
    mine, theirs = identity_of(offered), identity_of(known)
    if mine is None or theirs is None or mine == theirs:
        return Relation.SAME
    if lineage_hash(mine) in lineage_of(known):
        return Relation.OLDER
    if lineage_hash(theirs) in lineage_of(offered):
        return Relation.NEWER
    return Relation.UNRELATED


def offered_wins(
    offered: Mapping[str, Any], offered_version: int, known: Mapping[str, Any], known_version: int
) -> bool:
    """Whether a credential offered by the cfg/platform replaces the known (stored or in-memory) one."""
    relation = relate(offered, known)
    if relation is Relation.SAME:
        return offered_version > known_version
    if relation is Relation.UNRELATED:
        return offered_version > known_version or (offered_version == 0 and lineage_known(known))
    return relation is Relation.NEWER


def shadowed(offered: Mapping[str, Any], offered_version: int, known: Mapping[str, Any]) -> bool:
    """A raw credential not in the known one's lineage that loses only because that lineage's start is unknown."""
    return offered_version == 0 and relate(offered, known) is Relation.UNRELATED and not lineage_known(known)


def supersede(winner: Mapping[str, Any], loser: Mapping[str, Any]) -> dict[str, Any]:
    """The winner of a re-authorization with the superseded credential (and its lineage) in its lineage.

    The winner's own token is pinned before the root, so a cfg that still holds the re-authorized
    credential is known as its ancestor however many rotations later.
    """
    replaced, entry = identity_of(loser), identity_of(winner)
    if replaced is None or entry is None:
        return dict(winner)
    chain = [lineage_hash(replaced), *history_of(loser)]
    lineage = bounded_lineage([*lineage_of(winner), *chain[:-1], lineage_hash(entry), chain[-1]])
    return {**winner, LINEAGE_FIELD: lineage}


def stored_wins(
    stored: Mapping[str, Any], stored_version: int, current: Mapping[str, Any], current_version: int
) -> bool:
    """Whether a stored credential replaces the one in memory: a descendant always, an unrelated one if newer."""
    relation = relate(stored, current)
    if relation is Relation.NEWER:
        return True
    return relation is not Relation.OLDER and stored_version > current_version


def parse_seconds(value: Any) -> float | None:
    """``expires_in`` as the providers send it: an int, a float or a numeric string; None if unusable."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def parse_lifetime(value: Any) -> float | None:
    """``expires_in`` as a lifetime: a finite number of seconds > 0 (int, float or numeric string), else None.

    None (expiry unknown) for ``0``, negative numbers, NaN, infinities, ``null`` and non-numeric text.
    """
    seconds = parse_seconds(value)
    return seconds if seconds is not None and seconds > 0 else None


@dataclass(frozen=True)
class TokenSet:
    """The merged credential (``cfg["oauth"]``)."""

    data: dict[str, Any]

    @property
    def access_token(self) -> str | None:
        value = self.data.get("access_token")
        return value if isinstance(value, str) else None

    @property
    def refresh_token(self) -> str | None:
        value = self.data.get("refresh_token")
        return value if isinstance(value, str) and value else None

    @property
    def expires_at(self) -> float | None:
        """Absolute expiry in epoch seconds; ``0`` or a past time means expired, None means unknown.

        Unknown too: an ``expires_at`` derived from an unusable ``expires_in`` (equal to ``obtained_at``
        next to an ``expires_in`` that is not a finite number > 0, as ``expires_in: 0`` was stored before).
        """
        expires_at = parse_seconds(self.data.get("expires_at"))
        if (
            expires_at is not None
            and self.data.get("expires_in") is not None
            and parse_lifetime(self.data.get("expires_in")) is None
            and expires_at == self.obtained_at
        ):
            return None
        return expires_at

    @property
    def obtained_at(self) -> float | None:
        return parse_seconds(self.data.get("obtained_at"))

    @property
    def identity(self) -> str | None:
        return identity_of(self.data)

    @property
    def lineage(self) -> list[str]:
        return lineage_of(self.data)

    def stamped(self, now: float) -> TokenSet:
        """This token set with ``obtained_at`` set to ``now`` if it has none (a raw token response)."""
        if self.obtained_at is not None:
            return self
        return TokenSet({LINEAGE_FIELD: [], **self.data, "obtained_at": now})

    @property
    def lifetime(self) -> float | None:
        """How long the token was issued for: from obtained_at or the provider's expires_in, the longer.

        (A credential oarlock stamped when it first saw it has an ``obtained_at`` later than its issue.)
        """
        if self.expires_at is None:
            return None
        expires_in = parse_lifetime(self.data.get("expires_in"))
        if self.obtained_at is not None:
            span = max(0.0, self.expires_at - self.obtained_at)
            return max(span, expires_in) if expires_in is not None else span
        return expires_in

    def leeway(self, configured: float) -> float:
        """The configured leeway, capped at half the token's lifetime for short-lived tokens."""
        lifetime = self.lifetime
        return min(configured, lifetime / 2) if lifetime else configured

    def expires_within(self, seconds: float, now: float) -> bool:
        expires_at = self.expires_at
        return expires_at is not None and now >= expires_at - seconds

    @classmethod
    def from_response(cls, response: Mapping[str, Any], *, now: float, previous: TokenSet | None = None) -> TokenSet:
        """Merge a token response into the previous credential (see the module docstring)."""
        fresh = {ALIASES.get(k, k): v for k, v in response.items()}
        merged = dict(previous.data) if previous else {}
        merged.pop("expires_at", None)
        merged.update(fresh)
        if not fresh.get("refresh_token") and previous and previous.refresh_token:
            merged["refresh_token"] = previous.refresh_token
        expires_in = parse_lifetime(fresh.get("expires_in"))  # 0, negative or garbage: as if absent
        if expires_in is not None:
            merged["expires_at"] = now + expires_in
        elif parse_seconds(fresh.get("expires_at")) is not None:
            merged["expires_at"] = parse_seconds(fresh["expires_at"])
        else:
            merged.pop("expires_at", None)
        merged["obtained_at"] = now
        lineage = history_of(previous.data) if previous is not None else lineage_of(merged)
        before = previous.identity if previous is not None else None
        if before is not None and identity_of(merged) != before:
            lineage = [lineage_hash(before), *lineage]
        merged[LINEAGE_FIELD] = bounded_lineage(lineage)
        return cls(merged)


def take_offered(
    offered: Mapping[str, Any],
    known: Mapping[str, Any],
    known_version: int,
    *,
    now: float,
    offered_version: int | None = None,
) -> tuple[dict[str, Any], int, Relation] | None:
    """None when the known credential stays; else the offered one as it is taken, its version, its relation.

    Taken means: ``obtained_at`` stamped if missing, and a re-authorization (UNRELATED) supersedes the
    known one (:func:`supersede`) and gets a version newer than it. ``offered_version`` is what the
    offered credential carried before a stamp (default: :func:`version_of` it).
    """
    version = version_of(offered) if offered_version is None else offered_version
    if not offered_wins(offered, version, known, known_version):
        return None
    relation = relate(offered, known)
    data = TokenSet(dict(offered)).stamped(now).data
    if relation is Relation.SAME:
        return data, max(version, version_of(data)), relation
    if relation is Relation.UNRELATED:
        data = supersede(data, known)
    return data, max(version_of(data), known_version + 1), relation


def parse_token_response(
    status: int, content_type: str | None, body: bytes, *, endpoint: str, account: str | None = None
) -> dict[str, Any]:
    """The JSON of a successful token response, or the error class that fits the failure.

    - 5xx / 429: TokenEndpointError(retryable=True)
    - invalid_grant / invalid_client / unauthorized_client: CredentialNeedsReauthorization
    - anything else non-2xx, non-JSON bodies, JSON without access_token: TokenEndpointError
    No message contains the body beyond the OAuth2 ``error`` / ``error_description``.
    """
    who = f" for account {account}" if account else ""
    data = _decode_body(content_type, body)
    if status == 429 or status >= 500:
        raise TokenEndpointError(
            f"the token endpoint {endpoint} answered {status}{who}", account=account, status=status, retryable=True
        )
    if status >= 400:
        error = str(data.get("error", "")) if isinstance(data, dict) else ""
        description = str(data.get("error_description", "")) if isinstance(data, dict) else ""
        detail = f" ({description})" if description else ""
        if error in REAUTHORIZE_ERRORS:
            raise CredentialNeedsReauthorization(
                f"account {account or '(unnamed)'} must be re-authorized: the token endpoint {endpoint} "
                f"answered {error}{detail}",
                account=account,
                oauth_error=error,
            )
        what = error or (_kind(content_type, body) if data is None else "an error")
        raise TokenEndpointError(
            f"the token endpoint {endpoint} answered {status} {what}{detail}{who}", account=account, status=status
        )
    if isinstance(data, dict) and str(data.get("error", "")) in REAUTHORIZE_ERRORS:
        # some endpoints answer 200 with an OAuth2 error body
        raise CredentialNeedsReauthorization(
            f"account {account or '(unnamed)'} must be re-authorized: the token endpoint {endpoint} "
            f"answered {data['error']}" + (f" ({data['error_description']})" if data.get("error_description") else ""),
            account=account,
            oauth_error=str(data["error"]),
        )
    if not isinstance(data, dict):
        raise TokenEndpointError(
            f"the token endpoint {endpoint} answered {status} with {_kind(content_type, body)} instead of a JSON "
            f"token response{who}",
            account=account,
            status=status,
        )
    if not isinstance(data.get("access_token"), str) or not data["access_token"]:
        fields = ", ".join(sorted(data)[:8]) or "no fields"
        raise TokenEndpointError(
            f"the token endpoint {endpoint} answered {status} JSON without access_token (fields: {fields}){who}",
            account=account,
            status=status,
        )
    return data


def _decode_body(content_type: str | None, body: bytes) -> Any:
    """JSON, or a form-encoded body (some endpoints answer ``access_token=…&token_type=bearer``)."""
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        pass
    if content_type and "x-www-form-urlencoded" in content_type.lower():
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            return None
        data: dict[str, Any] = dict(pairs)
        return data
    return None


def _kind(content_type: str | None, body: bytes) -> str:
    if not body:
        return "an empty body"
    if (content_type and "html" in content_type.lower()) or body.lstrip()[:1] == b"<":
        return "an HTML page"
    return f"non-JSON content ({(content_type or 'no content type').split(';')[0]})"
