from __future__ import annotations

import json
from typing import Any

import pytest

from oarlock.errors import DecodeError
from oarlock.jsonlimits import MAX_DEPTH, loads
from oarlock.protocol.crypto import dumps

TEXTS = [
    '{"body":{"payload":"x"},"headers":{},"id":"m-1"}',
    '[1,2.5,-3e2,true,false,null,"é","\\u00e9",{"a":[]}]',
    "7",
    '"text"',
    '  {"a": 1}',  # leading whitespace
    '{"a": 1}\n',  # trailing whitespace
    "\ufeff{}",  # a BOM
    '{"a": 1} {"b": 2}',  # extra data
    '{"a": 1,}',
    '{"a": "unterminated',
    "",
    "nope",
    '{"a": 1, "a": 2}',
]


def outcome(parse: Any, text: str | bytes) -> tuple[str, Any]:
    try:
        return "value", parse(text)
    except (ValueError, DecodeError) as exc:
        return "error", str(exc)


@pytest.mark.parametrize("text", TEXTS)
def test_a_text_parses_to_the_value_or_the_error_json_loads_gives(text: str) -> None:
    def reference(value: str | bytes) -> Any:
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise DecodeError(f"message is not valid JSON: {exc.args[0]}") from None
        return parsed

    assert outcome(lambda t: loads(t, what="message"), text) == outcome(reference, text)
    assert outcome(lambda t: loads(t, what="message"), text.encode()) == outcome(reference, text.encode())


def test_json_nested_deeper_than_the_limit_is_a_decode_error_whichever_brackets_it_uses() -> None:
    for opener, closer in (("[", "]"), ("{", "}")):
        if opener == "[":
            deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
        else:
            deep = '{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)
        for text in (deep, deep.encode()):
            with pytest.raises(DecodeError, match=f"nested deeper than {MAX_DEPTH} levels"):
                loads(text, what="message")
        assert closer in deep
    shallow_but_many = "[" + ",".join(["[1]"] * (MAX_DEPTH * 2)) + "]"
    assert len(loads(shallow_but_many, what="message")) == MAX_DEPTH * 2


def test_dumps_writes_the_text_json_dumps_writes_with_sailors_separators() -> None:
    values: list[Any] = [
        {"id": "m-1", "body": {"é": "ü", "n": [1, 2.5, None, True]}, "headers": {}},
        ["a", {"b": {}}],
        "plain",
        1e100,
    ]
    for value in values:
        assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    with pytest.raises(TypeError):
        dumps({"not json": object()})
    assert dumps({"after": "a failure"}) == '{"after":"a failure"}'
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular reference"):
        dumps(circular)
