"""JSON as sailor-nodejs writes and reads it: JSON.stringify's null for NaN/Infinity, its escaped lone surrogates,
and JSON.parse's refusal of the NaN/Infinity literals (docs/protocol.md §5)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from oarlock.errors import DecodeError
from oarlock.jsonlimits import loads
from oarlock.protocol.crypto import MessageCipher, dumps, encode_text
from oarlock.protocol.events import Event, EventName, error_payload
from tests.unit.test_outgoing import encoder, view

CIPHER = MessageCipher("testCryptoPassword", "iv=any16_symbols")
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("value", "stringified"),
    [
        (NAN, "null"),
        ({"x": NAN, "y": INF, "z": -INF}, '{"x":null,"y":null,"z":null}'),
        ([1.5, [INF, {"a": [NAN, "é"]}]], '[1.5,[null,{"a":[null,"é"]}]]'),
        (
            {"body": {"deep": [[[[{"v": -INF, "ok": 2.5}]]]]}, "headers": {}},
            '{"body":{"deep":[[[[{"v":null,"ok":2.5}]]]]},"headers":{}}',
        ),
        ((NAN, (1, INF)), "[null,[1,null]]"),
    ],
)
def test_non_finite_floats_are_written_as_null_at_any_depth_as_json_stringify_writes_them(
    value: Any, stringified: str
) -> None:
    assert dumps(value) == stringified
    loads(stringified, what="the text")  # JSON that JSON.parse reads: no NaN/Infinity tokens


def test_a_nan_nested_150_levels_deep_is_written_as_null() -> None:
    deep: Any = NAN
    for _ in range(150):
        deep = [deep]
    assert dumps({"d": deep}) == '{"d":' + "[" * 150 + "null" + "]" * 150 + "}"


def test_a_non_finite_float_key_is_the_string_javascript_gives_it() -> None:
    assert dumps({NAN: 1, INF: 2, -INF: [NAN]}) == '{"NaN":1,"Infinity":2,"-Infinity":[null]}'


def test_a_shared_value_with_a_nan_is_written_each_time_and_a_cycle_is_still_the_encoders_error() -> None:
    shared = [NAN]
    assert dumps({"a": shared, "b": shared}) == '{"a":[null],"b":[null]}'
    circular: list[Any] = [NAN]
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular reference"):
        dumps(circular)
    with pytest.raises(TypeError):
        dumps({"x": NAN, "not json": object()})


def test_a_message_with_nan_encrypts_to_text_json_parse_reads_as_null() -> None:
    body = CIPHER.encrypt({"body": {"x": NAN, "y": INF}})
    assert CIPHER.decrypt_text(body) == '{"body":{"x":null,"y":null}}'
    assert CIPHER.decrypt(body) == {"body": {"x": None, "y": None}}


def test_a_lone_surrogate_is_escaped_in_lower_case_hex_and_decrypts_back_to_the_same_string() -> None:
    value = {"body": {"name": "\ud800 caf\u00e9", "low": "a\udfffb", "key\udbff": 1}}
    text = encode_text(dumps(value)).decode("utf-8")
    assert text == '{"body":{"name":"\\ud800 café","low":"a\\udfffb","key\\udbff":1}}'
    for version in (1, 2):
        assert CIPHER.decrypt(CIPHER.encrypt(value, version), version) == value
    plain = MessageCipher(None, None)
    assert plain.encrypt(value) == text.encode("utf-8")
    assert plain.decrypt(plain.encrypt(value)) == value
    for unchanged in ('{"a":"\\ud800"}', '{"a":"東京 ✓ 😀"}', ""):  # text UTF-8 can hold is encoded as it is
        assert encode_text(unchanged) == unchanged.encode("utf-8")


def test_an_error_message_holding_a_lone_surrogate_is_published_escaped_and_decrypts_to_the_message() -> None:
    payload = error_payload(ValueError("cannot handle \ud800"))
    messages, is_error = encoder().encode(view({"reply_to": "reply.q"}), Event(EventName.ERROR, payload))
    assert is_error and len(messages) == 2
    error, reply = messages
    encrypted = json.loads(error.body)["error"]
    assert "\\ud800" in CIPHER.decrypt_text(encrypted.encode())
    assert CIPHER.decrypt(encrypted.encode())["message"] == "cannot handle \ud800"
    assert CIPHER.decrypt(reply.body)["message"] == "cannot handle \ud800"


@pytest.mark.parametrize(
    ("text", "literal"),
    [
        ("NaN", "NaN"),
        ('{"body":{"v":NaN},"headers":{}}', "NaN"),
        ('{"a":[1,{"b":Infinity}]}', "Infinity"),
        ("[-Infinity]", "-Infinity"),
        (' {"v": NaN}', "NaN"),  # leading whitespace: json.loads' own path
        ('{"v": NaN}\n', "NaN"),  # trailing whitespace
    ],
)
def test_the_nan_and_infinity_literals_are_a_decode_error_as_json_parse_refuses_them(text: str, literal: str) -> None:
    for form in (text, text.encode()):
        with pytest.raises(DecodeError, match=f"message is not valid JSON: {literal} is not JSON"):
            loads(form, what="message")


def test_a_message_carrying_a_nan_literal_is_a_decode_error_after_decryption() -> None:
    body = CIPHER.encrypt_text('{"id":"x","body":{"v":NaN},"headers":{}}')
    with pytest.raises(DecodeError, match="not valid JSON after decryption: NaN is not JSON"):
        CIPHER.decrypt(body)
    assert CIPHER.decrypt(CIPHER.encrypt_text('{"v":"NaN","w":"Infinity"}')) == {"v": "NaN", "w": "Infinity"}
