"""Secrets never reach logs or error texts: by key, by registered value, and in header/form/JSON text."""

from __future__ import annotations

import json
import logging

from oarlock.logs import JsonFormatter
from oarlock.redact import MASK, redact, redact_text, register_credential, register_secret


def test_values_under_secret_keys_are_masked_at_any_depth() -> None:
    data = {"oauth": {"access_token": "a", "refresh_token": "b", "scope": "read"}, "list": [{"client_secret": "c"}]}
    assert redact(data) == {
        "oauth": {"access_token": MASK, "refresh_token": MASK, "scope": "read"},
        "list": [{"client_secret": MASK}],
    }


def test_a_registered_secret_is_masked_wherever_it_appears_in_text() -> None:
    register_secret("rotated-refresh-token-9f8e")
    assert redact_text("failed with rotated-refresh-token-9f8e!") == f"failed with {MASK}!"


def test_registering_a_credential_registers_every_token_it_holds() -> None:
    register_credential({"oauth": {"access_token": "AT-zzz-111", "refresh_token": "RT-zzz-222"}})
    assert redact_text("AT-zzz-111 and RT-zzz-222") == f"{MASK} and {MASK}"


def test_authorization_headers_form_fields_and_json_fields_are_masked_even_when_unregistered() -> None:
    text = (
        "Authorization: Bearer abc.def-ghi refresh_token=r1&client_secret=s2 "
        '{"access_token": "unseen-token", "password":"pw"} Basic dXNlcjpwYXNz'
    )
    masked = redact_text(text)
    for secret in ("abc.def-ghi", "r1", "s2", "unseen-token", '"pw"', "dXNlcjpwYXNz"):
        assert secret not in masked


def test_a_json_log_line_is_redacted_including_extra_fields_and_exceptions() -> None:
    register_secret("crypto-password-xyz")
    try:
        raise ValueError("bad key crypto-password-xyz")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "using %s", ("crypto-password-xyz",), None)
        import sys

        record.exc_info = sys.exc_info()
    record.account = {"refresh_token": "rt-in-extra"}
    line = JsonFormatter().format(record)
    assert "crypto-password-xyz" not in line and "rt-in-extra" not in line
    assert json.loads(line)["message"] == f"using {MASK}"
