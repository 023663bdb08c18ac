"""The authorization-code flow with PKCE: the dev provider's /authorize and code redemption, and
:func:`oarlock.credentials.login.login` in-process (a thread plays the browser)."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from oarlock.credentials.endpoint import TokenClient
from oarlock.credentials.login import LoginSettings, Pkce, authorization_url, check_answer, login, s256
from oarlock.devprovider import DevProvider, ManualClock
from oarlock.devprovider.state import pkce_challenge
from oarlock.errors import ConfigurationError, CredentialError

CLIENT = {"client_id": "oarlock-dev", "client_secret": "oarlock-dev-secret"}
REDIRECT = "http://127.0.0.1:9/callback"
VERIFIER = "v" * 43 + "-._~0123456789"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def provider(clock: ManualClock) -> Iterator[DevProvider]:
    with DevProvider(clock=clock) as dev:
        yield dev


def authorize(provider: DevProvider, **params: str) -> requests.Response:
    query = {"response_type": "code", "client_id": "oarlock-dev", "redirect_uri": REDIRECT, "state": "st", **params}
    return requests.get(provider.authorize_url, params=query, allow_redirects=False, timeout=10)


def redirected(answer: requests.Response) -> dict[str, str]:
    assert answer.status_code == 302, answer.text
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return dict(parse_qsl(urlsplit(location).query))


def redeem(provider: DevProvider, code: str, **fields: str) -> requests.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, **CLIENT, **fields}
    return requests.post(provider.token_url, data=form, timeout=10)


def test_the_s256_challenge_is_base64url_of_the_sha256_without_padding() -> None:
    verifier = "dBjftJeZ4CVP-mJ92K9Ca3A5RCkpDmB6q5I4y2GWcXM"
    standard = base64.b64encode(hashlib.sha256(verifier.encode()).digest()).decode()
    expected = standard.replace("+", "-").replace("/", "_").rstrip("=")
    assert s256(verifier) == expected == pkce_challenge(verifier) and len(expected) == 43
    fresh = Pkce.new()
    assert 43 <= len(fresh.verifier) <= 128 and fresh.challenge == s256(fresh.verifier) != Pkce.new().challenge


def test_a_code_with_an_s256_challenge_is_redeemed_only_with_its_verifier(provider: DevProvider) -> None:
    answer = redirected(authorize(provider, code_challenge=s256(VERIFIER), code_challenge_method="S256"))
    assert answer["state"] == "st" and answer["code"].startswith("code-")
    granted = redeem(provider, answer["code"], code_verifier=VERIFIER)
    assert granted.status_code == 200 and granted.json()["refresh_token"].startswith("rt-")
    assert redeem(provider, answer["code"], code_verifier=VERIFIER).json()["error"] == "invalid_grant"  # used once


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({}, "code_verifier is missing"),
        ({"code_verifier": "w" * 43}, "code_verifier does not match"),
        ({"code_verifier": VERIFIER, "redirect_uri": "http://127.0.0.1:9/other"}, "redirect_uri"),
        ({"code_verifier": VERIFIER, "redirect_uri": ""}, "redirect_uri is missing"),
    ],
)
def test_a_code_redemption_without_the_right_verifier_or_redirect_uri_is_refused(
    provider: DevProvider, fields: dict[str, str], why: str
) -> None:
    answer = redirected(authorize(provider, code_challenge=s256(VERIFIER), code_challenge_method="S256"))
    refused = redeem(provider, answer["code"], **fields)
    assert refused.status_code in (400, 401) and why in refused.json()["error_description"]
    assert redeem(provider, answer["code"], code_verifier=VERIFIER).status_code == 400  # a failed try uses it up


def test_a_client_that_fails_authentication_does_not_use_the_code_up(provider: DevProvider) -> None:
    answer = redirected(authorize(provider, code_challenge=s256(VERIFIER), code_challenge_method="S256"))
    stranger = redeem(provider, answer["code"], code_verifier=VERIFIER, client_secret="x")
    assert stranger.status_code == 401 and stranger.json()["error"] == "invalid_client"
    assert redeem(provider, answer["code"], code_verifier=VERIFIER).status_code == 200


def test_a_plain_challenge_works_and_a_code_expires_after_ten_minutes(
    provider: DevProvider, clock: ManualClock
) -> None:
    plain = redirected(authorize(provider, code_challenge=VERIFIER))  # no method: plain (RFC 7636 4.3)
    assert redeem(provider, plain["code"], code_verifier=VERIFIER).status_code == 200
    late = redirected(authorize(provider))
    clock.advance(600)
    assert redeem(provider, late["code"]).json()["error_description"] == "authorization code expired"


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"decision": "deny"}, "access_denied"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"code_challenge": s256(VERIFIER), "code_challenge_method": "S512"}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
    ],
)
def test_authorize_errors_go_back_to_the_redirect_uri_with_the_state(
    provider: DevProvider, params: dict[str, str], error: str
) -> None:
    answer = redirected(authorize(provider, **params))
    assert answer["error"] == error and answer["state"] == "st" and "code" not in answer


def test_an_unknown_client_or_a_missing_redirect_uri_is_a_400_and_no_redirect(provider: DevProvider) -> None:
    assert authorize(provider, client_id="stranger").status_code == 400
    assert authorize(provider, redirect_uri="").json()["error"] == "invalid_request"


def settings_for(provider: DevProvider, **oauth2: Any) -> LoginSettings:
    return LoginSettings.from_oauth2(
        {"auth_uri": provider.authorize_url, "token_uri": provider.token_url, **CLIENT, **oauth2}
    )


def test_the_authorization_url_carries_the_request_and_google_style_extras(provider: DevProvider) -> None:
    settings = settings_for(provider, scopes=["a", "b"], access_type="offline", prompt="consent", client_auth="basic")
    url = authorization_url(settings, redirect_uri=REDIRECT, state="s-1", pkce=Pkce("x" * 43, "c" * 43))
    query = dict(parse_qsl(urlsplit(url).query))
    assert query == {
        "response_type": "code",
        "client_id": "oarlock-dev",
        "redirect_uri": REDIRECT,
        "scope": "a b",
        "access_type": "offline",
        "prompt": "consent",
        "state": "s-1",
        "code_challenge": "c" * 43,
        "code_challenge_method": "S256",
    }
    assert "client_secret" not in url and "oarlock-dev-secret" not in repr(settings)


def test_login_settings_name_what_is_missing() -> None:
    with pytest.raises(ConfigurationError, match=r"needs oauth2\.auth_uri, oauth2\.client_id"):
        LoginSettings.from_oauth2({"token_uri": "https://t"})
    with pytest.raises(ConfigurationError, match=r"oauth2\.auth_uri must be an http"):
        LoginSettings.from_oauth2({"auth_uri": "ftp://a", "token_uri": "https://t", "client_id": "c"})


def test_an_answer_is_checked_for_error_state_and_code() -> None:
    check_answer({"code": "c", "state": "s"}, "s")
    with pytest.raises(CredentialError, match=r"answered access_denied \(no\): nothing stored"):
        check_answer({"error": "access_denied", "error_description": "no", "state": "s"}, "s")
    with pytest.raises(CredentialError, match="state does not match"):
        check_answer({"code": "c", "state": "t"}, "s")
    with pytest.raises(CredentialError, match="no code"):
        check_answer({"state": "s"}, "s")


def browse(urls: list[str]) -> Any:
    """show_url as a person with a browser: follow the URL (in a thread: login waits meanwhile)."""

    def show(url: str) -> None:
        urls.append(url)
        threading.Thread(target=requests.get, args=(url,), kwargs={"timeout": 10}, daemon=True).start()

    return show


def test_login_runs_the_whole_flow_and_returns_a_stamped_credential(provider: DevProvider) -> None:
    urls: list[str] = []
    oauth = login(
        settings_for(provider, scope="read"),
        show_url=browse(urls),
        account="acct-1",
        timeout=30,
        token_client=TokenClient(max_attempts=1),
        clock=lambda: 1000.0,
    )
    assert oauth["obtained_at"] == 1000.0 and oauth["expires_at"] == 1000.0 + 3600 and oauth["scope"] == "read"
    assert (
        requests.get(
            f"{provider.url}/api/me", headers={"Authorization": f"Bearer {oauth['access_token']}"}, timeout=10
        ).json()["subject"]
        == "user-1"
    )
    assert dict(parse_qsl(urlsplit(urls[0]).query))["code_challenge_method"] == "S256"


def test_a_token_endpoint_failure_is_a_credential_error_without_the_secret(provider: DevProvider) -> None:
    with pytest.raises(CredentialError, match="the code exchange failed") as raised:
        login(
            settings_for(provider, client_secret="not-the-secret"),
            show_url=browse([]),
            account="acct-1",
            timeout=30,
            token_client=TokenClient(max_attempts=1),
        )
    assert "invalid_client" in str(raised.value) and "not-the-secret" not in str(raised.value)


def test_no_answer_in_time_is_a_credential_error_naming_the_listener(provider: DevProvider) -> None:
    with pytest.raises(CredentialError, match=r"no authorization answer reached http://127\.0\.0\.1:\d+/callback"):
        login(settings_for(provider), show_url=lambda url: None, account="acct-1", timeout=0.05)
