"""Token responses: expiry computed once, merge rules, garbage answers named without secrets."""

from __future__ import annotations

import pytest

from oarlock.credentials.token import TokenSet, parse_seconds, parse_token_response
from oarlock.errors import CredentialNeedsReauthorization, TokenEndpointError

NOW = 1_800_000_000.0
ENDPOINT = "https://login.example/token"


def test_expires_in_as_an_int_or_a_numeric_string_gives_an_absolute_expiry() -> None:
    assert TokenSet.from_response({"access_token": "a", "expires_in": 3600}, now=NOW).expires_at == NOW + 3600
    assert TokenSet.from_response({"access_token": "a", "expires_in": "3599"}, now=NOW).expires_at == NOW + 3599
    assert TokenSet.from_response({"access_token": "a", "expires_in": "soon"}, now=NOW).expires_at is None


def test_a_response_without_any_expiry_leaves_it_unknown_even_if_the_old_token_had_one() -> None:
    previous = TokenSet.from_response({"access_token": "a", "expires_in": 60}, now=NOW - 100)
    salesforce = {"access_token": "b", "instance_url": "https://x.my.salesforce.com", "issued_at": "1800000000000"}
    merged = TokenSet.from_response(salesforce, now=NOW, previous=previous)
    assert merged.expires_at is None and merged.data["instance_url"] == "https://x.my.salesforce.com"


def test_a_refresh_response_without_refresh_token_keeps_the_old_one() -> None:
    previous = TokenSet({"access_token": "a", "refresh_token": "r-original", "scope": "s", "id_token": "i"})
    merged = TokenSet.from_response({"access_token": "b", "expires_in": 10}, now=NOW, previous=previous)
    assert merged.refresh_token == "r-original" and merged.access_token == "b"
    assert merged.data["scope"] == "s" and merged.data["id_token"] == "i"


def test_unknown_fields_of_the_new_response_are_kept_and_win() -> None:
    previous = TokenSet({"access_token": "a", "scope": "old"})
    merged = TokenSet.from_response(
        {"access_token": "b", "scope": "new", "ext_expires_in": 7200}, now=NOW, previous=previous
    )
    assert merged.data["scope"] == "new" and merged.data["ext_expires_in"] == 7200
    assert merged.obtained_at == NOW


def test_camel_case_fields_from_a_custom_refresh_hook_are_understood() -> None:
    merged = TokenSet.from_response({"accessToken": "x", "expiresIn": 7200}, now=NOW)
    assert merged.access_token == "x" and merged.expires_at == NOW + 7200


def test_the_leeway_is_capped_at_half_the_lifetime() -> None:
    token = TokenSet.from_response({"access_token": "a", "expires_in": 60}, now=NOW)
    assert token.leeway(300) == 30
    assert not token.expires_within(token.leeway(300), NOW + 29)
    assert token.expires_within(token.leeway(300), NOW + 30)


def test_zero_or_a_past_expires_at_means_expired() -> None:
    assert TokenSet({"access_token": "a", "expires_at": 0}).expires_within(0, NOW)
    assert TokenSet({"access_token": "a", "expires_at": NOW - 1}).expires_within(0, NOW)
    assert parse_seconds(True) is None and parse_seconds("-5") is None


@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected"),
    [
        (200, "text/html", b"<html>login</html>", "answered 200 with an HTML page instead of a JSON token response"),
        (200, "application/json", b'{"token": "x"}', "answered 200 JSON without access_token (fields: token)"),
        (200, "application/json", b"", "with an empty body"),
        (
            400,
            "application/json",
            b'{"error": "invalid_request", "error_description": "bad"}',
            "answered 400 invalid_request (bad)",
        ),
        (404, "text/html", b"<h1>no</h1>", "answered 404 an HTML page"),
    ],
)
def test_garbage_from_the_token_endpoint_is_a_clear_error_naming_endpoint_and_status(
    status: int, content_type: str, body: bytes, expected: str
) -> None:
    with pytest.raises(TokenEndpointError) as caught:
        parse_token_response(status, content_type, body, endpoint=ENDPOINT, account="acct")
    assert ENDPOINT in str(caught.value) and expected in str(caught.value)
    assert not caught.value.retryable


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_5xx_and_429_are_retryable(status: int) -> None:
    with pytest.raises(TokenEndpointError) as caught:
        parse_token_response(status, "text/html", b"<html>down</html>", endpoint=ENDPOINT)
    assert caught.value.retryable and caught.value.status == status


@pytest.mark.parametrize("error", ["invalid_grant", "invalid_client", "unauthorized_client"])
def test_invalid_grant_and_invalid_client_ask_for_re_authorization(error: str) -> None:
    body = f'{{"error": "{error}", "error_description": "Token has been expired or revoked."}}'.encode()
    with pytest.raises(CredentialNeedsReauthorization) as caught:
        parse_token_response(400, "application/json", body, endpoint=ENDPOINT, account="acct-9")
    assert "account acct-9 must be re-authorized" in str(caught.value) and error in str(caught.value)
    assert caught.value.oauth_error == error and caught.value.event_name == "CredentialNeedsReauthorization"


def test_a_good_response_is_returned_untouched() -> None:
    body = b'{"access_token": "a", "refresh_token": "r", "expires_in": 3600, "x": [1]}'
    assert parse_token_response(200, "application/json", body, endpoint=ENDPOINT) == {
        "access_token": "a",
        "refresh_token": "r",
        "expires_in": 3600,
        "x": [1],
    }


def test_a_form_encoded_token_response_is_understood() -> None:
    body = b"access_token=gho_abc&token_type=bearer&scope=repo&expires_in=28800&refresh_token=ghr_def"
    data = parse_token_response(200, "application/x-www-form-urlencoded", body, endpoint=ENDPOINT)
    assert data["access_token"] == "gho_abc" and data["refresh_token"] == "ghr_def"
    assert TokenSet.from_response(data, now=NOW).expires_at == NOW + 28800


def test_an_invalid_grant_answered_with_status_200_still_asks_for_re_authorization() -> None:
    body = b'{"error": "invalid_grant", "error_description": "bad refresh token"}'
    with pytest.raises(CredentialNeedsReauthorization, match="answered invalid_grant \\(bad refresh token\\)"):
        parse_token_response(200, "application/json", body, endpoint=ENDPOINT, account="a")


def test_the_microsoft_preset_refreshes_with_the_credential_scope_plus_offline_access() -> None:
    from oarlock.credentials.endpoint import TokenClient
    from oarlock.credentials.presets import RefreshSettings

    settings = RefreshSettings.from_cfg({"provider": "microsoft", "token_uri": ENDPOINT, "client_id": "c"})
    form = TokenClient()._form(settings, {"refresh_token": "r", "scope": "User.Read Mail.Read"}, "a")
    assert form["scope"] == "User.Read Mail.Read offline_access"
    assert form["client_id"] == "c" and form["grant_type"] == "refresh_token"
    generic = RefreshSettings.from_cfg({"token_uri": ENDPOINT, "scope": "x y"})
    assert TokenClient()._form(generic, {"refresh_token": "r", "scope": "z"}, "a")["scope"] == "x y"
