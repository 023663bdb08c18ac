"""The transport's shortcuts change how many frames and writes go out, never what is settled or sent."""

from __future__ import annotations

import contextlib
import datetime
import decimal
import math
import random
import struct
from collections.abc import Iterator
from typing import Any

import pika
import pika.data
import pika.exceptions
import pika.spec
import pytest

from oarlock.amqp.acks import AckWindow
from oarlock.amqp.fieldtable import FastProperties, decode_properties, encode_table
from oarlock.errors import DecodeError

SAILOR_LIKE = {
    "execId": "exec-1",
    "taskId": "flow-1",
    "workspaceId": "workspace-1",
    "containerId": "container-1",
    "userId": "user-1",
    "stepId": "step_1",
    "compId": "comp-1",
    "function": "echo",
    "start": 1_763_900_000_000,
    "protocolVersion": 1,
    "threadId": "6ce502d8-d335-43de-8390-f7fa5e155d93",
    "parentMessageId": "m-1",
    "messageId": "b3b9c3c6-3f5d-4a4e-9f0c-2f1d0e6b9a11",
    "end": 1_763_900_000_001,
}


def pika_bytes(**props: Any) -> bytes:
    return b"".join(pika.spec.BasicProperties(**props).encode())


def fast_bytes(**props: Any) -> bytes:
    return b"".join(FastProperties(**props).encode())


# -- header encoding ---------------------------------------------------------------------------------
HEADER_SETS: list[dict[str, Any]] = [
    SAILOR_LIKE,
    {},
    {"x-eio-meta-trace-id": "trace", "reply_to": "amq.gen-abc", "x-eio-routing-key": "custom"},
    {"unicode": "grüße, 日本", "ключ": "значение"},
    {"i32": 2**31 - 1, "i32min": -(2**31), "big": 2**31, "neg": -(2**31) - 1, "i64": 2**63 - 1, "zero": 0},
    {"yes": True, "no": False, "none": None, "bytes": b"\x00\x01"},
    {"nested": {"a": 1, "b": ["x", 2, {"c": None}]}, "list": [1, "two", True]},
    {"decimal": decimal.Decimal("1.25"), "when": datetime.datetime(2026, 11, 23, tzinfo=datetime.UTC)},
    {"k" * 255: "longest allowed name"},
]


@pytest.mark.parametrize("headers", HEADER_SETS)
def test_fast_properties_encode_exactly_the_bytes_pika_does(headers: dict[str, Any]) -> None:
    for props in (
        {"content_type": "application/json", "content_encoding": "utf8", "headers": headers, "delivery_mode": 2},
        {"content_type": "application/json", "headers": headers, "delivery_mode": 1, "expiration": "15000"},
        {"headers": headers},
    ):
        assert fast_bytes(**props) == pika_bytes(**props)
        assert fast_bytes(**props) == pika_bytes(**props)  # the second time from the remembered entries


def test_remembered_header_entries_follow_changing_values_and_types() -> None:
    sequence: list[Any] = ["a", "a", "b", 1, "1", True, 1, 2**40, None, "a", 7, 7]
    for value in sequence:
        table = {"changing": value, "constant": "same"}
        assert fast_bytes(headers=table) == pika_bytes(headers=table), value


def test_properties_oarlock_does_not_use_are_encoded_by_pika_itself() -> None:
    props = {
        "content_type": "application/json",
        "headers": SAILOR_LIKE,
        "priority": 3,
        "correlation_id": "c",
        "reply_to": "r",
        "message_id": "m",
        "timestamp": 1_700_000_000,
        "type": "t",
        "user_id": "guest",
        "app_id": "a",
        "cluster_id": "x",
    }
    assert fast_bytes(**props) == pika_bytes(**props)


def test_a_header_name_over_255_bytes_fails_as_it_does_in_pika() -> None:
    with pytest.raises(pika.exceptions.ShortStringTooLong):
        encode_table({"k" * 256: "v"})
    with pytest.raises(pika.exceptions.ShortStringTooLong):
        pika_bytes(headers={"k" * 256: "v"})


def test_a_header_value_amqp_has_no_type_for_fails_as_it_does_in_pika() -> None:
    with pytest.raises(pika.exceptions.UnsupportedAMQPFieldException):
        encode_table({"set": {1, 2}})
    with pytest.raises(pika.exceptions.UnsupportedAMQPFieldException):
        pika_bytes(headers={"set": {1, 2}})


