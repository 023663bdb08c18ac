"""One bad message never stops the AMQP transport: headers it cannot decode or encode, a routing key AMQP cannot
carry. Real pika marshalling and frame parsing; connections that record what they would write (no socket)."""

from __future__ import annotations

import struct
import threading
from typing import Any

import pika
import pika.compat
import pika.data
import pika.frame
import pika.spec
import pytest
from pika.adapters.select_connection import IOLoop

from oarlock.amqp.confirms import publish_failure
from oarlock.amqp.connection import GuardedConnection
from oarlock.amqp.fieldtable import (
    MAX_DEPTH,
    EncodedProperties,
    FastProperties,
    UndecodableProperties,
    decode_properties,
    encode_table,
    properties_or_reason,
)
from oarlock.amqp.transport import AmqpTransport
from oarlock.amqp.types import Confirm, Incoming, Outgoing
from oarlock.errors import DecodeError, EncodeError, PublishError
from tests.unit.test_amqp_hot_path import (
    CONSUMER_TAG,
    RecordingHotPath,
    delivery_frames,
    listen,
    open_channel,
)

FLAG_HEADERS = pika.spec.BasicProperties.FLAG_HEADERS


class RecordingGuarded(GuardedConnection):
    """The plain-pika connection of ``OARLOCK_AMQP_HOT_PATH=off``, writing into a list."""

    def __init__(self) -> None:
        super().__init__(pika.ConnectionParameters(), custom_ioloop=IOLoop(), internal_connection_workflow=False)
        self.written: list[bytes] = []

    def _adapter_emit_data(self, data: bytes) -> None:
        self.written.append(data)


class RawHeaders(pika.spec.BasicProperties):  # type: ignore[misc]
    """Properties whose header table is written as given: field types pika cannot write (doubles, any timestamp)."""

    def __init__(self, *entries: bytes) -> None:
        super().__init__()
        self.raw = b"".join(entries)

    def encode(self) -> list[bytes]:
        return [FLAG_HEADERS.to_bytes(2, "big"), len(self.raw).to_bytes(4, "big"), self.raw]


def entry(name: str, field: bytes) -> bytes:
    return bytes((len(name),)) + name.encode() + field


def double(value: float) -> bytes:
    return struct.pack(">cd", b"d", value)


def timestamp(seconds: int) -> bytes:
    return struct.pack(">cQ", b"T", seconds)


def nested(depth: int) -> bytes:
    """A field table value nested ``depth`` tables deep."""
    inner = b"F" + (0).to_bytes(4, "big")
    for _ in range(depth - 1):
        item = entry("k", inner)
        inner = b"F" + len(item).to_bytes(4, "big") + item
    return inner


def header_payload(properties: pika.spec.BasicProperties) -> bytes:
    return b"".join(properties.encode())


# -- doubles ---------------------------------------------------------------------------------------------
def test_doubles_and_floats_decode_as_floats_where_pika_truncates_them_to_integers() -> None:
    encoded = header_payload(
        RawHeaders(
            entry("amount", double(1.5)),
            entry("single", struct.pack(">cf", b"f", 0.25)),
            entry("deep", b"F" + (len(entry("x", double(-2.75)))).to_bytes(4, "big") + entry("x", double(-2.75))),
            entry("list", b"A" + (9).to_bytes(4, "big") + double(1e19)),
        )
    )
    ours = decode_properties(encoded).headers
    assert ours == {"amount": 1.5, "single": 0.25, "deep": {"x": -2.75}, "list": [1e19]}
    assert all(type(value) is float for value in (ours["amount"], ours["single"], ours["deep"]["x"], ours["list"][0]))
    theirs = pika.spec.BasicProperties().decode(encoded).headers
    assert theirs["amount"] == 1 and theirs["list"] == [10**19]  # what oarlock re-published before: 1.5 became 1


def test_a_float_header_is_written_as_an_amqp_double_and_reads_back_as_itself() -> None:
    table = {"amount": 1.5, "nan": float("nan"), "nested": {"a": [2.0, "x"]}, "text": "t"}
    encoded = encode_table(table)
    assert entry("amount", double(1.5)) in encoded  # field type "d", as Node's amqplib writes a fractional number
    decoded = decode_properties(FLAG_HEADERS.to_bytes(2, "big") + encoded).headers
    assert decoded["amount"] == 1.5 and decoded["nested"] == {"a": [2.0, "x"]} and decoded["nan"] != decoded["nan"]
    assert pika.data.decode_table(encode_table({"amount": 1.5}), 0)[0] == {"amount": 1}  # pika reads it, truncated


def test_an_integer_beyond_64_bits_what_pika_decodes_a_double_into_is_written_back_as_that_double() -> None:
    for value in (pika.compat.long(10**19), 10**19, -(2**64)):
        assert encode_table({"amount": value})[4:] == entry("amount", double(float(value)))
    with pytest.raises(struct.error):  # what killed the transport's I/O thread
        pika.data.encode_table([], {"amount": pika.compat.long(10**19)})


