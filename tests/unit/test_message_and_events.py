"""The message shape and the event set a function may emit."""

from __future__ import annotations

import pytest

from oarlock.errors import DecodeError, EmitError
from oarlock.protocol.events import EVENT_NAMES, EventName, normalise
from oarlock.protocol.message import Message


def test_a_message_keeps_unknown_fields_and_round_trips() -> None:
    message = Message.from_dict({"id": "m1", "body": {"a": 1}, "headers": {"h": "v"}, "custom": [1]})
    assert message.id == "m1" and message.body == {"a": 1} and message.extra == {"custom": [1]}
    assert Message.from_dict(message.to_dict()) == message


def test_a_message_without_an_id_gets_a_new_uuid() -> None:
    assert len(Message.from_dict({"body": {}}).id) == 36


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([1, 2], "message must be a JSON object, got an array"),
        ({"body": {}, "headers": "x"}, "message.headers must be an object, got a string"),
        ({"body": {}, "attachments": 3}, "message.attachments must be an object, got a number"),
    ],
)
def test_a_malformed_message_is_a_decode_error_naming_the_field(data: object, expected: str) -> None:
    with pytest.raises(DecodeError, match=expected):
        Message.from_dict(data)


def test_the_event_set_is_the_protocols() -> None:
    assert {"data", "error", "rebound", "snapshot", "updateSnapshot", "updateKeys", "httpReply", "end"} == EVENT_NAMES


def test_an_unknown_event_is_an_emit_error_listing_the_known_ones() -> None:
    with pytest.raises(EmitError, match=r"unknown event 'dataa'.*updateKeys"):
        normalise("dataa", {})


def test_data_payloads_become_messages_whatever_their_form() -> None:
    assert normalise("data", {"body": {"x": 1}}).payload.body == {"x": 1}
    assert normalise("data", {"x": 1}).payload.body == {"x": 1}
    assert normalise("data", Message(body=[1])).payload.body == [1]


def test_an_error_payload_from_an_exception_has_name_message_and_stack() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        event = normalise("error", exc)
    assert event.name is EventName.ERROR
    assert event.payload["name"] == "ValueError" and event.payload["message"] == "boom"
    assert "ValueError: boom" in event.payload["stack"]


def test_a_snapshot_must_be_an_object() -> None:
    with pytest.raises(EmitError, match="snapshot needs a JSON object"):
        normalise("snapshot", [1])
