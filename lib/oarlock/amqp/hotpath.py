"""The three frames a busy worker handles per message, without pika's per-frame machinery.

For every message a worker receives a delivery (method, header and body frames), publishes
its output (three frames again) and takes a share of a publisher confirm. pika turns each
incoming frame into objects, routes it through its callback manager and channel content
assembler, and marshals each outgoing frame through a chain of generic helpers: about half
of the I/O thread's time at a few thousand messages a second.

:class:`HotPathConnection` reads complete deliveries and confirms straight from the receive
buffer and hands them to the same consumer callback (``channel, method, properties, body``)
or to a registered confirm listener, and writes a publish's frames in one go. Anything else,
and any delivery that is not complete in the buffer yet, a cancelled consumer, a channel
that is not open or text that is not UTF-8, goes through pika's own code, frame by frame.
The bytes on the wire and the objects handed to callbacks are exactly pika's (tested against
pika's encoder and decoder); pika's traffic counters, which its heartbeat checker reads, are
kept. Content header frames, on either way, are decoded by :mod:`oarlock.amqp.fieldtable`
(doubles as floats, nesting bounded): a delivery whose header frame cannot be decoded is handed
over with :class:`~oarlock.amqp.fieldtable.UndecodableProperties` (empty, and the reason), so
that its consumer can reject it, instead of ending the connection.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pika.channel
import pika.exceptions
import pika.frame
import pika.spec

from oarlock.amqp.connection import CoalescingConnection
from oarlock.amqp.fieldtable import properties_or_reason

ConfirmListener = Callable[[int, bool, bool], None]
"""Called with (delivery_tag, multiple, acked) for every basic.ack / basic.nack on a channel."""

_FRAME_HEADER = struct.Struct(">BHI")  # type, channel, payload size
_CONTENT_HEADER = struct.Struct(">HHQ")  # class, weight, body size
_DELIVERY_TAG = struct.Struct(">Q")
_METHOD, _HEADER, _BODY = pika.spec.FRAME_METHOD, pika.spec.FRAME_HEADER, pika.spec.FRAME_BODY
_END = pika.spec.FRAME_END
_BASIC_DELIVER = struct.pack(">HH", 60, 60)
_BASIC_ACK = struct.pack(">HH", 60, 80)
_BASIC_NACK = struct.pack(">HH", 60, 120)
_PUBLISH_FRAMES_MAX = 1024
_INCOMPLETE = -1
_RECV_BYTES = 256 * 1024
# a delivery that is not complete in the buffer yet is waited for while it is this small; a larger one
# goes through pika frame by frame (waiting would copy the growing buffer on every read)
_WAIT_FOR_DELIVERY_MAX = 64 * 1024


class HotPathConnection(CoalescingConnection):
    _confirm_listeners: dict[int, ConfirmListener] | None = None
    _publish_frames: dict[tuple[int, str, str, bool], bytes] | None = None
    _frame_buffer: bytes
    after_read: Callable[[], None] | None = None
    """Called once what one read brought has been handled (to send what it produced at once)."""

    # -- incoming ----------------------------------------------------------------------------------
    def _proto_connection_made(self, transport: object) -> None:
        # pika reads 4 KB per recv() and loops until the socket is drained; every system call lets
        # a busy function thread take the interpreter lock, which the I/O thread then waits to get back
        if hasattr(transport, "_MAX_RECV_BYTES") and hasattr(transport, "_MAX_CONSUME_BYTES"):
            transport._MAX_RECV_BYTES = _RECV_BYTES
            transport._MAX_CONSUME_BYTES = 1  # one recv() per readable event: the poller reports what is left
        super()._proto_connection_made(transport)

    def listen_for_confirms(self, channel_number: int, listener: ConfirmListener) -> None:
        """Send this channel's publisher confirms to ``listener`` (after ``confirm_delivery``)."""
        if self._confirm_listeners is None:
            self._confirm_listeners = {}
        self._confirm_listeners[channel_number] = listener

    def _on_data_available(self, data_in: bytes) -> None:
        buffer: bytes = self._frame_buffer + data_in if self._frame_buffer else data_in
        self._frame_buffer = buffer
        offset, end = 0, len(buffer)
        while offset < end:
            taken = self._take_delivery(buffer, offset, end) or self._take_confirm(buffer, offset, end)
            if taken > 0:
                self.bytes_received += taken - offset
                offset = taken
                if self._frame_buffer is not buffer:  # a callback tore the connection down: pika reset its state
                    return
                continue
            if taken == _INCOMPLETE and end - offset < _WAIT_FOR_DELIVERY_MAX:
                break  # the rest of this delivery is in the next read
            # any other frame, or the start of a large delivery, the way pika does it
            self._frame_buffer = buffer = buffer[offset:] if offset else buffer
            offset = 0
            consumed, frame_value = self._read_frame()
            if not frame_value:
                break
            self._trim_frame_buffer(consumed)
            self._process_frame(frame_value)
            buffer = self._frame_buffer
            offset, end = 0, len(buffer)
        self._frame_buffer = buffer[offset:] if offset else buffer
        if self.after_read is not None:
            self.after_read()

    def _take_delivery(self, buf: bytes, offset: int, end: int) -> int:
        """Hand one complete basic.deliver with its content to its consumer.

        Returns the offset after it, _INCOMPLETE when the buffer ends inside it, or 0 when pika
        has to handle what is at ``offset``.
        """
        if end - offset < 12 or buf[offset] != _METHOD or buf[offset + 7 : offset + 11] != _BASIC_DELIVER:
            return 0
        _, number, size = _FRAME_HEADER.unpack_from(buf, offset)
        method_end = offset + 7 + size
        if method_end >= end:
            return _INCOMPLETE
        if buf[method_end] != _END:
            return 0
        channel = self._channels.get(number)
        if channel is None or not channel.is_open or channel._content_assembler._method_frame is not None:
            return 0
        try:
            pos = offset + 11
            consumer_tag, pos = _short_string(buf, pos)
            consumer = channel._consumers.get(consumer_tag)
            if consumer is None or consumer_tag in channel._cancelled:
                return 0
            (delivery_tag,) = _DELIVERY_TAG.unpack_from(buf, pos)
            redelivered = bool(buf[pos + 8] & 1)
            exchange, pos = _short_string(buf, pos + 9)
            routing_key, pos = _short_string(buf, pos)
        except UnicodeDecodeError:
            return 0
        if pos != method_end:
            return 0
        # the content header
        header = method_end + 1
        header_end = _frame_end(buf, header, end, _HEADER, number)
        if header_end <= 0:
            return header_end
        if header_end - header - 7 < 14:  # class, weight, body size, property flags
            return 0
        class_id, _, body_size = _CONTENT_HEADER.unpack_from(buf, header + 7)
        if class_id != 60:
            return 0
        # the body frames
        fragments: list[bytes] = []
        pos = header_end + 1
        seen = 0
        while seen < body_size:
            body_end = _frame_end(buf, pos, end, _BODY, number)
            if body_end <= 0:
                return body_end
            fragments.append(buf[pos + 7 : body_end])
            seen += body_end - pos - 7
            pos = body_end + 1
        if seen != body_size:
            return 0  # pika raises BodyTooLongError for this
        properties = properties_or_reason(buf[header + 19 : header_end])
        body = fragments[0] if len(fragments) == 1 else b"".join(fragments)
        self.frames_received += 2 + len(fragments)
        method = pika.spec.Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key)
        consumer(channel, method, properties, body)
        return pos

    def _read_frame(self) -> tuple[int, pika.frame.Frame | pika.frame.ProtocolHeader | None]:
        """pika's frame reader, but a content header's properties are decoded as on the hot path."""
        buf = self._frame_buffer
        if len(buf) >= 20 and buf[0] == _HEADER:
            _, number, size = _FRAME_HEADER.unpack_from(buf, 0)
            frame_end = 7 + size
            if size >= 12 and frame_end < len(buf) and buf[frame_end] == _END:
                class_id, _, body_size = _CONTENT_HEADER.unpack_from(buf, 7)
                if class_id == 60:
                    properties = properties_or_reason(buf[19:frame_end])
                    return frame_end + 1, pika.frame.Header(number, body_size, properties)
        return super()._read_frame()

    def _take_confirm(self, buf: bytes, offset: int, end: int) -> int:
        """Hand one basic.ack / basic.nack to its channel's confirm listener; the offset after it, or 0."""
        listeners = self._confirm_listeners
        if listeners is None or end - offset < 21 or buf[offset] != _METHOD:
            return 0
        kind = buf[offset + 7 : offset + 11]
        if kind != _BASIC_ACK and kind != _BASIC_NACK:
            return 0
        _, number, size = _FRAME_HEADER.unpack_from(buf, offset)
        if size != 13 or buf[offset + 20] != _END:
            return 0
        listener = listeners.get(number)
        channel = self._channels.get(number)
        if listener is None or channel is None or not channel.is_open:
            return 0
        (delivery_tag,) = _DELIVERY_TAG.unpack_from(buf, offset + 11)
        self.frames_received += 1
        listener(delivery_tag, bool(buf[offset + 19] & 1), kind == _BASIC_ACK)
        return offset + 21

    # -- outgoing ----------------------------------------------------------------------------------
    def publish(
        self,
        channel: pika.channel.Channel,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.spec.BasicProperties,
        *,
        mandatory: bool = False,
    ) -> None:
        """``channel.basic_publish`` with the same frames, marshalled in one go."""
        if not channel.is_open:
            raise pika.exceptions.ChannelWrongStateError("Channel is closed.")
        number = channel.channel_number
        method = self._publish_method(number, exchange, routing_key, mandatory)
        header_payload = b"".join((_CONTENT_HEADER.pack(60, 0, len(body)), *properties.encode()))
        pieces = [method, _FRAME_HEADER.pack(_HEADER, number, len(header_payload)), header_payload, b"\xce"]
        limit = self._body_max_length
        for start in range(0, len(body), limit):
            fragment = body[start : start + limit]
            pieces += (_FRAME_HEADER.pack(_BODY, number, len(fragment)), fragment, b"\xce")
        data = b"".join(pieces)
        self.bytes_sent += len(data)
        self.frames_sent += 2 + (len(body) + limit - 1) // limit
        self._adapter_emit_data(data)

    def _publish_method(self, number: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
        cache = self._publish_frames
        if cache is None:
            cache = self._publish_frames = {}
        key = (number, exchange, routing_key, mandatory)
        method = cache.get(key)
        if method is None:
            publish = pika.spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory)
            method = pika.frame.Method(number, publish).marshal()
            if len(cache) < _PUBLISH_FRAMES_MAX:  # reply_to queues can be many: remember the first ones only
                cache[key] = method
        return method


def _frame_end(buf: bytes, pos: int, end: int, kind: int, channel: int) -> int:
    """The offset of the end marker of a ``kind`` frame on ``channel`` at ``pos``.

    _INCOMPLETE when the buffer ends inside the frame, 0 when it is another frame or malformed.
    """
    if end - pos < 8:
        return _INCOMPLETE
    if buf[pos] != kind:
        return 0
    _, number, size = _FRAME_HEADER.unpack_from(buf, pos)
    if number != channel:
        return 0
    frame_end: int = pos + 7 + size
    if frame_end >= end:
        return _INCOMPLETE
    return frame_end if buf[frame_end] == _END else 0


def _short_string(buf: bytes, pos: int) -> tuple[str, int]:
    length = buf[pos]
    end = pos + 1 + length
    return buf[pos + 1 : end].decode("utf-8"), end
