"""The hot path reads and writes exactly what pika does, for any split of the byte stream."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec
import pytest
from pika.adapters.select_connection import IOLoop

from oarlock.amqp.fieldtable import FastProperties
from oarlock.amqp.hotpath import HotPathConnection

CONSUMER_TAG = "ctag1.6d7f0c"


class RecordingHotPath(HotPathConnection):
    def __init__(self) -> None:
        super().__init__(pika.ConnectionParameters(), custom_ioloop=IOLoop(), internal_connection_workflow=False)
        self.written: list[bytes] = []

    def _adapter_emit_data(self, data: bytes) -> None:
        self.written.append(data)


class RecordingPika(pika.SelectConnection):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(pika.ConnectionParameters(), custom_ioloop=IOLoop(), internal_connection_workflow=False)
        self.written: list[bytes] = []

    def _adapter_emit_data(self, data: bytes) -> None:
        self.written.append(data)


def open_channel(connection: pika.SelectConnection, number: int = 1, *, body_max: int = 131064) -> Any:
    connection._set_connection_state(connection.CONNECTION_OPEN)
    connection._body_max_length = body_max
    channel = pika.channel.Channel(connection, number, lambda _channel: None)
    channel._set_state(channel.OPEN)
    connection._channels[number] = channel
    return channel


def listen(connection: pika.SelectConnection, channel: Any, seen: list[tuple[Any, ...]]) -> None:
    """Record deliveries and confirms the way each connection hands them out."""

    def on_message(
        ch: Any, method: pika.spec.Basic.Deliver, properties: pika.spec.BasicProperties, body: bytes
    ) -> None:
        seen.append(
            (
                "deliver",
                ch.channel_number,
                method.consumer_tag,
                method.delivery_tag,
                method.redelivered,
                method.exchange,
                method.routing_key,
                sorted(vars(properties).items()),
                body,
            )
        )

    channel._consumers[CONSUMER_TAG] = on_message
    if isinstance(connection, HotPathConnection):
        connection.listen_for_confirms(
            channel.channel_number, lambda tag, multiple, acked: seen.append(("confirm", tag, multiple, acked))
        )
    else:
        for kind in (pika.spec.Basic.Ack, pika.spec.Basic.Nack):
            connection.callbacks.add(
                channel.channel_number,
                kind,
                lambda frame: seen.append(
                    (
                        "confirm",
                        frame.method.delivery_tag,
                        bool(frame.method.multiple),
                        isinstance(frame.method, pika.spec.Basic.Ack),
                    )
                ),
                False,
            )


def delivery_frames(
    tag: int, body: bytes, properties: pika.spec.BasicProperties, *, body_max: int = 131064, **method: Any
) -> bytes:
    deliver = pika.spec.Basic.Deliver(
        method.get("consumer_tag", CONSUMER_TAG),
        tag,
        method.get("redelivered", False),
        method.get("exchange", ""),
        method.get("routing_key", "in"),
    )
    frames = [
        pika.frame.Method(method.get("channel", 1), deliver).marshal(),
        pika.frame.Header(method.get("channel", 1), len(body), properties).marshal(),
    ]
    for start in range(0, len(body), body_max):
        frames.append(pika.frame.Body(method.get("channel", 1), body[start : start + body_max]).marshal())
    return b"".join(frames)


def sample_stream(rng: random.Random) -> bytes:
    sailor = {
        "execId": "exec-1",
        "taskId": "flow-1",
        "stepId": "step_1",
        "messageId": "6ce502d8-d335-43de-8390-f7fa5e155d93",
        "protocolVersion": 2,
        "start": 1763900000000,
        "reboundIteration": 3,
        "x-eio-meta-trace-id": "trace-ü",
        "flag": True,
        "nested": {"a": [1, "b", None]},
        "price": Decimal("1.25"),
    }
    pieces = []
    tag = 0
    for _ in range(60):
        kind = rng.random()
        if kind < 0.55:
            tag += 1
            size = rng.choice([0, 1, 100, 1024, 5000, 20000])
            properties = rng.choice(
                [
                    pika.BasicProperties(),
                    pika.BasicProperties(content_type="application/json", headers={"messageId": f"m-{tag}"}),
                    pika.BasicProperties(
                        content_type="application/json",
                        content_encoding="utf8",
                        headers=sailor,
                        delivery_mode=2,
                        expiration="15000",
                        reply_to="reply.q",
                        correlation_id="c-1",
                        priority=3,
                        timestamp=1763900000,
                    ),
                ]
            )
            pieces.append(
                delivery_frames(
                    tag,
                    rng.randbytes(size),
                    properties,
                    body_max=4096,
                    redelivered=rng.random() < 0.3,
                    exchange=rng.choice(["", "exchange-1"]),
                    routing_key=rng.choice(["in", "päth.ü"]),
                )
            )
        elif kind < 0.8:
            ack = rng.random() < 0.8
            method = pika.spec.Basic.Ack if ack else pika.spec.Basic.Nack
            pieces.append(pika.frame.Method(1, method(rng.randrange(1, 1000), rng.random() < 0.5)).marshal())
        elif kind < 0.9:
            pieces.append(pika.frame.Heartbeat().marshal())
        else:  # a delivery for a consumer that is not registered: pika logs it and drops it, both ways
            tag += 1
            pieces.append(delivery_frames(tag, b"{}", pika.BasicProperties(), consumer_tag="ctag-unknown"))
    return b"".join(pieces)


def feed(connection: pika.SelectConnection, stream: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in [*cuts, len(stream)]:
        if cut > start:
            connection._on_data_available(stream[start:cut])
            start = cut


@pytest.mark.parametrize("seed", range(12))
def test_deliveries_and_confirms_reach_callbacks_as_pika_hands_them_over_for_any_split_of_the_stream(
    seed: int,
) -> None:
    rng = random.Random(seed)
    stream = sample_stream(rng)
    cuts = sorted(rng.sample(range(1, len(stream)), rng.choice([0, 1, 5, 40, 400])))
    results = []
    for connection in (RecordingPika(), RecordingHotPath()):
        seen: list[tuple[Any, ...]] = []
        channel = open_channel(connection)
        listen(connection, channel, seen)
        feed(connection, stream, cuts)
        results.append((seen, connection.bytes_received, connection.frames_received, connection._frame_buffer))
    assert results[1] == results[0]
    assert len([s for s in results[0][0] if s[0] == "deliver"]) > 10


def watch_pika(connection: HotPathConnection) -> list[Any]:
    """The frames the connection hands to pika's own frame processing."""
    by_pika: list[Any] = []
    process_frame = connection._process_frame

    def recording(frame: Any) -> None:
        by_pika.append(frame)
        process_frame(frame)

    connection._process_frame = recording
    return by_pika


