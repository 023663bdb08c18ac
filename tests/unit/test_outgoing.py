"""protocol.outgoing: what each event becomes on the wire, as pure functions (no broker, fixed clock and ids)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from pika.compat import long as pika_long

from oarlock.amqp.types import SignedByte
from oarlock.errors import DecodeError, EncodeError
from oarlock.protocol.crypto import MessageCipher
from oarlock.protocol.events import Event, EventName
from oarlock.protocol.message import Message
from oarlock.protocol.outgoing import InputView, OutgoingEncoder, protocol_version_of
from oarlock.redact import register_secret
from tests.unit.test_worker_rules import settings_for

CIPHER = MessageCipher("testCryptoPassword", "iv=any16_symbols")
HEAD = {"stepId": "step_1", "threadId": "t-1"}
TAIL = {"parentMessageId": "in-1", "function": "echo", "start": 7}


def encoder(*, passthrough: bool = False, **env: str) -> OutgoingEncoder:
    return OutgoingEncoder(settings_for("echo", **env), CIPHER, is_passthrough=passthrough, clock_ms=lambda: 42)


def view(incoming: dict[str, Any] | None = None, message: Message | None = None, body: bytes = b"raw") -> InputView:
    incoming = incoming or {}
    return InputView(
        incoming,
        dict(HEAD),
        dict(TAIL),
        body,
        content=message.to_dict() if message else None,
        message=message,
        protocol_version=protocol_version_of(incoming),
        message_id="input-out-id",
    )


def test_data_goes_encrypted_to_the_data_routing_key_with_the_base_headers_its_id_and_end() -> None:
    (out,), is_error = encoder().encode(view(), Event(EventName.DATA, Message({"a": 1}, id="out-1")))
    assert not is_error and out.routing_key == "rk.data" and out.exchange == "exchange-1"
    assert out.headers == {**HEAD, "messageId": "out-1", **TAIL, "end": 42, "protocolVersion": 1}
    assert list(out.headers) == [
        "stepId",
        "threadId",
        "messageId",
        "parentMessageId",
        "function",
        "start",
        "end",
        "protocolVersion",
    ]
    assert type(out.headers["protocolVersion"]).__name__ == "SignedByte"
    wire = CIPHER.decrypt(out.body)
    assert list(wire) == ["id", "attachments", "body", "headers", "metadata"] and wire["metadata"] == {}
    assert wire["body"] == {"a": 1} and out.expiration is None


def test_a_routing_key_header_of_the_message_routes_it_and_the_functions_object_keeps_its_headers() -> None:
    emitted = Message({"a": 1}, headers={"X-EIO-Routing-Key": "custom.key", "keep": 1})
    (out,), _ = encoder().encode(view(), Event(EventName.DATA, emitted))
    assert out.routing_key == "custom.key" and "X-EIO-Routing-Key" not in CIPHER.decrypt(out.body)["headers"]
    assert emitted.headers == {"X-EIO-Routing-Key": "custom.key", "keep": 1}


def test_a_passthrough_step_keeps_its_output_without_passthrough_under_its_step_id_over_the_inputs() -> None:
    incoming = Message({"in": 1}, passthrough={"step_0": {"body": {"earlier": True}}})
    emitted = Message({"x": 2}, id="out-7", passthrough={"own": "dropped"})
    (out,), _ = encoder(passthrough=True).encode(view(message=incoming), Event(EventName.DATA, emitted))
    wire = CIPHER.decrypt(out.body)
    passthrough = wire["passthrough"]
    assert passthrough["step_0"] == {"body": {"earlier": True}} and "own" not in passthrough
    assert passthrough["step_1"] == {"id": "out-7", "attachments": {}, "body": {"x": 2}, "headers": {}, "metadata": {}}


def test_no_self_passthrough_carries_the_inputs_passthrough_without_the_steps_own() -> None:
    incoming = Message({"in": 1}, passthrough={"step_0": {"body": {"earlier": True}}})
    enc = encoder(passthrough=True, ELASTICIO_NO_SELF_PASSTRHOUGH="true")
    (out,), _ = enc.encode(view(message=incoming), Event(EventName.DATA, Message({"x": 2})))
    assert CIPHER.decrypt(out.body)["passthrough"] == {"step_0": {"body": {"earlier": True}}}


def test_an_error_carries_the_encrypted_error_and_the_input_and_goes_to_reply_to_as_well() -> None:
    register_secret("s3cr3t-token-value")
    payload = {"name": "ValueError", "message": "boom with s3cr3t-token-value", "stack": ""}
    messages, is_error = encoder().encode(view({"reply_to": "reply.q"}), Event(EventName.ERROR, payload))
    error, reply = messages
    assert is_error and error.routing_key == "rk.error" and reply.routing_key == "reply.q"
    body = json.loads(error.body)
    decrypted = CIPHER.decrypt(body["error"].encode())
    assert decrypted["message"] == "boom with ***" and body["errorInput"] == "raw"
    assert reply.headers["x-eio-error-response"] is True and CIPHER.decrypt(reply.body) == decrypted
    assert error.headers["end"] == 42 and "protocolVersion" not in error.headers
    assert error.headers["messageId"] == "input-out-id"


def test_error_replies_can_be_turned_off() -> None:
    payload = {"name": "E", "message": "m", "stack": ""}
    messages, _ = encoder(ELASTICIO_NO_ERROR_REPLIES="true").encode(
        view({"reply_to": "reply.q"}), Event(EventName.ERROR, payload)
    )
    assert [m.routing_key for m in messages] == ["rk.error"]


def test_the_error_input_of_protocol_2_is_the_decrypted_input_re_encrypted() -> None:
    message = Message({"in": 1})
    (error,), _ = encoder().encode(
        view({"protocolVersion": 2}, message=message, body=b"\x00binary"),
        Event(EventName.ERROR, {"name": "E", "message": "m", "stack": ""}),
    )
    assert CIPHER.decrypt(json.loads(error.body)["errorInput"].encode()) == message.to_dict()


def test_a_rebound_doubles_its_expiration_per_iteration_keeps_the_original_body_and_stops_at_the_limit() -> None:
    enc = encoder(ELASTICIO_REBOUND_LIMIT="3", ELASTICIO_REBOUND_INITIAL_EXPIRATION="100")
    reason = Message({"message": "busy"})
    first = enc.rebound(view(), reason)
    third = enc.rebound(view({"reboundIteration": 2}), reason)
    assert first is not None and third is not None
    assert (first.expiration, third.expiration) == ("100", "400") and third.body == b"raw"
    assert third.headers["reboundIteration"] == 3 and third.headers["reboundReason"] == "busy"
    past, is_error = enc.encode(view({"reboundIteration": 3}), Event(EventName.REBOUND, reason))
    assert is_error and [m.routing_key for m in past] == ["rk.error"]
    assert CIPHER.decrypt(json.loads(past[0].body)["error"].encode())["message"] == "Rebound limit exceeded"


def test_a_snapshot_is_plain_json_naming_its_event() -> None:
    (out,), _ = encoder().encode(view(), Event(EventName.UPDATE_SNAPSHOT, {"cursor": 5}))
    assert json.loads(out.body) == {"cursor": 5} and out.headers["snapshotEvent"] == "updateSnapshot"
    assert out.routing_key == "rk.snapshot" and "end" not in out.headers and "protocolVersion" not in out.headers


def test_the_snapshots_of_one_input_share_one_message_id_as_in_sailor() -> None:
    enc, one = encoder(), view()
    (first,), _ = enc.encode(one, Event(EventName.UPDATE_SNAPSHOT, {"a": 1}))
    (second,), _ = enc.encode(one, Event(EventName.SNAPSHOT, {"b": 2}))
    assert first.headers["messageId"] == second.headers["messageId"] == "input-out-id"


def test_update_keys_goes_encrypted_to_its_routing_key() -> None:
    payload = {"account": "a", "version": 3, "oauth": {"access_token": "t"}}
    (out,), is_error = encoder().encode(view(), Event(EventName.UPDATE_KEYS, payload))
    assert not is_error and out.routing_key == "updateKeys" and CIPHER.decrypt(out.body) == payload
    assert out.headers["protocolVersion"] == 1  # the keys consumer decrypts by it


def test_a_dead_credential_report_goes_encrypted_to_its_own_routing_key() -> None:
    report = {"type": "credentialInvalid", "account": "a", "version": 3, "state": "needs_reauthorization"}
    (out,), is_error = encoder().encode(view(), Event(EventName.CREDENTIAL_INVALID, report))
    assert not is_error and out.routing_key == "credentialInvalid" and CIPHER.decrypt(out.body) == report
    assert out.headers["protocolVersion"] == 1


def test_a_function_cannot_emit_a_dead_credential_report_itself() -> None:
    from oarlock.errors import EmitError
    from oarlock.protocol.events import normalise

    with pytest.raises(EmitError, match="unknown event 'credentialInvalid'"):
        normalise("credentialInvalid", {"account": "someone-else"})


def test_an_http_reply_needs_reply_to_and_a_body_within_the_size_limit() -> None:
    reply = {"statusCode": 200, "body": {"ok": True}, "headers": {}}
    (out,), _ = encoder().encode(view({"reply_to": "r"}), Event(EventName.HTTP_REPLY, reply))
    assert out.routing_key == "r" and CIPHER.decrypt(out.body) == reply
    with pytest.raises(EncodeError, match="reply_to"):
        encoder().encode(view(), Event(EventName.HTTP_REPLY, reply))
    with pytest.raises(EncodeError, match="over the limit of 10 bytes"):
        encoder(ELASTICIO_OUTGOING_MESSAGE_SIZE_LIMIT="10").encode(view(), Event(EventName.DATA, Message({})))


def test_end_publishes_nothing() -> None:
    assert encoder().encode(view(), Event(EventName.END)) == ([], False)


@pytest.mark.parametrize(("header", "expected"), [(None, 1), (1, 1), (2, 2), ("2", 2), (0, 1), ("", 1), (b"2", 2)])
def test_the_protocol_version_header_is_read_as_an_integer(header: Any, expected: int) -> None:
    assert protocol_version_of({} if header is None else {"protocolVersion": header}) == expected


@pytest.mark.parametrize("header", ["x", 2.5, True, [], {"v": 1}])
def test_a_protocol_version_that_is_not_an_integer_is_a_decode_error_naming_the_header(header: Any) -> None:
    with pytest.raises(DecodeError, match="protocolVersion header must be an integer"):
        protocol_version_of({"protocolVersion": header})


def wire_types(table: bytes) -> dict[str, str]:
    """Header name -> AMQP field type letter, read from an encoded field table (the types sailor uses)."""
    sizes = {"l": 8, "I": 4, "b": 1, "t": 1}
    out: dict[str, str] = {}
    offset, end = 4, 4 + int.from_bytes(table[:4], "big")
    while offset < end:
        length = table[offset]
        name = table[offset + 1 : offset + 1 + length].decode()
        kind = chr(table[offset + 1 + length])
        offset += 2 + length
        if kind == "S":
            offset += 4 + int.from_bytes(table[offset : offset + 4], "big")
        else:
            offset += sizes[kind]
        out[name] = kind
    return out


@pytest.mark.parametrize("capture", ["capture-passthrough.json", "capture-fail.json"])
def test_the_headers_go_on_the_wire_in_sailors_order_and_field_types(capture: str) -> None:
    from oarlock.amqp.fieldtable import encode_table
    from oarlock.protocol.headers import OutgoingHeaders
    from oarlock.protocol.settings import Settings
    from tests.support import DATA

    recorded = json.loads((DATA / "sailor-captures" / capture).read_text())
    settings = Settings.from_env(recorded["env"])
    cipher = MessageCipher(settings.message_crypto_password, settings.message_crypto_iv)
    incoming = recorded["input"]["headers"]
    head, tail = OutgoingHeaders(settings).parts(incoming, start_ms=1_795_350_646_882)
    message = Message.from_dict(recorded["input"]["body_decrypted"])
    one = InputView(incoming, head, tail, b"x", content=message.to_dict(), message=message, protocol_version=1)
    enc = OutgoingEncoder(settings, cipher)
    event = (
        Event(EventName.DATA, Message(message.body))
        if "passthrough" in capture
        else Event(EventName.ERROR, {"name": "IntentionalError", "message": "m", "stack": ""})
    )
    (out, *_), _ = enc.encode(one, event)
    (theirs,) = recorded["published"]
    types = wire_types(encode_table(out.headers))
    assert list(types) == theirs["header_order"]
    assert types == theirs["header_types"]


def test_no_self_passthrough_keeps_the_input_under_the_step_that_sent_it_as_sailor_does() -> None:
    incoming = Message({"in": 1}, id="in-9", passthrough={"step_0": {"body": {"first": True}}})
    enc = encoder(passthrough=True, ELASTICIO_NO_SELF_PASSTRHOUGH="true")
    (out,), _ = enc.encode(view({"stepId": "step_7"}, message=incoming), Event(EventName.DATA, Message({"x": 2})))
    passthrough = CIPHER.decrypt(out.body)["passthrough"]
    assert passthrough["step_0"] == {"body": {"first": True}} and "step_1" not in passthrough
    assert passthrough["step_7"]["id"] == "in-9" and passthrough["step_7"]["body"] == {"in": 1}


def test_only_a_numeric_rebound_iteration_header_counts_as_in_sailor() -> None:
    # sailor: previousIteration && typeof previousIteration === 'number' ? previousIteration + 1 : 1
    not_numbers: list[Any] = ["many", "2", "19", b"2", Decimal("2"), True, None, -3, float("nan"), float("inf")]
    numbers: list[Any] = [2, SignedByte(2), pika_long(2), 2.0, 2.7]  # I, b, l (as pika decodes it), d (a float)
    for value, iteration, expiration in [*((v, 1, "15000") for v in not_numbers), *((v, 3, "60000") for v in numbers)]:
        rebound = encoder().rebound(view({"reboundIteration": value}), Message({}))
        assert rebound is not None, value
        assert rebound.headers["reboundIteration"] == iteration and rebound.expiration == expiration, value
        assert type(rebound.headers["reboundIteration"]) is int


def test_a_rebound_emitted_with_an_exception_keeps_its_message_as_the_reason() -> None:
    from oarlock.protocol.events import normalise

    event = normalise("rebound", TimeoutError("the API is busy, try later"))
    rebound = encoder().rebound(view(), event.payload)
    assert rebound is not None and rebound.headers["reboundReason"] == "the API is busy, try later"


def test_the_error_reply_to_reply_to_carries_end_like_the_error_message() -> None:
    payload = {"name": "E", "message": "m", "stack": ""}
    _error, reply = encoder().encode(view({"reply_to": "reply.q"}), Event(EventName.ERROR, payload)).messages
    assert reply.headers["end"] == 42