# -- headers that cannot be encoded: an EncodeError on the publishing thread ------------------------------------
def test_headers_that_cannot_be_encoded_raise_an_encode_error_naming_the_header() -> None:
    for value, reason in (({1, 2}, "no field type"), (10**400, "OverflowError"), ({"k" * 300: 1}, "255")):
        with pytest.raises(EncodeError, match=rf"header 'bad' \({type(value).__name__}\).*{reason}"):
            EncodedProperties.of(headers={"fine": 1, "bad": value}, delivery_mode=2)


def test_tables_nested_up_to_the_limit_are_encoded_and_decoded_and_deeper_ones_are_refused_either_way() -> None:
    deep: dict[str, Any] = {}
    for _ in range(MAX_DEPTH - 1):  # MAX_DEPTH tables in all
        deep = {"k": deep}
    encoded = b"".join(EncodedProperties.of(headers={"deep": deep}).encode())
    assert decode_properties(encoded).headers == {"deep": deep}
    with pytest.raises(EncodeError, match="nested deeper than"):
        EncodedProperties.of(headers={"deep": {"k": deep}})
    with pytest.raises(DecodeError, match="nested deeper than"):
        decode_properties(header_payload(RawHeaders(entry("deep", nested(MAX_DEPTH + 1)))))


def test_a_publish_whose_headers_cannot_be_encoded_is_a_publish_error_naming_the_header() -> None:
    headers = {"messageId": "m", "x-eio-meta-amount": {1, 2}}
    try:
        b"".join(FastProperties(headers=headers).encode())
    except Exception as exc:
        failure = publish_failure(exc, "x", "k", headers)
    else:
        raise AssertionError("a set cannot be an AMQP header value")
    assert isinstance(failure, PublishError) and "header 'x-eio-meta-amount' (set)" in str(failure)


def test_encoded_properties_are_the_bytes_fast_properties_write() -> None:
    props = {"content_type": "application/json", "headers": {"a": "b", "n": 7}, "delivery_mode": 2}
    encoded = EncodedProperties.of(**props)
    assert encoded.encode() is encoded.encode()  # encoded once
    assert b"".join(encoded.encode()) == b"".join(pika.spec.BasicProperties(**props).encode())


# -- headers that cannot be decoded: the delivery is handed over with the reason, the connection goes on --------
UNDECODABLE = {  # the field, and the reason oarlock's decoder gives
    "a timestamp past the year 9999": (entry("when", timestamp(2**40)), "timestamp 1099511627776"),
    "a table nested 2,000 deep": (entry("deep", nested(2000)), f"nested deeper than {MAX_DEPTH}"),
    "an unknown field type": (entry("odd", b"Z\x00"), "'Z' is not an AMQP field type"),
}
PIKAS_REASON = {  # and pika's, on the plain path
    "a timestamp past the year 9999": "ValueError: year 36812 is out of range",
    "a table nested 2,000 deep": "the header tables are nested too deep (RecursionError)",
    "an unknown field type": "InvalidFieldTypeException",
}


@pytest.mark.parametrize("case", list(UNDECODABLE))
def test_a_header_frame_that_cannot_be_decoded_raises_a_decode_error_naming_the_header(case: str) -> None:
    field, reason = UNDECODABLE[case]
    encoded = header_payload(RawHeaders(entry("fine", b"S\x00\x00\x00\x01x"), field))
    with pytest.raises(DecodeError, match=reason) as raised:
        decode_properties(encoded)
    assert str(raised.value).startswith("the message's AMQP headers cannot be decoded: header '")
    undecodable = properties_or_reason(encoded)
    assert isinstance(undecodable, UndecodableProperties) and undecodable.headers is None
    assert undecodable.decode_error.startswith("header '") and reason in undecodable.decode_error


@pytest.mark.parametrize("connection_class", [RecordingHotPath, RecordingGuarded], ids=["hot-path", "plain-pika"])
@pytest.mark.parametrize("case", list(UNDECODABLE))
@pytest.mark.parametrize("size", [10, 300_000], ids=["small", "large"])  # large: pika assembles it frame by frame
def test_a_delivery_whose_headers_cannot_be_decoded_reaches_its_consumer_with_the_reason_and_the_next_one_follows(
    connection_class: type[Any], case: str, size: int
) -> None:
    connection = connection_class()
    seen: list[tuple[Any, ...]] = []
    listen(connection, open_channel(connection), seen)
    field, reason = UNDECODABLE[case]
    stream = delivery_frames(1, b"p" * size, RawHeaders(field)) + delivery_frames(
        2, b"{}", pika.BasicProperties(headers={"messageId": "next"})
    )
    for start in range(0, len(stream), 4096):
        connection._on_data_available(stream[start : start + 4096])
    assert [(s[3], len(s[8])) for s in seen] == [(1, size), (2, 2)]
    poisoned = dict(seen[0][7])
    assert poisoned["headers"] is None
    assert (reason if connection_class is RecordingHotPath else PIKAS_REASON[case]) in poisoned["decode_error"]
    assert dict(seen[1][7])["headers"] == {"messageId": "next"} and "decode_error" not in dict(seen[1][7])
    assert connection._frame_buffer == b""


