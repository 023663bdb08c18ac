"""protocol.outgoing: a routing key or exchange AMQP cannot carry (over 255 bytes of UTF-8) is an EncodeError naming
it, before anything reaches the broker; an error whose reply_to is too long still reaches the error routing key."""

from __future__ import annotations

import json
import logging

import pytest

from oarlock.errors import ConfigurationError, EncodeError
from oarlock.protocol.events import Event, EventName
from oarlock.protocol.message import Message
from oarlock.protocol.outgoing import protocol_version_of
from tests.unit.test_outgoing import CIPHER, encoder, view

ERROR = {"name": "E", "message": "m", "stack": ""}


def test_a_data_message_routed_by_an_x_eio_routing_key_over_255_bytes_is_an_encode_error_naming_it() -> None:
    emitted = Message({"a": 1}, headers={"x-eio-routing-key": "k" * 300})
    with pytest.raises(EncodeError) as raised:
        encoder().encode(view(), Event(EventName.DATA, emitted))
    text = str(raised.value)
    assert "routing key of the x-eio-routing-key header is 300 bytes of UTF-8, AMQP allows at most 255" in text


def test_the_limit_is_in_bytes_of_utf8_and_255_bytes_are_allowed() -> None:
    (out,), _ = encoder().encode(view(), Event(EventName.DATA, Message({}, headers={"x-eio-routing-key": "k" * 255})))
    assert out.routing_key == "k" * 255
    (out,), _ = encoder().encode(view(), Event(EventName.DATA, Message({}, headers={"x-eio-routing-key": "ü" * 127})))
    assert len(out.routing_key.encode()) == 254
    with pytest.raises(EncodeError, match="256 bytes of UTF-8"):
        encoder().encode(view(), Event(EventName.DATA, Message({}, headers={"x-eio-routing-key": "ü" * 128})))


def test_an_error_whose_reply_to_is_too_long_goes_to_the_error_routing_key_without_the_reply(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    incoming = {"reply_to": "r" * 300, "messageId": "in-1"}
    encoded = encoder().encode(view(incoming), Event(EventName.ERROR, ERROR))
    (error,) = encoded.messages
    assert encoded.is_error and error.routing_key == "rk.error"
    assert CIPHER.decrypt(json.loads(error.body)["error"].encode())["message"] == "m"
    assert "in-1" in caplog.text and "reply_to header is 300 bytes of UTF-8, AMQP allows at most 255" in caplog.text


def test_an_http_reply_to_a_reply_to_over_255_bytes_is_an_encode_error_naming_reply_to() -> None:
    with pytest.raises(EncodeError, match="the reply_to header is 300 bytes of UTF-8, AMQP allows at most 255"):
        encoder().encode(view({"reply_to": "r" * 300}), Event(EventName.HTTP_REPLY, {"statusCode": 200, "body": "x"}))


@pytest.mark.parametrize(
    ("variable", "event"),
    [
        ("ELASTICIO_DATA_ROUTING_KEY", Event(EventName.DATA, Message({}))),
        ("ELASTICIO_ERROR_ROUTING_KEY", Event(EventName.ERROR, ERROR)),
        ("ELASTICIO_SNAPSHOT_ROUTING_KEY", Event(EventName.SNAPSHOT, {"cursor": 1})),
        ("ELASTICIO_UPDATE_KEYS_ROUTING_KEY", Event(EventName.UPDATE_KEYS, {"access_token": "t"})),
        ("ELASTICIO_REBOUND_ROUTING_KEY", Event(EventName.REBOUND, Message({}))),
    ],
)
def test_a_configured_routing_key_over_255_bytes_is_a_configuration_error_at_start_naming_its_variable(
    variable: str, event: Event
) -> None:
    with pytest.raises(ConfigurationError, match=rf"{variable} is 300 bytes of UTF-8"):
        encoder(**{variable: "c" * 300})  # before any message: every one of them would fail


def test_a_configured_exchange_over_255_bytes_is_a_configuration_error_at_start_naming_its_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"ELASTICIO_PUBLISH_MESSAGES_TO is 300 bytes"):
        encoder(ELASTICIO_PUBLISH_MESSAGES_TO="x" * 300)


def test_a_protocol_version_sent_as_an_integral_double_is_that_version() -> None:
    assert protocol_version_of({"protocolVersion": 2.0}) == 2
    assert protocol_version_of({"protocolVersion": 0.0}) == 1
