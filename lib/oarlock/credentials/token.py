"""Token sets: parse any token response, compute the expiry once, merge without losing anything.

Merge rules (ARCHITECTURE.md behaviour 4):
- the new response is laid over the stored credential: unknown fields (``instance_url``,
  ``id_token``, ``scope``, ``ext_expires_in`` …) are kept, new values win;
- a response without ``refresh_token`` keeps the old one (Google, Microsoft sometimes);
- ``expires_at`` (absolute epoch seconds) is computed when the response arrives from
  ``expires_in`` (an int or a numeric string) and never recomputed later; a response with
  no expiry information leaves the expiry unknown (Salesforce);
- ``obtained_at`` records when the response arrived.
"""

from __future__ import annotations

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


def parse_seconds(value: Any) -> float | None:
    """``expires_in`` as the providers send it: an int, a float or a numeric string; None if unusable."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


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
        """Absolute expiry in epoch seconds; ``0`` or a past time means expired, None means unknown."""
        return parse_seconds(self.data.get("expires_at"))

    @property
    def obtained_at(self) -> float | None:
        return parse_seconds(self.data.get("obtained_at"))

    @property
    def lifetime(self) -> float | None:
        """How long the token was issued for: from obtained_at, else from the provider's expires_in."""
        if self.expires_at is None:
            return None
        if self.obtained_at is not None:
            return max(0.0, self.expires_at - self.obtained_at)
        return parse_seconds(self.data.get("expires_in"))

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
        expires_in = parse_seconds(fresh.get("expires_in"))
        if expires_in is not None:
            merged["expires_at"] = now + expires_in
        elif parse_seconds(fresh.get("expires_at")) is not None:
            merged["expires_at"] = parse_seconds(fresh["expires_at"])
        else:
            merged.pop("expires_at", None)
        merged["obtained_at"] = now
        return cls(merged)


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
