"""protocolVersion 1 bodies in the base64 forms sailor's Buffer.from(s, 'base64') reads: unpadded, url-safe,
line-wrapped; a body that is not base64 is still a DecodeError."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from oarlock.errors import DecodeError
from oarlock.protocol.crypto import MessageCipher
from tests.support import DATA

VECTORS: list[dict[str, Any]] = json.loads((DATA / "vectors" / "sailor-crypto.json").read_text())["cases"]
CIPHER = MessageCipher("testCryptoPassword", "iv=any16_symbols")
# "~~~???>>>" gives ciphertext whose base64 has + and / in it, so the url-safe form differs from the standard one
MESSAGE = {"id": "x", "body": {"a": "~~~???>>>" * 20}, "headers": {}}
RAW = base64.b64decode(CIPHER.encrypt(MESSAGE))

FORMS = {
    "unpadded": base64.b64encode(RAW).rstrip(b"="),
    "wrapped at 76": base64.encodebytes(RAW),
    "wrapped with CRLF": base64.encodebytes(RAW).replace(b"\n", b"\r\n"),
    "url-safe": base64.urlsafe_b64encode(RAW),
    "url-safe, unpadded": base64.urlsafe_b64encode(RAW).rstrip(b"="),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_a_body_in_a_base64_form_node_reads_decrypts_to_the_message(form: str) -> None:
    canonical = base64.b64encode(RAW)
    assert canonical.endswith(b"=") and b"+" in canonical and b"/" in canonical and len(canonical) > 76
    assert FORMS[form] != canonical
    assert CIPHER.decrypt(FORMS[form], 1) == MESSAGE


@pytest.mark.parametrize("case", VECTORS, ids=[f"case{i}" for i in range(len(VECTORS))])
def test_every_sailor_vector_decrypts_unpadded_url_safe_and_wrapped(case: dict[str, Any]) -> None:
    cipher = MessageCipher(case["password"], case["iv"])
    expected = json.loads(case["plaintext_json"])
    raw = bytes.fromhex(case["v2_raw_body_hex"])
    for body in (
        base64.urlsafe_b64encode(raw).rstrip(b"="),
        base64.encodebytes(raw),
        b"  " + case["v1_base64_body"].encode() + b"\n",
    ):
        assert cipher.decrypt(body, 1) == expected


@pytest.mark.parametrize(
    "body",
    [b"this is !!! not base64", b"a", b"abcde", b"====", b"%%%%", base64.b64encode(RAW)[:-5] + b"*" + b"AAAA"],
)
def test_a_body_that_is_not_base64_is_still_a_decode_error_naming_base64(body: bytes) -> None:
    with pytest.raises(DecodeError, match=r"message body is not valid base64 \(protocolVersion 1\)"):
        CIPHER.decrypt(body, 1)


def test_base64_of_the_wrong_length_after_decoding_is_the_length_error_not_a_crash() -> None:
    with pytest.raises(DecodeError, match="not a positive multiple of 16"):
        CIPHER.decrypt(base64.b64encode(RAW[:-1]).rstrip(b"="), 1)
