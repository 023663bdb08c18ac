"""Message properties encoded and decoded faster than pika does, with pika's results (but for doubles).

Every message oarlock publishes carries sailor's dozen-odd headers; pika encodes a header
table one value at a time through several generic helpers (about 17 µs for sailor's set,
the largest single cost of a publish). :class:`FastProperties` is a ``BasicProperties``
whose ``encode()`` writes the properties oarlock uses (content type and encoding, headers,
delivery mode, expiration) with direct paths for text and integer header values, and hands
everything else (other properties, other value types, over-long names) to pika's own code,
so the bytes are exactly what pika would produce. Where pika cannot write a value at all, two
are written the way Node's amqplib (sailor) writes a JS number: a float, and an integer beyond
64 bits (what pika decodes a double such as 1e19 into), as an AMQP double (``d``).
:class:`EncodedProperties` are encoded once, on the thread that builds them, so a value that
cannot be encoded fails there and never on the transport's I/O thread.

Every message a worker receives from sailor or oarlock carries the same header set, which
pika decodes in about 16 µs. :func:`decode_properties` builds the same ``BasicProperties``
with direct paths for text, integer and boolean header values, pika's values for every other
type, except that doubles and floats (``d``, ``f``) are Python floats (pika truncates them to
integers: 1.5 became 1), and tables and arrays nested deeper than :data:`MAX_DEPTH` are refused.
Whatever cannot be decoded (a truncated frame, a timestamp past the year 9999, an unknown field
type) raises :class:`~oarlock.errors.DecodeError` naming it; :func:`properties_or_reason` turns
that into :class:`UndecodableProperties`, so that one message can be rejected with its reason
instead of ending the connection.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any

import pika.compat
import pika.data
import pika.exceptions
import pika.spec

from oarlock.amqp.types import SignedByte
from oarlock.errors import DecodeError, EncodeError

_FLAG_CONTENT_TYPE = pika.spec.BasicProperties.FLAG_CONTENT_TYPE
_FLAG_CONTENT_ENCODING = pika.spec.BasicProperties.FLAG_CONTENT_ENCODING
_FLAG_HEADERS = pika.spec.BasicProperties.FLAG_HEADERS
_FLAG_DELIVERY_MODE = pika.spec.BasicProperties.FLAG_DELIVERY_MODE
_FLAG_EXPIRATION = pika.spec.BasicProperties.FLAG_EXPIRATION
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 100
"""How deep header tables and arrays may nest (sailor's headers are flat; pika has no limit but the stack)."""


class FastProperties(pika.spec.BasicProperties):  # type: ignore[misc]
    def encode(self) -> list[bytes]:
        if not (
            self.priority is None
            and self.correlation_id is None
            and self.reply_to is None
            and self.message_id is None
            and self.timestamp is None
            and self.type is None
            and self.user_id is None
            and self.app_id is None
            and self.cluster_id is None
        ):
            return list(super().encode())
        pieces: list[bytes] = []
        flags = 0
        if self.content_type is not None:
            flags |= _FLAG_CONTENT_TYPE
            pieces.append(_short_string(self.content_type))
        if self.content_encoding is not None:
            flags |= _FLAG_CONTENT_ENCODING
            pieces.append(_short_string(self.content_encoding))
        if self.headers is not None:
            flags |= _FLAG_HEADERS
            pieces.append(encode_table(self.headers))
        if self.delivery_mode is not None:
            flags |= _FLAG_DELIVERY_MODE
            pieces.append(bytes((self.delivery_mode,)))
        if self.expiration is not None:
            flags |= _FLAG_EXPIRATION
            pieces.append(_short_string(self.expiration))
        pieces.insert(0, flags.to_bytes(2, "big"))
        return pieces


class EncodedProperties(FastProperties):
    """Properties encoded once, where they are built: ``encode()`` hands the same bytes to whoever marshals them."""

    _pieces: list[bytes]

    @classmethod
    def of(cls, **properties: Any) -> EncodedProperties:
        """EncodeError naming the header whose value cannot be encoded."""
        made = cls(**properties)
        try:
            made._pieces = FastProperties.encode(made)
        except Exception as exc:
            raise EncodeError(
                f"the message's AMQP headers cannot be encoded: {unencodable(made.headers, exc)}"
            ) from exc
        return made

    def encode(self) -> list[bytes]:
        return self._pieces


def unencodable(headers: dict[str, Any] | None, exc: Exception) -> str:
    """Which header of ``headers`` cannot be encoded and why (the failure path only: each is tried alone)."""
    for key, value in (headers or {}).items():
        try:
            _any_entry(key, value)
        except Exception as failure:
            name = repr(key) if len(repr(key)) <= 80 else f"{repr(key)[:60]}... ({len(str(key))} characters)"
            return f"header {name} ({type(value).__name__}): {_reason(failure)}"
    return _reason(exc)


def _reason(exc: Exception) -> str:
    if isinstance(exc, pika.exceptions.ShortStringTooLong):
        return f"a name or text of {len(exc.args[0]) if exc.args else '?'} bytes, AMQP allows at most 255"
    if isinstance(exc, pika.exceptions.UnsupportedAMQPFieldException):
        return "AMQP has no field type for this value"
    if isinstance(exc, RecursionError):
        return "nested too deep"
    return f"{type(exc).__name__}: {exc}"


def encode_table(table: dict[str, Any]) -> bytes:
    """An AMQP field table, as ``pika.data.encode_table`` writes it."""
    parts: list[bytes] = []
    last = _last_entries
    for key, value in table.items():
        kind = type(value)
        if kind is str or kind is int or kind is SignedByte:
            remembered = last.get(key)
            if remembered is not None and remembered[0] == value and type(remembered[0]) is kind:
                parts.append(remembered[1])
                continue
            entry = _signed_byte_entry(key, value) if kind is SignedByte else _entry(key, value)
            if len(last) < _LAST_ENTRIES_MAX:
                last[key] = (value, entry)
            parts.append(entry)
            continue
        parts.append(_any_entry(key, value))
    body = b"".join(parts)
    return len(body).to_bytes(4, "big") + body


# the last encoding of each header name: most of sailor's headers repeat on every message of a step
_last_entries: dict[Any, tuple[Any, bytes]] = {}
_LAST_ENTRIES_MAX = 4096


def _entry(key: Any, value: str | int) -> bytes:
    if type(key) is str:
        name = key.encode()
        if len(name) <= 255:
            if isinstance(value, str):
                text = value.encode()
                return b"".join((bytes((len(name),)), name, b"S", len(text).to_bytes(4, "big"), text))
            if _INT32_MIN <= value <= _INT32_MAX:  # as pika: a signed 32-bit "I" where it fits, else 64-bit "l"
                return b"".join((bytes((len(name),)), name, b"I", value.to_bytes(4, "big", signed=True)))
            if _INT64_MIN <= value <= _INT64_MAX:
                return b"".join((bytes((len(name),)), name, b"l", value.to_bytes(8, "big", signed=True)))
    return _any_entry(key, value)


def _signed_byte_entry(key: Any, value: int) -> bytes:
    """A header sent as an AMQP signed byte (``b``); out of its range or with an odd key, as pika writes it."""
    if type(key) is str and -128 <= value <= 127:
        name = key.encode()
        if len(name) <= 255:
            return b"".join((bytes((len(name),)), name, b"b", value.to_bytes(1, "big", signed=True)))
    return _any_entry(key, value)


def _any_entry(key: Any, value: Any, depth: int = 0) -> bytes:
    pieces: list[bytes] = []
    pika.data.encode_short_string(pieces, key)
    pieces.append(encode_value(value, depth))
    return b"".join(pieces)


_DOUBLE_FIELD = struct.Struct(">cd")


def encode_value(value: Any, depth: int = 0) -> bytes:
    """One field value as ``pika.data.encode_value`` writes it; a float or an integer beyond 64 bits as a double.

    Tables and arrays are written here (so that what they hold is written the same way), any
    other value by pika: its errors for what AMQP cannot carry (UnsupportedAMQPFieldException).
    """
    if isinstance(value, float):
        return _DOUBLE_FIELD.pack(b"d", value)
    if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
        return _DOUBLE_FIELD.pack(b"d", float(value))  # OverflowError past a double's range
    if isinstance(value, (dict, list)):
        if depth >= MAX_DEPTH:
            raise ValueError(f"tables and arrays are nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            body = b"".join(_any_entry(key, item, depth + 1) for key, item in value.items())
            return b"F" + len(body).to_bytes(4, "big") + body
        body = b"".join(encode_value(item, depth + 1) for item in value)
        return b"A" + len(body).to_bytes(4, "big") + body
    pieces: list[bytes] = []
    pika.data.encode_value(pieces, value)
    return b"".join(pieces)


def _short_string(value: str | bytes) -> bytes:
    encoded = _short_strings.get(value)
    if encoded is None:
        pieces: list[bytes] = []
        pika.data.encode_short_string(pieces, value)
        encoded = b"".join(pieces)
        if len(_short_strings) < _LAST_ENTRIES_MAX:
            _short_strings[value] = encoded
    return encoded


_short_strings: dict[str | bytes, bytes] = {}  # content types, encodings, expirations: a handful of values


# -- decoding ------------------------------------------------------------------------------------------
_UINT16 = struct.Struct(">H")
_UINT32 = struct.Struct(">I")
_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")
_TIMESTAMP = struct.Struct(">Q")
_Props = pika.spec.BasicProperties
_SHORT_STRING, _TABLE, _OCTET, _LONG_LONG = range(4)
# the property list in wire order (AMQP 0-9-1 basic class), as BasicProperties.decode reads it
_LAYOUT = (
    (_Props.FLAG_CONTENT_TYPE, "content_type", _SHORT_STRING),
    (_Props.FLAG_CONTENT_ENCODING, "content_encoding", _SHORT_STRING),
    (_Props.FLAG_HEADERS, "headers", _TABLE),
    (_Props.FLAG_DELIVERY_MODE, "delivery_mode", _OCTET),
    (_Props.FLAG_PRIORITY, "priority", _OCTET),
    (_Props.FLAG_CORRELATION_ID, "correlation_id", _SHORT_STRING),
    (_Props.FLAG_REPLY_TO, "reply_to", _SHORT_STRING),
    (_Props.FLAG_EXPIRATION, "expiration", _SHORT_STRING),
    (_Props.FLAG_MESSAGE_ID, "message_id", _SHORT_STRING),
    (_Props.FLAG_TIMESTAMP, "timestamp", _LONG_LONG),
    (_Props.FLAG_TYPE, "type", _SHORT_STRING),
    (_Props.FLAG_USER_ID, "user_id", _SHORT_STRING),
    (_Props.FLAG_APP_ID, "app_id", _SHORT_STRING),
    (_Props.FLAG_CLUSTER_ID, "cluster_id", _SHORT_STRING),
)


class UndecodableProperties(pika.spec.BasicProperties):  # type: ignore[misc]
    """The (empty) properties of a delivery whose header frame cannot be decoded, with the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.decode_error = reason


def properties_or_reason(encoded: bytes) -> pika.spec.BasicProperties:
    """:func:`decode_properties`, or :class:`UndecodableProperties` saying why they cannot be decoded."""
    try:
        return decode_properties(encoded)
    except Exception as exc:  # whatever it is, it is this message's: never the connection's
        return UndecodableProperties(undecodable_reason(exc))


def undecodable_reason(exc: BaseException) -> str:
    """Why a header frame could not be decoded, without a preamble: ``Incoming.decode_error``."""
    if isinstance(exc, DecodeError):
        return str(exc).removeprefix(_CANNOT_DECODE)
    if isinstance(exc, RecursionError):
        return "the header tables are nested too deep (RecursionError)"
    return f"{type(exc).__name__}: {exc}"


_CANNOT_DECODE = "the message's AMQP headers cannot be decoded: "


def decode_properties(encoded: bytes) -> pika.spec.BasicProperties:
    """``BasicProperties().decode(encoded)``, doubles as floats; DecodeError naming what cannot be decoded."""
    properties = pika.spec.BasicProperties()
    try:
        (flags,) = _UINT16.unpack_from(encoded, 0)
        offset = 2
        word = flags
        while word & 1:  # continuation flag words: the basic class has no property in them
            (word,) = _UINT16.unpack_from(encoded, offset)
            offset += 2
        for flag, name, kind in _LAYOUT:
            if not flags & flag:
                continue
            value: Any
            if kind == _SHORT_STRING:
                value, offset = _decode_short_string(encoded, offset)
            elif kind == _TABLE:
                value, offset = decode_table(encoded, offset)
            elif kind == _OCTET:
                value = encoded[offset]
                offset += 1
            else:
                (value,) = _TIMESTAMP.unpack_from(encoded, offset)
                offset += 8
            setattr(properties, name, value)
        return properties
    except (struct.error, IndexError) as exc:
        raise DecodeError(
            f"the message's AMQP headers cannot be decoded: the header frame is truncated ({exc})"
        ) from None


def decode_table(encoded: bytes, offset: int, depth: int = 0) -> tuple[dict[Any, Any], int]:
    """``pika.data.decode_table``, doubles as floats; text, integers and booleans read directly."""
    result: dict[Any, Any] = {}
    (size,) = _UINT32.unpack_from(encoded, offset)
    offset += 4
    limit = offset + size
    key: Any = None
    try:
        while offset < limit:
            length = encoded[offset]
            key = _text(encoded[offset + 1 : offset + 1 + length])
            offset += 1 + length
            kind = encoded[offset]
            value: Any
            if kind == 83:  # "S": long string
                (length,) = _UINT32.unpack_from(encoded, offset + 1)
                offset += 5
                value = _text(encoded[offset : offset + length])
                offset += length
            elif kind == 73:  # "I": signed 32-bit
                (value,) = _INT32.unpack_from(encoded, offset + 1)
                offset += 5
            elif kind == 108 and not depth:  # "l": signed 64-bit (deeper down, pika's long marker, as before)
                (value,) = _INT64.unpack_from(encoded, offset + 1)
                offset += 9
            elif kind == 116:  # "t": boolean
                value = bool(encoded[offset + 1])
                offset += 2
            else:
                value, offset = decode_value(encoded, offset, depth)
            result[key] = value
    except _Undecodable as exc:
        if depth:
            raise
        raise DecodeError(f"{_CANNOT_DECODE}header {_name(key)}: {exc}") from None
    return result, offset


class _Undecodable(Exception):
    """A value that cannot be decoded (named by the top-level table)."""


_SIMPLE = {  # field type -> (struct, size): read the same way as pika reads them
    ord("b"): struct.Struct(">b"),
    ord("B"): struct.Struct(">B"),
    ord("U"): struct.Struct(">h"),
    ord("u"): struct.Struct(">H"),
    ord("s"): struct.Struct(">h"),
    ord("I"): _INT32,
    ord("i"): struct.Struct(">I"),
}
_FLOAT = struct.Struct(">f")
_DOUBLE = struct.Struct(">d")
_DECIMAL = struct.Struct(">Bi")


def decode_value(encoded: bytes, offset: int, depth: int = 0) -> tuple[Any, int]:
    """``pika.data.decode_value`` (at the type letter), but ``d`` and ``f`` as floats and nesting bounded."""
    kind = encoded[offset]
    offset += 1
    simple = _SIMPLE.get(kind)
    if simple is not None:
        return simple.unpack_from(encoded, offset)[0], offset + simple.size
    if kind == 116:  # t
        return bool(encoded[offset]), offset + 1
    if kind == 108 or kind == 76:  # l, L: pika's long marker (written back as "l")
        return pika.compat.long(_INT64.unpack_from(encoded, offset)[0]), offset + 8
    if kind == 100:  # d
        return _DOUBLE.unpack_from(encoded, offset)[0], offset + 8
    if kind == 102:  # f
        return _FLOAT.unpack_from(encoded, offset)[0], offset + 4
    if kind == 68:  # D
        decimals, raw = _DECIMAL.unpack_from(encoded, offset)
        return decimal.Decimal(raw) * (decimal.Decimal(10) ** -decimals), offset + 5
    if kind == 83 or kind == 120:  # S, x
        (length,) = _UINT32.unpack_from(encoded, offset)
        offset += 4
        raw = encoded[offset : offset + length]
        return (_text(raw) if kind == 83 else raw), offset + length
    if kind == 84:  # T
        (seconds,) = _TIMESTAMP.unpack_from(encoded, offset)
        try:
            return datetime.datetime.fromtimestamp(seconds, datetime.UTC), offset + 8
        except (ValueError, OverflowError, OSError) as exc:
            raise _Undecodable(f"the timestamp {seconds} is out of the range of dates ({exc})") from None
    if kind == 70 or kind == 65:  # F, A
        if depth >= MAX_DEPTH:
            raise _Undecodable(f"tables and arrays are nested deeper than {MAX_DEPTH} levels")
        if kind == 70:
            return decode_table(encoded, offset, depth + 1)
        (length,) = _UINT32.unpack_from(encoded, offset)
        offset += 4
        end = offset + length
        items = []
        while offset < end:
            item, offset = decode_value(encoded, offset, depth + 1)
            items.append(item)
        return items, offset
    if kind == 86:  # V
        return None, offset
    raise _Undecodable(f"{chr(kind)!r} is not an AMQP field type")


def _name(key: Any) -> str:
    shown = repr(key)
    return shown if len(shown) <= 80 else f"{shown[:60]}... ({len(key)} characters)"


def _decode_short_string(encoded: bytes, offset: int) -> tuple[Any, int]:
    length = encoded[offset]
    return _text(encoded[offset + 1 : offset + 1 + length]), offset + 1 + length


def _text(raw: bytes) -> str | bytes:
    """UTF-8 text, or the bytes as they are when they are not UTF-8 (as pika decodes)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw
