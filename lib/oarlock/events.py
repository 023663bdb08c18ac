"""The events a function may emit, and the emitter it sees as ``ctx.emit``.

The event set is PROTOCOL.md §5. Payloads are normalised here so that every
transport (local JSONL, RabbitMQ) sees the same shapes:

- ``data`` / ``rebound``: a :class:`~oarlock.message.Message`. A function may
  emit a Message, a message-shaped dict (a ``body`` key and only message fields:
  ``{"body": …, "headers": …, "id": …}``), or any other JSON value, which
  becomes the body of a new message.
- ``error``: a dict ``{"name", "message", "stack"}``; an exception or a string
  is converted.
- ``snapshot`` / ``updateSnapshot``: a JSON object.
- ``updateKeys``: a JSON object (the credential update, see oarlock.credentials).
- ``httpReply``: ``{"statusCode", "body", "headers"}``.
- ``end``: no payload.
"""

from __future__ import annotations

import enum
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from oarlock.errors import EmitError, OarlockError
from oarlock.message import Message


class EventName(enum.StrEnum):
    DATA = "data"
    ERROR = "error"
    REBOUND = "rebound"
    SNAPSHOT = "snapshot"
    UPDATE_SNAPSHOT = "updateSnapshot"
    UPDATE_KEYS = "updateKeys"
    HTTP_REPLY = "httpReply"
    END = "end"


EVENT_NAMES: frozenset[str] = frozenset(e.value for e in EventName)


@dataclass(frozen=True)
class Event:
    """One emitted event with its normalised payload."""

    name: EventName
    payload: Any = None

    def payload_json(self) -> Any:
        """The payload as plain JSON values (Messages become dicts)."""
        if isinstance(self.payload, Message):
            return self.payload.to_dict()
        return self.payload


EventSink = Callable[[Event], None]


def error_payload(exc: BaseException) -> dict[str, str]:
    """The ``{name, message, stack}`` of an error event for an exception (not yet redacted)."""
    name = exc.event_name if isinstance(exc, OarlockError) else type(exc).__name__
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"name": name, "message": str(exc), "stack": stack}


def normalise(name: str, payload: Any) -> Event:
    """Check an event name and bring its payload into the shape the transports expect."""
    if name not in EVENT_NAMES:
        raise EmitError(f"unknown event {name!r}: a function may emit one of {', '.join(sorted(EVENT_NAMES))}")
    event_name = EventName(name)
    if event_name in (EventName.DATA, EventName.REBOUND):
        return Event(event_name, _as_message(payload))
    if event_name is EventName.ERROR:
        return Event(event_name, _as_error(payload))
    if event_name in (EventName.SNAPSHOT, EventName.UPDATE_SNAPSHOT, EventName.UPDATE_KEYS):
        if not isinstance(payload, dict):
            raise EmitError(f"{name} needs a JSON object as payload, got {type(payload).__name__}")
        return Event(event_name, payload)
    if event_name is EventName.HTTP_REPLY:
        if not isinstance(payload, dict):
            raise EmitError(f"httpReply needs an object {{statusCode, body, headers}}, got {type(payload).__name__}")
        return Event(event_name, {"statusCode": payload.get("statusCode", 200), **payload})
    return Event(event_name, None)


MESSAGE_FIELDS = frozenset({"id", "body", "headers", "attachments", "passthrough", "metadata"})


def _as_message(payload: Any) -> Message:
    if isinstance(payload, Message):
        return payload
    if isinstance(payload, dict) and "body" in payload and payload.keys() <= MESSAGE_FIELDS:
        return Message.from_dict(payload)
    return Message(body=payload if payload is not None else {})


def _as_error(payload: Any) -> dict[str, str]:
    if isinstance(payload, BaseException):
        return error_payload(payload)
    if isinstance(payload, dict):
        return {
            "name": str(payload.get("name", "Error")),
            "message": str(payload.get("message", "")),
            "stack": str(payload.get("stack", "")),
        }
    return {"name": "Error", "message": str(payload), "stack": ""}
