"""Event -> what goes on the wire: routing key, body, headers, expiration (docs/protocol.md §3, §4, §6). No I/O.

:class:`OutgoingEncoder` turns one event a function emitted for one input into the
:class:`~oarlock.amqp.types.Outgoing` messages sailor publishes for it:

- ``data``: the message encrypted with the step's protocol version, to ``x-eio-routing-key``
  (popped from the message's headers) or the data routing key; with a passthrough step the
  step's output (without its passthrough) is kept under ``passthrough[STEP_ID]``, over the
  input's passthrough (with ``NO_SELF_PASSTRHOUGH``: the input under the sending step's id);
- ``error``: ``{"error": <encrypted error>, "errorInput": …}`` to the error routing key, and
  the encrypted error to ``reply_to`` (``x-eio-error-response``) unless error replies are off;
- ``rebound``: the original body with growing expiration (``2^(n-1) * initial``), or past the
  rebound limit an error;
- ``snapshot`` / ``updateSnapshot``: the JSON payload in clear, with ``snapshotEvent``;
- ``updateKeys``: encrypted, to the updateKeys routing key;
- ``httpReply``: encrypted (protocol 1) to ``reply_to``; without one an EncodeError.

Size limits raise :class:`~oarlock.errors.EncodeError`; the worker turns that into an error
event. So does a routing key (the ``x-eio-routing-key`` header, ``reply_to``, a configured one) or
exchange over AMQP's 255 bytes of UTF-8, which the broker could never take; an error whose
``reply_to`` is too long still goes to the error routing key, without the reply (logged). The
clock can be injected (and the per-input message id is the view's), so every rule is unit-tested
as it is. Where oarlock differs from sailor-nodejs 2.7.8 on the wire, docs/protocol.md
says so and why.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from oarlock.amqp.types import Outgoing, SignedByte, now_ms, short_string_problem
from oarlock.errors import ConfigurationError, DecodeError, EncodeError
from oarlock.protocol.crypto import MessageCipher, dumps, encode_text
from oarlock.protocol.events import Event, EventName
from oarlock.protocol.headers import routing_key_override
from oarlock.protocol.message import Message, new_id
from oarlock.protocol.settings import Settings
from oarlock.redact import redact, redact_text

log = logging.getLogger("oarlock.worker")

REBOUND_LIMIT_ERROR = {"name": "Error", "message": "Rebound limit exceeded", "stack": ""}


@dataclass(slots=True)
class InputView:
    """What encoding needs of the input an event belongs to."""

    incoming: Mapping[str, Any]  # the input's AMQP headers
    head: dict[str, Any]  # the outgoing headers before messageId (OutgoingHeaders.parts)
    tail: dict[str, Any]  # and after it
    body: bytes  # the input's body as delivered
    content: Any = None  # the decrypted body, None when it could not be decoded
    message: Message | None = None
    content_type: str | None = None
    content_encoding: str | None = None
    delivery_mode: int | None = None
    protocol_version: int = 1  # the input's, once read (protocol_version_of)
    message_id: str | None = None  # the id of every outgoing message but data (as sailor); made when first needed

    def outgoing_id(self) -> str:
        if self.message_id is None:
            self.message_id = new_id()
        return self.message_id


def protocol_version_of(incoming: Mapping[str, Any]) -> int:
    """The ``protocolVersion`` header as an integer (1 when absent); DecodeError naming a bad value."""
    value = incoming.get("protocolVersion")
    if type(value) is int:
        return value or 1
    if value is None or value == "" or value == b"":
        return 1
    if type(value) is float and value.is_integer():  # an AMQP double, as a JS number may be sent
        return int(value) or 1
    if isinstance(value, bool) or not isinstance(value, (int, str, bytes)):
        raise DecodeError(f"the protocolVersion header must be an integer, got a {type(value).__name__}")
    try:
        version = int(value)
    except ValueError:
        raise DecodeError(f"the protocolVersion header must be an integer, got {str(value)[:40]!r}") from None
    return version or 1


class Encoded(NamedTuple):
    messages: list[Outgoing]
    is_error: bool  # what was published is an error of the input (it is rejected once confirmed)


class OutgoingEncoder:
    def __init__(
        self,
        settings: Settings,
        cipher: MessageCipher,
        *,
        is_passthrough: bool = False,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.settings = settings
        self.cipher = cipher
        self.is_passthrough = is_passthrough
        self._clock_ms = clock_ms
        self._version = SignedByte(settings.protocol_version)
        for variable, value in (  # checked once: a key AMQP cannot carry would fail every message
            ("ELASTICIO_PUBLISH_MESSAGES_TO", settings.publish_messages_to),
            ("ELASTICIO_DATA_ROUTING_KEY", settings.data_routing_key),
            ("ELASTICIO_ERROR_ROUTING_KEY", settings.error_routing_key),
            ("ELASTICIO_REBOUND_ROUTING_KEY", settings.rebound_routing_key),
            ("ELASTICIO_SNAPSHOT_ROUTING_KEY", settings.snapshot_routing_key),
            ("ELASTICIO_UPDATE_KEYS_ROUTING_KEY", settings.update_keys_routing_key),
            ("ELASTICIO_CREDENTIAL_INVALID_ROUTING_KEY", settings.credential_invalid_routing_key),
        ):
            problem = short_string_problem(variable, value)
            if problem is not None:
                raise ConfigurationError(problem)

    def encode(self, view: InputView, event: Event) -> Encoded:
        """The messages one event becomes (none for ``end``); EncodeError when it cannot be published."""
        name = event.name
        if name is EventName.DATA:
            return Encoded([self.data(view, event.payload)], False)
        if name is EventName.ERROR:
            return Encoded(self.error(view, event.payload), True)
        if name is EventName.REBOUND:
            rebound = self.rebound(view, event.payload)
            if rebound is None:
                return Encoded(self.error(view, REBOUND_LIMIT_ERROR), True)
            return Encoded([rebound], False)
        if name in (EventName.SNAPSHOT, EventName.UPDATE_SNAPSHOT):
            return Encoded([self.snapshot(view, event)], False)
        if name is EventName.UPDATE_KEYS:
            return Encoded([self.update_keys(view, event.payload)], False)
        if name is EventName.HTTP_REPLY:
            return Encoded([self.http_reply(view, event.payload)], False)
        if name is EventName.CREDENTIAL_INVALID:  # encrypted like updateKeys, to the keys service
            body = self.cipher.encrypt(event.payload, self.settings.protocol_version)
            headers = self.headers(view, version=True)
            key, what = self.settings.credential_invalid_routing_key, "ELASTICIO_CREDENTIAL_INVALID_ROUTING_KEY"
            return Encoded([self._to(key, body, headers, what)], False)
        return Encoded([], False)

    # -- one per event ------------------------------------------------------------------------------
    def data(self, view: InputView, emitted: Message) -> Outgoing:
        # a shallow copy with its own headers: popping the routing-key header must not touch the function's object
        message = Message(
            emitted.body, dict(emitted.headers), emitted.attachments, emitted.id, emitted.passthrough, emitted.extra
        )
        override = routing_key_override(message.headers)
        routing_key = override or self.settings.data_routing_key
        what = "routing key of the x-eio-routing-key header" if override else "ELASTICIO_DATA_ROUTING_KEY"
        _check_key(routing_key, what)  # before the encryption
        wire = wire_message(message)
        if self.is_passthrough:
            # as sailor 2.7.8: the step's output without its passthrough, over the input's passthrough
            incoming = (view.message.passthrough if view.message is not None else None) or {}
            if self.settings.no_self_passthrough:
                # sailor: the step does not add itself; the input is kept under the step that sent it
                passthrough = dict(incoming)
                sender = view.incoming.get("stepId")
                if sender and view.message is not None:
                    sent = wire_message(view.message)
                    passthrough[str(sender)] = {k: v for k, v in sent.items() if k != "passthrough"}
                wire["passthrough"] = passthrough
            else:
                own = {k: v for k, v in wire.items() if k != "passthrough"}
                wire["passthrough"] = {**incoming, self.settings.step_id: own}
        body = self.cipher.encrypt(wire, self.settings.protocol_version)
        self._check_size(body, "data")
        return self._to(routing_key, body, self.headers(view, message_id=message.id, end=True, version=True), what)

    def error(self, view: InputView, payload: Any) -> list[Outgoing]:
        error = redact(payload)
        encrypted_error = self.cipher.encrypt(error, 1).decode()
        body: dict[str, Any] = {"error": encrypted_error}
        # as sailor: the original body as it came for protocol 1 (base64 text), re-encrypted as base64 for 2
        if view.protocol_version >= 2 and view.content is not None:
            body["errorInput"] = self.cipher.encrypt(view.content, 1).decode()
        elif view.body:
            body["errorInput"] = _as_text(view.body)
        headers = self.headers(view, end=True)
        out = [self._to(self.settings.error_routing_key, dumps(body).encode(), headers, "ELASTICIO_ERROR_ROUTING_KEY")]
        reply_to = view.incoming.get("reply_to")
        if reply_to and not self.settings.no_error_replies:
            problem = short_string_problem("reply_to header", str(reply_to))
            if problem is None:
                reply_headers = {**self.headers(view, end=True), "x-eio-error-response": True}
                out.append(self._to(str(reply_to), encrypted_error.encode(), reply_headers, "reply_to header"))
            else:
                log.warning(
                    "the error of message %s is not sent to its reply_to: %s", view.incoming.get("messageId"), problem
                )
        return out

    def rebound(self, view: InputView, payload: Any) -> Outgoing | None:
        """The input again, delayed; None once the rebound limit is passed."""
        iteration = _int_header(view.incoming.get("reboundIteration")) + 1
        if iteration > self.settings.rebound_limit:
            return None
        expiration = str(2 ** (iteration - 1) * self.settings.rebound_initial_expiration)
        _check_key(self.settings.rebound_routing_key, "ELASTICIO_REBOUND_ROUTING_KEY")
        _check_key(self.settings.publish_messages_to, "ELASTICIO_PUBLISH_MESSAGES_TO", "exchange")
        # this step's outgoing header set (parentMessageId = this input), the body the original bytes, so its
        # protocolVersion is the incoming one (sailor re-publishes the input's own headers: docs/protocol.md)
        headers = {
            **self.headers(view, version=True, value=view.protocol_version),
            "reboundIteration": iteration,
            "reboundReason": rebound_reason(payload),
        }
        return Outgoing(
            self.settings.publish_messages_to,
            self.settings.rebound_routing_key,
            view.body,
            headers,
            persistent=(view.delivery_mode or (2 if self.settings.persistent_messages else 1)) == 2,
            expiration=expiration,
            content_type=view.content_type or "application/json",
            content_encoding=view.content_encoding or "utf8",
        )

    def snapshot(self, view: InputView, event: Event) -> Outgoing:
        headers = {**self.headers(view), "snapshotEvent": event.name.value}
        body = encode_text(dumps(event.payload))
        return self._to(self.settings.snapshot_routing_key, body, headers, "ELASTICIO_SNAPSHOT_ROUTING_KEY")

    def update_keys(self, view: InputView, payload: dict[str, Any]) -> Outgoing:
        body = self.cipher.encrypt(payload, self.settings.protocol_version)
        headers = self.headers(view, version=True)
        return self._to(self.settings.update_keys_routing_key, body, headers, "ELASTICIO_UPDATE_KEYS_ROUTING_KEY")

    def http_reply(self, view: InputView, payload: dict[str, Any]) -> Outgoing:
        reply_to = view.incoming.get("reply_to")
        if not reply_to:
            raise EncodeError("httpReply needs the incoming message to carry a reply_to header")
        _check_key(str(reply_to), "reply_to header")
        body = self.cipher.encrypt(payload, 1)
        self._check_size(body, "httpReply")
        return self._to(str(reply_to), body, self.headers(view, version=True, value=1), "reply_to header")

    # -- helpers ------------------------------------------------------------------------------------
    def headers(
        self,
        view: InputView,
        *,
        message_id: str | None = None,
        end: bool = False,
        version: bool = False,
        value: int | None = None,
    ) -> dict[str, Any]:
        """The input's headers with ``messageId`` in sailor's place; ``end`` and ``protocolVersion`` when asked.

        Like sailor, every message of one input but data (which carries its body's id) has the same
        ``messageId``; error and snapshot messages carry no ``protocolVersion``; it is a signed byte.
        """
        headers = {**view.head, "messageId": message_id or view.outgoing_id(), **view.tail}
        if end:
            headers["end"] = self._clock_ms()
        if version:
            headers["protocolVersion"] = self._version if value is None else SignedByte(value)
        return headers

    def _to(self, routing_key: str, body: bytes, headers: dict[str, Any], what: str) -> Outgoing:
        """``what``: where the routing key comes from, for the EncodeError of one AMQP cannot carry."""
        if len(routing_key) > _ALWAYS_SHORT and not what.startswith("ELASTICIO_"):  # configured ones: checked at start
            _check_key(routing_key, what)
        return Outgoing(
            self.settings.publish_messages_to, routing_key, body, headers, persistent=self.settings.persistent_messages
        )

    def _check_size(self, body: bytes, what: str) -> None:
        limit = self.settings.outgoing_message_size_limit
        if len(body) > limit:
            raise EncodeError(
                f"outgoing {what} message is {len(body)} bytes, over the limit of {limit} bytes "
                "(ELASTICIO_OUTGOING_MESSAGE_SIZE_LIMIT)"
            )


#: a text of at most this many characters is at most 252 bytes of UTF-8: always a valid AMQP short string
_ALWAYS_SHORT = 63


def _check_key(value: str, what: str, kind: str = "routing key") -> None:
    """EncodeError when ``value`` cannot be an AMQP routing key (or exchange); ``what``: where it came from."""
    problem = short_string_problem(
        what if what.startswith(kind) or what.endswith("header") else f"{kind} ({what})", value
    )
    if problem is not None:
        shown = value if len(value) <= 40 else f"{value[:40]}..."
        raise EncodeError(f"{problem}: {shown!r}")


def _int_header(value: Any) -> int:
    """A numeric header such as ``reboundIteration``, as sailor reads it (``typeof value === 'number'``).

    An integer or a finite double (truncated); 0 when absent, negative or of any other type (a bool,
    text, bytes, a decimal).
    """
    if isinstance(value, bool):
        return 0
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return max(0, int(value))
    return 0


def wire_message(message: Message) -> dict[str, Any]:
    """A data message as sailor writes it: ``{id, attachments, body, headers, metadata}``, then passthrough and extras."""
    extra = message.extra
    out: dict[str, Any] = {
        "id": message.id,
        "attachments": message.attachments,
        "body": message.body,
        "headers": message.headers,
        "metadata": (extra.get("metadata") if extra else None) or {},
    }
    if message.passthrough is not None:
        out["passthrough"] = message.passthrough
    if extra:
        out.update((key, value) for key, value in extra.items() if key != "metadata")
    return out


def rebound_reason(payload: Any) -> str:
    if isinstance(payload, Message):
        body = payload.body
        if isinstance(body, dict) and body.get("message"):
            return redact_text(str(body["message"]))
        if isinstance(body, str):
            return redact_text(body)
    return "rebound"


def _as_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(body).decode()