def test_fast_properties_decode_back_to_the_same_headers() -> None:
    encoded = fast_bytes(content_type="application/json", headers=SAILOR_LIKE, delivery_mode=2)
    decoded = pika.spec.BasicProperties()
    decoded.decode(encoded)
    assert decoded.headers == SAILOR_LIKE
    assert (decoded.content_type, decoded.delivery_mode) == ("application/json", 2)


# -- header decoding ---------------------------------------------------------------------------------
@contextlib.contextmanager
def pika_reading_doubles_as_floats() -> Iterator[None]:
    """pika's decoder, but doubles and floats as Python floats (as oarlock's; pika truncates them to ints)."""
    original = pika.data.decode_value

    def decode_value(encoded: bytes, offset: int) -> tuple[Any, int]:
        kind = encoded[offset : offset + 1]
        if kind == b"d":
            return struct.unpack_from(">d", encoded, offset + 1)[0], offset + 9
        if kind == b"f":
            return struct.unpack_from(">f", encoded, offset + 1)[0], offset + 5
        return original(encoded, offset)

    pika.data.decode_value = decode_value
    try:
        yield
    finally:
        pika.data.decode_value = original


def comparable(value: Any) -> Any:
    """NaN made equal to itself (a corrupted double can be one)."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        return {key: comparable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [comparable(item) for item in value]
    return value


def decoded_both_ways(encoded: bytes) -> tuple[Any, Any]:
    """What pika's decoder (doubles as floats) and oarlock's make of the same bytes: the properties, or "error".

    oarlock's decoder fails with a DecodeError whatever pika raised.
    """
    outcomes = []
    for ours, decode in (
        (False, lambda: pika.spec.BasicProperties().decode(encoded)),
        (True, lambda: decode_properties(encoded)),
    ):
        try:
            with pika_reading_doubles_as_floats():
                properties = decode()
        except Exception as exc:
            assert not ours or isinstance(exc, DecodeError), exc
            outcomes.append(("error",))
        else:
            assert type(properties) is pika.spec.BasicProperties
            outcomes.append(("decoded", comparable(sorted(vars(properties).items(), key=repr))))
    return outcomes[0], outcomes[1]


ALL_PROPERTIES: dict[str, Any] = {
    "content_type": "application/json",
    "content_encoding": "utf8",
    "delivery_mode": 2,
    "priority": 3,
    "correlation_id": "c-ü",
    "reply_to": "amq.gen-reply",
    "expiration": "15000",
    "message_id": "m",
    "timestamp": 1_763_900_000,
    "type": "t",
    "user_id": "guest",
    "app_id": "a",
    "cluster_id": "x",
}


@pytest.mark.parametrize("headers", [*HEADER_SETS, None])
def test_header_frames_decode_to_exactly_what_pika_decodes(headers: dict[str, Any] | None) -> None:
    for props in ({"headers": headers}, {"content_type": "application/json", "headers": headers}, ALL_PROPERTIES):
        encoded = pika_bytes(**{**props, "headers": headers})
        theirs, ours = decoded_both_ways(encoded)
        assert theirs[0] == "decoded"
        assert ours == theirs


def test_names_and_text_that_are_not_utf8_stay_bytes_as_in_pika() -> None:
    table = b"\x04k\xffey" + b"S" + (2).to_bytes(4, "big") + b"\xfe\xff" + b"\x02ok" + b"S\x00\x00\x00\x02\xc3\xa9"
    encoded = (pika.spec.BasicProperties.FLAG_HEADERS | pika.spec.BasicProperties.FLAG_CONTENT_TYPE).to_bytes(2, "big")
    encoded += b"\x02\xff\xfe" + len(table).to_bytes(4, "big") + table
    theirs, ours = decoded_both_ways(encoded)
    assert ours == theirs
    assert decode_properties(encoded).headers == {b"k\xffey": b"\xfe\xff", "ok": "é"}
    assert decode_properties(encoded).content_type == b"\xff\xfe"


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["text", "int", "bigint", "bool", "none", "bytes", "decimal", "when"]
    if depth < 2:
        kinds += ["table", "list"]
    kind = rng.choice(kinds)
    if kind == "text":
        return "".join(rng.choice("abcü日 -_") for _ in range(rng.randrange(0, 40)))
    if kind == "int":
        return rng.randrange(-(2**31), 2**31)
    if kind == "bigint":
        return rng.choice([-1, 1]) * rng.randrange(2**31, 2**63)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "bytes":
        return rng.randbytes(rng.randrange(0, 8))
    if kind == "decimal":
        return decimal.Decimal(rng.randrange(-999, 999)) / 100
    if kind == "when":
        return datetime.datetime.fromtimestamp(rng.randrange(0, 2**31), tz=datetime.UTC)
    if kind == "table":
        return {f"n{i}": random_value(rng, depth + 1) for i in range(rng.randrange(0, 4))}
    return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]


def test_random_header_tables_and_property_sets_decode_to_exactly_what_pika_decodes() -> None:
    rng = random.Random(20261123)
    for _ in range(400):
        props = {name: value for name, value in ALL_PROPERTIES.items() if rng.random() < 0.5}
        if rng.random() < 0.9:
            props["headers"] = {f"h-{i}-ü": random_value(rng) for i in range(rng.randrange(0, 16))}
        theirs, ours = decoded_both_ways(pika_bytes(**props))
        assert theirs[0] == "decoded"
        assert ours == theirs, props


def test_truncated_and_corrupted_header_frames_fail_or_decode_exactly_as_in_pika() -> None:
    rng = random.Random(7)
    sailor = pika_bytes(**ALL_PROPERTIES, headers={**SAILOR_LIKE, "flag": True, "nested": {"a": [1, "b"]}})
    failures = 0
    for cut in range(len(sailor)):
        theirs, ours = decoded_both_ways(sailor[:cut])
        assert ours == theirs, cut
        failures += theirs[0] == "error"
    assert failures > len(sailor) // 2  # most prefixes are not decodable: the test sees failures, not just values
    for _ in range(1500):
        corrupted = bytearray(sailor)
        for _ in range(rng.randrange(1, 4)):
            corrupted[rng.randrange(len(corrupted))] = rng.randrange(256)
        theirs, ours = decoded_both_ways(bytes(corrupted))
        assert ours == theirs, bytes(corrupted)


# -- ack window --------------------------------------------------------------------------------------
def test_contiguous_ready_deliveries_are_acked_with_one_multiple_ack() -> None:
    window = AckWindow()
    for tag in range(1, 101):
        window.delivered(tag)
    for tag in range(1, 101):
        window.ready(tag)
    plan = window.take()
    assert (plan.through, plan.singles) == (100, [])
    assert len(window) == 0


def test_ready_deliveries_behind_an_unfinished_one_are_acked_singly_and_never_the_unfinished_one() -> None:
    window = AckWindow()
    for tag in range(1, 6):
        window.delivered(tag)
    window.ready(1)
    window.ready(3)
    window.ready(5)
    plan = window.take()
    assert (plan.through, plan.singles) == (1, [3, 5])
    window.settled(2)  # rejected
    window.ready(4)
    plan = window.take()
    assert (plan.through, plan.singles) == (4, [])  # passes over the rejected 2 and the already acked 3
    assert len(window) == 0
    window.ready(5)  # a second ack of an acked delivery would close the channel: ignored
    window.ready(99)  # so is a tag never delivered
    assert not window.take()


def test_a_delivery_tag_that_goes_backwards_is_refused() -> None:
    window = AckWindow()
    window.delivered(5)
    with pytest.raises(ValueError, match="not above 5"):
        window.delivered(5)


def test_random_completion_orders_never_settle_an_unfinished_delivery_and_settle_every_finished_one() -> None:
    rng = random.Random(20261123)
    for _ in range(300):
        window = AckWindow()
        tags = list(range(1, rng.randint(2, 60)))
        for tag in tags:
            window.delivered(tag)
        order = tags[:]
        rng.shuffle(order)
        finished: set[int] = set()
        broker_settled: set[int] = set()  # what a broker would consider acked or rejected
        for tag in order:
            finished.add(tag)
            if rng.random() < 0.1:
                window.settled(tag)
                broker_settled.add(tag)
            else:
                window.ready(tag)
            if rng.random() < 0.5:
                plan = window.take()
                if plan.through is not None:
                    broker_settled.update(t for t in tags if t <= plan.through)
                broker_settled.update(plan.singles)
                assert broker_settled <= finished, "an unfinished delivery was acked"
        plan = window.take()
        if plan.through is not None:
            broker_settled.update(t for t in tags if t <= plan.through)
        broker_settled.update(plan.singles)
        assert broker_settled == set(tags)
        assert len(window) == 0


def test_a_signed_byte_header_is_written_as_field_type_b_and_reads_back_as_its_integer() -> None:
    from oarlock.amqp.types import SignedByte

    encoded = encode_table({"protocolVersion": SignedByte(1), "start": 1_795_350_646_882})
    assert encoded[4:] == b"\x0fprotocolVersionb\x01" + b"\x05startl" + (1_795_350_646_882).to_bytes(8, "big")
    decoded, _end = pika.data.decode_table(encoded, 0)
    assert decoded == {"protocolVersion": 1, "start": 1_795_350_646_882}
