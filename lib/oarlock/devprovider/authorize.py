"""The dev provider's ``GET /authorize``: an authorization endpoint that approves at once (RFC 6749 4.1, PKCE).

There is no login page and no consent screen: a request naming the provider's ``client_id`` and a
``redirect_uri`` is answered with a 302 to that ``redirect_uri`` carrying ``code`` and the request's
``state``. ``code_challenge`` / ``code_challenge_method`` (``S256``, or ``plain`` when left out) are
kept with the code, and ``POST /token`` then wants the matching ``code_verifier`` and the same
``redirect_uri`` (:meth:`~oarlock.devprovider.state.ProviderState.redeem_code`). ``login_hint`` names
the subject the tokens are for (default ``user-1``), ``scope`` their scope (default ``read write``).

What a user's "deny" would be, a request adds ``decision=deny``: the redirect then carries
``error=access_denied`` and the ``state``. A wrong ``client_id`` or a missing ``redirect_uri`` is a 400
JSON answer and no redirect (RFC 6749 4.1.2.1: an unverified redirect target is never followed);
the other errors go back to the redirect target as ``error`` / ``error_description``, as a real
provider sends them.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

from oarlock.devprovider.state import AuthorizationCode, ProviderState

#: RFC 7636 4.2: a code_challenge is 43 to 128 characters of [A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~"
CHALLENGE = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
METHODS = ("S256", "plain")


class Refusal(Exception):
    """An /authorize request that gets a 400 answer, not a redirect."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.body = {"error": "invalid_request", "error_description": description}


def authorize(state: ProviderState, query: dict[str, str]) -> str:
    """The Location of the 302 answering ``query``; Refusal when there is no trustworthy redirect target."""
    redirect = query.get("redirect_uri")
    if query.get("client_id") != state.settings.client_id:
        raise Refusal("client_id is missing or unknown")
    if not redirect or not redirect.startswith(("http://", "https://")):
        raise Refusal("redirect_uri is missing or not an http(s) URL")
    echo = {"state": query["state"]} if "state" in query else {}
    error = _error(query)
    if error is not None:
        return _location(redirect, {"error": error[0], "error_description": error[1], **echo})
    challenge = query.get("code_challenge")
    code = state.new_code(
        AuthorizationCode(
            subject=query.get("login_hint") or "user-1",
            scope=query.get("scope") or "read write",
            client_id=state.settings.client_id,
            redirect_uri=redirect,
            code_challenge=challenge,
            code_challenge_method=query.get("code_challenge_method") or "plain",
        )
    )
    return _location(redirect, {"code": code, **echo})


def _error(query: dict[str, str]) -> tuple[str, str] | None:
    response_type = query.get("response_type", "code")
    if response_type != "code":
        return "unsupported_response_type", f"response_type {response_type!r} is not supported: use code"
    method = query.get("code_challenge_method")
    if method is not None and method not in METHODS:
        return "invalid_request", f"code_challenge_method {method!r} is not supported: use S256 or plain"
    challenge = query.get("code_challenge")
    if method is not None and challenge is None:
        return "invalid_request", "code_challenge_method without a code_challenge"
    if challenge is not None and not CHALLENGE.match(challenge):
        return "invalid_request", "code_challenge must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~"
    if query.get("decision") == "deny":
        return "access_denied", "the user denied the request"
    return None


def _location(redirect: str, params: dict[str, str]) -> str:
    separator = "&" if "?" in redirect else "?"
    return f"{redirect}{separator}{urlencode(params)}"