def test_a_small_delivery_split_over_reads_waits_for_its_rest_and_never_reaches_pika() -> None:
    connection = RecordingHotPath()
    seen: list[tuple[Any, ...]] = []
    listen(connection, open_channel(connection), seen)
    by_pika = watch_pika(connection)
    first = delivery_frames(1, b"x" * 3000, pika.BasicProperties(headers={"messageId": "m-1"}))
    second = delivery_frames(2, b"y" * 10, pika.BasicProperties(headers={"messageId": "m-2"}))
    for cut in (50, 2000):  # inside the content header, then inside the body
        connection._on_data_available(first[:cut] if cut == 50 else first[50:cut])
        assert seen == []
    connection._on_data_available(first[2000:] + second)
    assert [(s[3], s[8][:1], len(s[8])) for s in seen] == [(1, b"x", 3000), (2, b"y", 10)]
    assert by_pika == []
    assert connection._frame_buffer == b""
    assert connection.bytes_received == len(first) + len(second)


def test_a_large_delivery_arriving_in_small_reads_is_assembled_by_pika_frame_by_frame() -> None:
    connection = RecordingHotPath()
    seen: list[tuple[Any, ...]] = []
    listen(connection, open_channel(connection), seen)
    by_pika = watch_pika(connection)
    body = random.Random(1).randbytes(300_000)
    stream = delivery_frames(1, body, pika.BasicProperties(), body_max=131064)
    stream += delivery_frames(2, b"{}", pika.BasicProperties())
    for start in range(0, len(stream), 4096):
        connection._on_data_available(stream[start : start + 4096])
        assert len(connection._frame_buffer) < 140_000  # never more than a frame and a read buffered
    assert [(s[3], s[8]) for s in seen] == [(1, body), (2, b"{}")]
    assert [type(frame).__name__ for frame in by_pika] == ["Method", "Header", "Body", "Body", "Body"]


def test_a_cancelled_consumer_gets_no_delivery_and_pika_rejects_it() -> None:
    connection = RecordingHotPath()
    seen: list[tuple[Any, ...]] = []
    channel = open_channel(connection)
    listen(connection, channel, seen)
    channel._cancelled.add(CONSUMER_TAG)
    connection._on_data_available(delivery_frames(7, b"{}", pika.BasicProperties()))
    assert seen == []
    reject = pika.frame.Method(1, pika.spec.Basic.Reject(7, True)).marshal()
    assert connection.written == [reject]


def test_a_corrupt_frame_end_raises_pikas_invalid_frame_error() -> None:
    connection = RecordingHotPath()
    listen(connection, open_channel(connection), [])
    frames = bytearray(delivery_frames(1, b"{}", pika.BasicProperties()))
    frames[-1] = 0
    with pytest.raises(pika.exceptions.InvalidFrameError):
        connection._on_data_available(bytes(frames))


