"""The token request itself: client authentication, retries with backoff, failure classes.

Network errors, 5xx and 429 are retried with exponential backoff and jitter (tenacity),
honouring ``Retry-After``, within a total budget; ``invalid_grant`` / ``invalid_client``
are never retried: they raise CredentialNeedsReauthorization at once.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable
from typing import Any

import requests
import tenacity

from oarlock.credentials.presets import RefreshSettings
from oarlock.credentials.token import parse_token_response
from oarlock.errors import CredentialNeedsReauthorization, TokenEndpointError
from oarlock.redact import register_secret

log = logging.getLogger("oarlock.credentials")
TOKEN_TIMEOUT = 30.0


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class _Wait(tenacity.wait.wait_base):
    """Retry-After when the endpoint sent one, else exponential backoff with full jitter."""

    def __init__(self) -> None:
        self._backoff = tenacity.wait_random_exponential(multiplier=0.5, max=10)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        hinted = getattr(error, "retry_after", None)
        if isinstance(hinted, (int, float)):
            return float(hinted)
        return float(self._backoff(retry_state))


class _StopWhenWaitsExceed(tenacity.stop.stop_base):
    """Stop when the waits so far plus the next one would exceed the budget."""

    def __init__(self, budget: float) -> None:
        self.budget = budget

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return retry_state.idle_for + (retry_state.upcoming_sleep or 0.0) > self.budget


class TokenClient:
    """Sends refresh requests to token endpoints."""

    def __init__(
        self,
        *,
        session: requests.Session | None = None,
        retry_budget_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session or requests.Session()
        self._budget = retry_budget_seconds
        self._sleep = sleep
        self._clock = clock

    def refresh(self, settings: RefreshSettings, oauth: dict[str, Any], *, account: str) -> dict[str, Any]:
        """The provider's full token response for a refresh of ``oauth``, after retries."""
        if not settings.token_uri:
            raise CredentialNeedsReauthorization(
                f"account {account} cannot be refreshed: oauth2.token_uri is not configured", account=account
            )
        form = self._form(settings, oauth, account)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, TokenEndpointError) and e.retryable),
            wait=_Wait(),
            # the budget counts the waits (deterministic with an injected sleep) and the wall clock
            stop=tenacity.stop_after_delay(self._budget) | _StopWhenWaitsExceed(self._budget),
            sleep=self._sleep,
            reraise=True,
            before_sleep=lambda state: log.warning(
                "account %s: token endpoint failed (%s), retrying in %.1f s",
                account,
                state.outcome.exception() if state.outcome else "?",
                state.upcoming_sleep,
                extra={"account": account, "attempt": state.attempt_number},
            ),
        )
        return retrying(self._send, settings, form, account)

    def _form(self, settings: RefreshSettings, oauth: dict[str, Any], account: str) -> dict[str, str]:
        form: dict[str, str] = {"grant_type": settings.grant_type}
        if settings.grant_type == "refresh_token":
            refresh_token = oauth.get("refresh_token")
            if not isinstance(refresh_token, str) or not refresh_token:
                raise CredentialNeedsReauthorization(
                    f"account {account} must be re-authorized: the credential has no refresh_token", account=account
                )
            form["refresh_token"] = refresh_token
        scope = settings.scope
        if scope is None and settings.preset.send_credential_scope:
            scope = str(oauth.get("scope") or "")
            required = settings.preset.default_scope
            if required and required not in scope.split():
                scope = f"{scope} {required}".strip()  # Microsoft: without offline_access no new refresh token
        if scope:
            form["scope"] = str(scope)
        if settings.client_auth == "post":
            if settings.client_id:
                form["client_id"] = settings.client_id
            if settings.client_secret:
                form["client_secret"] = settings.client_secret
        return form

    def _send(self, settings: RefreshSettings, form: dict[str, str], account: str) -> dict[str, Any]:
        endpoint = str(settings.token_uri)
        auth = None
        if settings.client_auth == "basic":
            # sent as they are: RFC 6749 2.3.1 asks for form-urlencoding first, but many token endpoints do not
            # decode, and the ones that do (unquote) read plain secrets unchanged unless they hold a '%'
            auth = (settings.client_id or "", settings.client_secret or "")
        try:
            response = self._session.post(
                endpoint, data=form, auth=auth, timeout=TOKEN_TIMEOUT, headers={"Accept": "application/json"}
            )
        except requests.RequestException as exc:
            raise TokenEndpointError(
                f"cannot reach the token endpoint {endpoint} for account {account}: {_network_reason(exc)}",
                account=account,
                retryable=True,
            ) from None
        try:
            data = parse_token_response(
                response.status_code,
                response.headers.get("Content-Type"),
                response.content,
                endpoint=endpoint,
                account=account,
            )
        except TokenEndpointError as exc:
            hint = retry_after_seconds(response.headers.get("Retry-After"), self._clock())
            if hint is not None:
                exc.retry_after = hint
            raise
        register_secret(data.get("access_token"))
        register_secret(data.get("refresh_token"))
        register_secret(data.get("id_token"))
        return data


def _network_reason(exc: Exception) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if "Name or service not known" in text or "getaddrinfo" in text:
        return "host name not resolved"
    return type(exc).__name__
