"""A keys store URL in messages: its passwords masked wherever libpq takes them, and known to the redactor."""

from __future__ import annotations

import pytest

from oarlock.keys.base import register_url_secrets, safe_url, url_secrets
from oarlock.redact import MASK, redact_text


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "postgresql://oarlock@db.internal/keys?password=hunter2-pg-query&connect_timeout=2",
            "postgresql://oarlock@db.internal/keys?password=***&connect_timeout=2",
        ),
        (
            "postgresql://oarlock@db.internal/keys?sslmode=require&sslpassword=client-key-pass-77",
            "postgresql://oarlock@db.internal/keys?sslmode=require&sslpassword=***",
        ),
        (
            "postgresql://oarlock@db.internal/keys?passfile=/run/secrets/pgpass&application_name=oarlock",
            "postgresql://oarlock@db.internal/keys?passfile=***&application_name=oarlock",
        ),
    ],
)
def test_a_password_given_as_a_libpq_query_parameter_is_masked_and_the_rest_stays_readable(
    url: str, masked: str
) -> None:
    assert safe_url(url) == masked


def test_any_query_key_naming_a_password_secret_or_token_is_masked_whatever_its_case() -> None:
    url = "postgresql://h/db?PASSWORD=Aa-111-x&DbPassword=Bb-222-x&client_Secret=Cc-333-x&api_token=Dd-444-x&table=t"
    assert safe_url(url) == "postgresql://h/db?PASSWORD=***&DbPassword=***&client_Secret=***&api_token=***&table=t"


def test_the_userinfo_password_is_masked_whole_even_with_an_unencoded_at_sign() -> None:
    assert safe_url("postgresql://oarlock:s3cret@pass@db.internal:5432/keys") == (
        "postgresql://oarlock:***@db.internal:5432/keys"
    )
    assert safe_url("postgresql://:only-a-password@db.internal/keys") == "postgresql://:***@db.internal/keys"


def test_a_password_in_the_userinfo_and_one_in_the_query_are_both_masked() -> None:
    url = "postgresql://oarlock:userinfo-pw-1@db.internal/keys?password=query-pw-2&sslpassword=ssl-pw-3&table=creds"
    assert safe_url(url) == "postgresql://oarlock:***@db.internal/keys?password=***&sslpassword=***&table=creds"
    assert url_secrets(url) == ["userinfo-pw-1", "query-pw-2", "ssl-pw-3"]


def test_a_url_without_a_password_is_returned_unchanged() -> None:
    for url in (
        "postgresql://db.internal:5432/keys?application_name=ops@example&connect_timeout=2",
        "postgresql://oarlock@[::1]:5432,db2.internal:5433/keys?target_session_attrs=read-write",
        "postgresql://oarlock:@db.internal/keys?password=",
        "sqlite:////var/lib/oarlock/keys.sqlite",
        "/var/lib/oarlock/keys.sqlite",
    ):
        assert safe_url(url) == url
        assert url_secrets(url) == []


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://oarlock:pa/ss@word-5@db.internal/keys", "word-5"),
        ("postgresql://oarlock:pw-7@@@db.internal?password=q@r-8&&=&password#frag", "r-8"),
        ("postgresql://oarlock:pw%zz-9@db.internal/keys?%zz=1&pass%77ord=bad%zz-pw-10", "pw-10"),
    ],
)
def test_a_malformed_url_never_raises_and_its_passwords_are_still_masked(url: str, secret: str) -> None:
    masked = safe_url(url)
    assert secret not in masked and MASK in masked
    assert masked.startswith("postgresql://oarlock:***@")


def test_the_passwords_of_a_store_url_become_known_to_the_redactor() -> None:
    url = "postgresql://oarlock:userinfo%40pw-h2-11@db.internal/keys?password=query-pw-h2-12&passfile=/run/pgpass-h2"
    register_url_secrets(url)
    text = "connect failed for userinfo@pw-h2-11 / userinfo%40pw-h2-11 with query-pw-h2-12 using /run/pgpass-h2"
    assert redact_text(text) == f"connect failed for {MASK} / {MASK} with {MASK} using /run/pgpass-h2"


def test_safe_url_registers_the_passwords_it_masks() -> None:
    safe_url("postgresql://oarlock@db.internal/keys?sslpassword=ssl-pw-h2-13")
    assert redact_text("the driver said: bad ssl-pw-h2-13") == f"the driver said: bad {MASK}"