def test_a_large_delivery_assembled_by_pika_on_the_hot_path_has_its_doubles_as_floats_too() -> None:
    connection = RecordingHotPath()
    seen: list[tuple[Any, ...]] = []
    listen(connection, open_channel(connection), seen)
    stream = delivery_frames(1, b"p" * 300_000, RawHeaders(entry("amount", double(1.5))))
    for start in range(0, len(stream), 4096):
        connection._on_data_available(stream[start : start + 4096])
    assert dict(seen[0][7])["headers"] == {"amount": 1.5}


def test_the_transport_hands_the_worker_an_incoming_with_no_headers_and_the_reason() -> None:
    transport = AmqpTransport("amqp://guest:guest@127.0.0.1:9/%2F", hot_path=True)
    received: list[Incoming] = []
    transport._handler = received.append
    for tag, properties in ((4, UndecodableProperties("the reason")), (5, pika.spec.BasicProperties(headers={"a": 1}))):
        deliver = pika.spec.Basic.Deliver(CONSUMER_TAG, tag, False, "ex", "rk")
        transport._on_message(transport.generation, deliver, properties, b"body")
    (poisoned, fine) = received
    assert (poisoned.delivery_tag, poisoned.headers, poisoned.body, poisoned.decode_error) == (
        4,
        {},
        b"body",
        "the reason",
    )
    assert fine.headers == {"a": 1} and fine.decode_error is None
    assert Incoming(1, 2, {}, b"", False).decode_error is None  # every older constructor still works


# -- a publish the broker cannot take: its own PublishError, no delivery tag -------------------------------------
def publishing(hot_path: bool) -> tuple[AmqpTransport, Any]:
    """A transport whose publishing connection records what it writes; calls run inline (as on the I/O thread)."""
    transport = AmqpTransport("amqp://guest:guest@127.0.0.1:9/%2F", hot_path=hot_path)
    connection = RecordingHotPath() if hot_path else RecordingGuarded()
    transport._publish_conn = connection
    transport._publish_channel = open_channel(connection)
    transport._ready.set()
    transport._io_thread = threading.get_ident()
    return transport, connection


def published_routing_keys(connection: Any) -> list[str]:
    """The routing keys of the basic.publish frames a recording connection wrote."""
    stream, keys = b"".join(connection.written), []
    while stream:
        consumed, frame = pika.frame.decode_frame(stream)
        stream = stream[consumed:]
        if isinstance(frame, pika.frame.Method) and isinstance(frame.method, pika.spec.Basic.Publish):
            keys.append(frame.method.routing_key)
    return keys


@pytest.mark.parametrize("hot_path", [True, False], ids=["hot-path", "plain-pika"])
def test_a_routing_key_over_255_bytes_fails_its_own_confirm_and_later_confirms_go_to_their_own_publishes(
    hot_path: bool,
) -> None:
    transport, connection = publishing(hot_path)
    long_key = transport.publish(Outgoing("exchange", "k" * 300, b"poison", {"messageId": "m-1"}))
    assert isinstance(long_key.error, PublishError)
    assert "routing key is 300 bytes of UTF-8, AMQP allows at most 255" in str(long_key.error)
    assert connection.written == []  # nothing left for it
    good: list[Confirm] = [transport.publish(Outgoing("exchange", f"rk.{n}", b"{}", {"n": n})) for n in range(2)]
    assert published_routing_keys(connection) == ["rk.0", "rk.1"] and not any(c.done for c in good)
    transport._on_confirm(1, False, True)  # the broker's first confirm is the first publish that reached it
    assert good[0].done and good[0].error is None and not good[1].done
    transport._on_confirm(2, False, False)
    assert isinstance(good[1].error, PublishError) and "rk.1" in str(good[1].error)


def test_a_call_on_the_io_thread_that_raises_does_not_stop_the_calls_after_it(caplog: pytest.LogCaptureFixture) -> None:
    transport = AmqpTransport("amqp://guest:guest@127.0.0.1:9/%2F", hot_path=True)
    ran: list[str] = []

    def broken() -> None:
        raise struct.error("int too large to convert")

    transport.call(broken)  # not on the I/O thread: queued, as from a function thread
    transport.call(lambda: ran.append("next"))
    transport._drain_outbox()
    assert ran == ["next"]
    assert "failed" in caplog.text and "int too large to convert" in caplog.text