def publish_both_ways(
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: pika.spec.BasicProperties,
    *,
    mandatory: bool,
    body_max: int,
) -> tuple[RecordingPika, RecordingHotPath]:
    plain, hot = RecordingPika(), RecordingHotPath()
    open_channel(plain, 3, body_max=body_max).basic_publish(exchange, routing_key, body, properties, mandatory)
    hot.publish(open_channel(hot, 3, body_max=body_max), exchange, routing_key, body, properties, mandatory=mandatory)
    return plain, hot


@pytest.mark.parametrize("size", [0, 1, 1024, 4096, 4097, 20000])
@pytest.mark.parametrize("mandatory", [True, False])
def test_a_publish_writes_pikas_frames_byte_for_byte(size: int, mandatory: bool) -> None:
    headers = {"messageId": "m-1", "start": 1763900000000, "protocolVersion": 1, "x-eio-meta-ü": "ä"}
    for properties in (
        FastProperties(content_type="application/json", content_encoding="utf8", headers=headers, delivery_mode=2),
        pika.BasicProperties(reply_to="r", correlation_id="c", priority=1, expiration="100", headers=headers),
        pika.BasicProperties(),
    ):
        body = random.Random(size).randbytes(size)
        plain, hot = publish_both_ways("exchange-ü", "routing.ä", body, properties, mandatory=mandatory, body_max=4096)
        assert b"".join(hot.written) == b"".join(plain.written)
        assert len(hot.written) == 1
        assert (hot.bytes_sent, hot.frames_sent) == (plain.bytes_sent, plain.frames_sent)


def test_publishing_to_many_routing_keys_keeps_each_method_frame_right() -> None:
    hot, plain = RecordingHotPath(), RecordingPika()
    hot_channel, plain_channel = open_channel(hot), open_channel(plain)
    for n in range(1500):  # past the remembered method frames
        key = f"reply.{n % 1200}"
        hot.publish(hot_channel, "x", key, b"{}", pika.BasicProperties(), mandatory=True)
        plain_channel.basic_publish("x", key, b"{}", pika.BasicProperties(), True)
    assert b"".join(hot.written) == b"".join(plain.written)


def test_publishing_on_a_closed_channel_raises_as_pika_does() -> None:
    hot = RecordingHotPath()
    channel = open_channel(hot)
    channel._set_state(channel.CLOSED)
    with pytest.raises(pika.exceptions.ChannelWrongStateError):
        hot.publish(channel, "x", "k", b"{}", pika.BasicProperties())
    assert hot.written == []


def test_after_read_runs_once_per_read_after_every_callback_of_it() -> None:
    connection = RecordingHotPath()
    seen: list[tuple[Any, ...]] = []
    listen(connection, open_channel(connection), seen)
    reads: list[int] = []
    connection.after_read = lambda: reads.append(len(seen))
    two = delivery_frames(1, b"{}", pika.BasicProperties()) + delivery_frames(2, b"{}", pika.BasicProperties())
    confirm = pika.frame.Method(1, pika.spec.Basic.Ack(5, True)).marshal()
    connection._on_data_available(two)
    connection._on_data_available(confirm[:10])  # nothing complete: still a read
    connection._on_data_available(confirm[10:])
    assert reads == [2, 2, 3]


def test_a_connected_socket_is_read_in_large_chunks_once_per_readiness_event() -> None:
    class Transport:
        _MAX_RECV_BYTES = 4096
        _MAX_CONSUME_BYTES = 100 * 1024

    connection, transport = RecordingHotPath(), Transport()
    connection._on_stream_connected = lambda: None
    connection._proto_connection_made(transport)
    assert transport._MAX_RECV_BYTES >= 128 * 1024 and transport._MAX_CONSUME_BYTES == 1
    assert connection._transport is transport


def test_a_truncated_content_header_fails_exactly_as_it_does_in_pika() -> None:
    deliver = pika.frame.Method(1, pika.spec.Basic.Deliver(CONSUMER_TAG, 1, False, "", "in")).marshal()
    short_header = bytes((pika.spec.FRAME_HEADER,)) + (1).to_bytes(2, "big") + (2).to_bytes(4, "big") + b"\x00\x3c\xce"
    failures = []
    for connection in (RecordingPika(), RecordingHotPath()):
        listen(connection, open_channel(connection), [])
        try:
            connection._on_data_available(deliver + short_header)
        except Exception as exc:  # whatever pika's decoder raises, the hot path must raise the same
            failures.append((type(exc), str(exc)))
    assert len(failures) == 2 and failures[1] == failures[0]
