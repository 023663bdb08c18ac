"""Redaction without gaps: secret keys in every case style, component.json password fields, and a by-value
registry where long-lived secrets are never evicted, rotated tokens are bounded and adding a value is cheap."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from pathlib import Path

import pytest

from oarlock.component.model import Component
from oarlock.logs import JsonFormatter
from oarlock.redact import (
    MASK,
    MAX_TOKENS,
    SecretRegistry,
    is_secret_key,
    redact,
    redact_text,
    register_credential,
    register_password_fields,
    register_token,
)
from tests.support import DATA

CORPUS = DATA / "corpus" / "component-json"

SECRET_NAMES = [
    ("client", "secret"),
    ("private", "key"),
    ("access", "token"),
    ("refresh", "token"),
    ("id", "token"),
    ("api", "key"),
    ("session", "token"),
    ("secret", "access", "key"),
    ("db", "password"),
    ("proxy", "authorization"),
    ("set", "cookie"),
    ("password",),
    ("passwd",),
    ("passphrase",),
    ("secret",),
    ("authorization",),
    ("cookie",),
]


def spellings(words: tuple[str, ...]) -> list[str]:
    """snake_case, camelCase, PascalCase, kebab-case and UPPER_CASE of a key."""
    return [
        "_".join(words),
        words[0] + "".join(w.capitalize() for w in words[1:]),
        "".join(w.capitalize() for w in words),
        "-".join(words),
        "_".join(words).upper(),
    ]


def token() -> str:
    return secrets.token_urlsafe(24)


def component_from_corpus(name: str) -> Component:
    """The corpus component.json's credentials (its functions' files are not in the corpus)."""
    raw = json.loads((CORPUS / f"{name}.component.json").read_text(encoding="utf-8"))
    return Component(CORPUS, {"title": raw["title"], "credentials": raw["credentials"]})


# -- keys ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("words", SECRET_NAMES, ids=lambda w: "_".join(w))
def test_a_secret_key_is_recognised_in_snake_camel_pascal_kebab_and_upper_case(words: tuple[str, ...]) -> None:
    for key in spellings(words):
        assert is_secret_key(key), key
        assert redact({key: "value-1234"}) == {key: MASK}, key


def test_a_camel_case_token_response_is_masked_but_its_type_expiry_and_look_alike_fields_stay_readable() -> None:
    response = {
        "accessToken": "at-1",
        "refreshToken": "rt-1",
        "idToken": "it-1",
        "apiKey": "k-1",
        "clientSecret": "cs-1",
        "privateKey": "pk-1",
        "tokenType": "Bearer",
        "token_type": "Bearer",
        "expiresIn": 3600,
        "expires_in": 3600,
        "refresh_token_expires_in": 7200,
        "tokenUrl": "https://idp.example/token",
        "secretary": "Ms. Moneypenny",
        "accessKeyId": "AKIA123",
        "private_key_id": "kid-1",
        "max_tokens": 512,
        "clientId": "app-1",
    }
    secret = {"accessToken", "refreshToken", "idToken", "apiKey", "clientSecret", "privateKey"}
    assert redact(response) == {k: MASK if k in secret else v for k, v in response.items()}


def test_camel_case_secret_fields_are_masked_in_json_and_form_text_and_in_log_extras() -> None:
    text = (
        '{"clientSecret": "unseen-cs", "refreshToken":"unseen-rt", "tokenType": "Bearer"} '
        "clientSecret=unseen-form-cs&apiKey=unseen-form-key&tokenType=Bearer "
        "Credentials(privateKey='unseen-repr-pk', username='bob')"
    )
    masked = redact_text(text)
    for secret in ("unseen-cs", "unseen-rt", "unseen-form-cs", "unseen-form-key", "unseen-repr-pk"):
        assert secret not in masked
    assert '"tokenType": "Bearer"' in masked and "tokenType=Bearer" in masked and "username='bob'" in masked

    record = logging.LogRecord("t", logging.INFO, __file__, 1, "refreshing", (), None)
    record.account = {"oauth": {"accessToken": "extra-at-1", "ExpiresIn": 10}}
    line = json.loads(JsonFormatter().format(record))
    assert line["account"] == {"oauth": {"accessToken": MASK, "ExpiresIn": 10}}


# -- component.json password fields --------------------------------------------------------------------
def test_password_fields_are_the_credentials_fields_component_json_shows_with_password_field_view() -> None:
    assert component_from_corpus("elasticio__aws-s3-component").password_fields() == {"accessKeySecret"}
    assert component_from_corpus("elasticio__sftp-component").password_fields() == {"password", "passphrase"}
    assert component_from_corpus("elasticio__sugarcrm-component").password_fields() == {"password", "clientSecret"}
    assert component_from_corpus("elasticio__mailchimp-component").password_fields() == {"apiKey"}
    # a TextFieldView named clientSecret is not a password field (the key rule masks it anyway)
    assert component_from_corpus("elasticio__sphereio-component").password_fields() == frozenset()
    assert component_from_corpus("elasticio__gspreadsheets").password_fields() == frozenset()


def test_the_values_of_a_components_password_fields_are_masked_by_value_and_under_their_keys(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "echo.py").write_text("def process(msg, cfg, snapshot, ctx):\n    return msg\n")
    (tmp_path / "component.json").write_text(
        json.dumps(
            {
                "title": "Bank",
                "credentials": {
                    "fields": {
                        "user": {"label": "User", "viewClass": "TextFieldView"},
                        "memorableWord": {"label": "Memorable word", "viewClass": "PasswordFieldView"},
                    }
                },
                "actions": {"echo": {"title": "Echo", "main": "lib/echo.py"}},
            }
        )
    )
    component = Component.load(tmp_path)
    assert component.password_fields() == {"memorableWord"}

    cfg = {"user": "alice", "memorableWord": "marmalade-sky-42"}
    register_password_fields(cfg, component.password_fields())
    assert redact_text("login refused for alice with marmalade-sky-42") == f"login refused for alice with {MASK}"
    assert redact({"memorableWord": "another-value", "MEMORABLE_WORD": "x1", "user": "alice"}) == {
        "memorableWord": MASK,
        "MEMORABLE_WORD": MASK,
        "user": "alice",
    }
    assert "another" not in redact_text('{"memorableWord": "another-value"}')
    # a later cfg of the same component: register_credential now knows the key too
    register_credential({"memorableWord": "rotated-word-77"})
    assert redact_text("word rotated-word-77") == f"word {MASK}"


# -- the by-value registry -----------------------------------------------------------------------------
def test_long_lived_secrets_are_never_evicted_however_many_tokens_rotate_after_them() -> None:
    registry = SecretRegistry()
    long_lived = ["crypto-password-1", "api-key-2", "client-secret-3", "password-field-4"]
    for value in long_lived:
        registry.add_secret(value)
    tokens = [f"token-{i}-{token()}" for i in range(MAX_TOKENS * 2 + 500)]
    for value in tokens:
        registry.add_token(value)
    assert registry.counts() == {"secrets": len(long_lived), "tokens": MAX_TOKENS}
    assert registry.sub(" ".join(long_lived)) == " ".join([MASK] * len(long_lived))
    assert registry.sub(tokens[-1]) == MASK and registry.sub(tokens[0]) == tokens[0]


def test_rotated_tokens_are_bounded_the_oldest_evicted_first_and_a_token_seen_again_counts_as_new() -> None:
    registry = SecretRegistry(max_tokens=3)
    t1, t2, t3, t4, t5 = (f"tok{i}-{token()}" for i in range(1, 6))
    for value in (t1, t2, t3):
        registry.add_token(value)
    registry.add_token(t1)  # a refresh token that did not rotate is registered again: newest now
    registry.add_token(t4)
    registry.add_token(t5)
    assert registry.counts()["tokens"] == 3
    assert {value for value in (t1, t2, t3, t4, t5) if registry.sub(value) == MASK} == {t1, t4, t5}


def test_a_credential_files_its_access_refresh_and_id_tokens_as_rotated_and_its_other_secrets_as_long_lived() -> None:
    registry = SecretRegistry(max_tokens=2)
    at, rt, it = token(), token(), token()
    endpoint_copy = token()
    registry.add_secret(endpoint_copy)  # the token endpoint registers what it receives with register_secret
    registry.add_credential(
        {
            "oauth": {"access_token": at, "refreshToken": rt, "ID_TOKEN": it, "token_type": "Bearer"},
            "oauth2": {"client_secret": "client-secret-9", "client_id": "client-id-9"},
            "password": "db-password-9",
            "accounts": [{"access_token": endpoint_copy}],
        }
    )
    assert registry.counts() == {"secrets": 2, "tokens": 2}  # 4 tokens seen, the bound is 2
    assert "client-secret-9" in registry and "db-password-9" in registry
    assert "client-id-9" not in registry and "Bearer" not in registry
    assert endpoint_copy in registry and it in registry and at not in registry


def test_register_token_and_a_camel_case_credential_put_their_tokens_into_the_process_registry() -> None:
    register_token("rotated-access-token-31")
    register_credential({"oauth": {"accessToken": "camel-access-token-32", "refreshToken": "camel-refresh-33"}})
    assert redact_text("a rotated-access-token-31 b camel-access-token-32 c camel-refresh-33") == (
        f"a {MASK} b {MASK} c {MASK}"
    )


@pytest.mark.parametrize("find_limit", [256, 0], ids=["few-values-str-find", "suffix-index-scan"])
def test_overlapping_nested_short_and_regex_metacharacter_secrets_are_masked_whole(find_limit: int) -> None:
    registry = SecretRegistry(find_limit=find_limit)
    for value in ("abcd", "xxabcdyy", "12345678", "56789abc", "a.b*c+d?(e)[f]{g}|h^$\\", "pw d", "zzzz", "q1w2e3r4t5"):
        registry.add_secret(value)
    assert registry.sub("1 xxabcdyy 2 abcd 3") == f"1 {MASK} 2 {MASK} 3"  # the longer is not cut by the shorter
    assert registry.sub("<123456789abc>") == f"<{MASK}>"  # two overlapping secrets: one mask, nothing left
    assert registry.sub("m=a.b*c+d?(e)[f]{g}|h^$\\;") == f"m={MASK};"
    assert registry.sub("a.b-c+d") == "a.b-c+d"  # metacharacters are literal
    assert registry.sub("pw dpw d") == f"{MASK}{MASK}"  # short (4-7 characters), with a space, back to back
    assert registry.sub("zzzzzz") == MASK  # overlapping occurrences of one value
    assert registry.sub("q1w2e3r4t5") == MASK and registry.sub("q1w2e3r4t") == "q1w2e3r4t"
    assert registry.sub("abc") == "abc" and registry.sub("") == ""


def test_registering_twenty_thousand_values_stays_cheap_because_no_regex_is_compiled_per_addition() -> None:
    # the old registry compiled one regex of all values at each addition: ~0.5 s each at 5,000 values
    registry = SecretRegistry(max_tokens=15_000)
    values = [f"v{i}-{token()}" for i in range(20_000)]
    deadline = time.monotonic() + 5.0
    for index, value in enumerate(values):
        if index % 4:
            registry.add_token(value)
        else:
            registry.add_secret(value)
        assert time.monotonic() < deadline, f"{index} additions took more than 5 s"
    line = f"error: GET /me 401 {values[-1]} " + "status=401 retry=1 " * 100
    assert values[-1] not in registry.sub(line) and registry.counts() == {"secrets": 5_000, "tokens": 15_000}


def test_registration_and_redaction_from_many_threads_at_once_lose_no_long_lived_secret() -> None:
    registry = SecretRegistry(max_tokens=500)
    long_lived = [f"secret-{n}-{token()}" for n in range(8 * 50)]
    errors: list[BaseException] = []
    start = threading.Barrier(12)

    def register(part: int) -> None:
        try:
            start.wait()
            for n in range(50):
                registry.add_secret(long_lived[part * 50 + n])
                for _ in range(20):
                    registry.add_token(token())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def redact_meanwhile() -> None:
        try:
            start.wait()
            for _ in range(200):
                registry.sub(" ".join(long_lived[:20]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(p,)) for p in range(8)]
    threads += [threading.Thread(target=redact_meanwhile) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert registry.counts() == {"secrets": len(long_lived), "tokens": 500}
    assert registry.sub(" ".join(long_lived)) == " ".join([MASK] * len(long_lived))


def test_a_password_field_of_component_json_is_masked_in_the_error_event_of_a_function_that_leaks_it(
    tmp_path: Path,
) -> None:
    from oarlock.component.model import Component as LoadedComponent
    from oarlock.protocol.message import Message
    from oarlock.runtime.executor import FunctionRunner

    root = tmp_path / "leaky-component"
    (root / "lib").mkdir(parents=True)
    (root / "component.json").write_text(
        json.dumps(
            {
                "title": "t",
                "credentials": {"fields": {"dbPass": {"label": "Password", "viewClass": "PasswordFieldView"}}},
                "actions": {"leak": {"title": "l", "main": "lib/leak.py", "metadata": {}}},
            }
        )
    )
    (root / "lib" / "leak.py").write_text(
        "def process(msg, cfg, snapshot, ctx):\n    raise RuntimeError('login failed with ' + cfg['dbPass'])\n"
    )
    runner = FunctionRunner(LoadedComponent.load(root), "leak")
    result = runner.call(Message(), {"dbPass": "plain-pw-no-secret-looking-key-1"})
    (error,) = result.events
    assert "plain-pw-no-secret-looking-key-1" not in json.dumps(error.payload)
    assert "login failed with ***" in error.payload["message"]
