"""sailor-compatible encryption: the vectors produced by sailor-nodejs's own encryptor, and bad input."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from oarlock.errors import ConfigurationError, DecodeError
from oarlock.protocol.crypto import MessageCipher, dumps
from tests.support import DATA

VECTORS: list[dict[str, Any]] = json.loads((DATA / "vectors" / "sailor-crypto.json").read_text())["cases"]
PASSWORD, IV = "testCryptoPassword", "iv=any16_symbols"


@pytest.mark.parametrize("case", VECTORS, ids=[f"case{i}" for i in range(len(VECTORS))])
def test_every_sailor_vector_decrypts_in_protocol_version_1_and_2(case: dict[str, Any]) -> None:
    cipher = MessageCipher(case["password"], case["iv"])
    expected = json.loads(case["plaintext_json"])
    assert cipher.decrypt(case["v1_base64_body"].encode(), 1) == expected
    assert cipher.decrypt(bytes.fromhex(case["v2_raw_body_hex"]), 2) == expected


@pytest.mark.parametrize("case", VECTORS, ids=[f"case{i}" for i in range(len(VECTORS))])
def test_every_sailor_vector_re_encrypts_to_the_same_bytes(case: dict[str, Any]) -> None:
    cipher = MessageCipher(case["password"], case["iv"])
    value = json.loads(case["plaintext_json"])
    assert dumps(value) == case["plaintext_json"]
    assert cipher.encrypt(value, 1).decode() == case["v1_base64_body"]
    assert cipher.encrypt(value, 2).hex() == case["v2_raw_body_hex"]


def test_a_wrong_password_is_a_decode_error_that_does_not_show_the_password() -> None:
    body = MessageCipher(PASSWORD, IV).encrypt({"body": {"a": 1}})
    with pytest.raises(DecodeError) as caught:
        MessageCipher("another-password", IV).decrypt(body)
    assert "wrong password" in str(caught.value)
    assert "another-password" not in str(caught.value) and PASSWORD not in str(caught.value)


def test_bad_base64_is_a_decode_error_naming_base64() -> None:
    with pytest.raises(DecodeError, match="not valid base64"):
        MessageCipher(PASSWORD, IV).decrypt(b"this is !!! not base64")


def test_a_truncated_ciphertext_is_a_decode_error_naming_the_length() -> None:
    raw = MessageCipher(PASSWORD, IV).encrypt({"body": {"a": 1}}, 2)
    with pytest.raises(DecodeError, match="not a positive multiple of 16"):
        MessageCipher(PASSWORD, IV).decrypt(raw[:-3], 2)


def test_non_json_plaintext_is_a_decode_error_saying_so() -> None:
    cipher = MessageCipher(PASSWORD, IV)
    body = cipher.encrypt_text("hello, not json")
    with pytest.raises(DecodeError, match="not valid JSON after decryption"):
        cipher.decrypt(body)


def test_bad_padding_is_a_decode_error() -> None:
    cipher = MessageCipher(PASSWORD, IV)
    raw = bytearray(cipher.encrypt({"body": {}}, 2))
    raw[-1] ^= 0xFF
    with pytest.raises(DecodeError):
        cipher.decrypt(base64.b64encode(bytes(raw)))


def test_without_a_password_the_json_text_passes_through() -> None:
    cipher = MessageCipher(None, None)
    assert not cipher.enabled
    assert cipher.encrypt({"body": {"x": "ü"}}) == '{"body":{"x":"ü"}}'.encode()
    assert cipher.decrypt(b'{"body":{}}') == {"body": {}}


def test_an_iv_that_is_not_16_bytes_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="16 bytes"):
        MessageCipher(PASSWORD, "short")


def test_the_cipher_repr_does_not_contain_the_password() -> None:
    assert PASSWORD not in repr(MessageCipher(PASSWORD, IV))
