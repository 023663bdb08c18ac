"""The events a function may emit, and the emitter it sees as ``ctx.emit``.

The event set is docs/protocol.md §6. Payloads are normalised here so that every
transport (local JSONL, RabbitMQ) sees the same shapes:

- ``data`` / ``rebound``: a :class:`~oarlock.protocol.message.Message`. A function may
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
import threading
import traceback
from typing import Any, NamedTuple, Protocol

from oarlock.errors import EmitError, OarlockError
from oarlock.protocol.message import Message


class EventName(enum.StrEnum):
    DATA = "data"
    ERROR = "error"
    REBOUND = "rebound"
    SNAPSHOT = "snapshot"
    UPDATE_SNAPSHOT = "updateSnapshot"
    UPDATE_KEYS = "updateKeys"
    HTTP_REPLY = "httpReply"
    END = "end"
    #: oarlock's own: the refresh engine's report of a dead credential to the keys service (never a function's)
    CREDENTIAL_INVALID = "credentialInvalid"


#: what a function may emit
EVENT_NAMES: frozenset[str] = frozenset(e.value for e in EventName) - {EventName.CREDENTIAL_INVALID.value}
_EMITTABLE: dict[str, EventName] = {name: EventName(name) for name in EVENT_NAMES}


class Event(NamedTuple):
    """One emitted event with its normalised payload (immutable; a tuple: one is built per message).

    ``persisted`` is set on an updateKeys the refresh engine already wrote to its keys store (inside
    the cross-process lock): the store is the one owner of that write, a sink only forwards it.
    """

    name: EventName
    payload: Any = None
    persisted: bool = False

    def payload_json(self) -> Any:
        """The payload as plain JSON values (Messages become dicts)."""
        if isinstance(self.payload, Message):
            return self.payload.to_dict()
        return self.payload


class EventSink(Protocol):
    """Where emitted events go: the one path from a function (or the refresh engine) to a transport.

    The worker hands one sink per input to the executor, the executor wraps it for the call
    (normalising, redacting, collecting) and gives that to the context, and the credential
    manager emits its updateKeys into the same object. ``emit`` may be called from any thread.
    """

    def emit(self, event: Event) -> None: ...


class EventList:
    """A sink that keeps what it is given, in order (tests, one-shot tools)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def payloads(self, name: EventName) -> list[Any]:
        with self._lock:
            return [event.payload for event in self.events if event.name is name]


def error_payload(exc: BaseException) -> dict[str, str]:
    """The ``{name, message, stack}`` of an error event for an exception (not yet redacted).

    Total: an exception whose ``str()`` (or traceback) cannot be built still gives an error event.
    """
    name = exc.event_name if isinstance(exc, OarlockError) else type(exc).__name__
    try:
        message = str(exc)
    except Exception:
        message = f"<{type(exc).__name__}: its message could not be read>"
    try:
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        stack = ""
    return {"name": name, "message": message, "stack": stack}


def normalise(name: str, payload: Any) -> Event:
    """Check an event name and bring its payload into the shape the transports expect."""
    event_name = _EMITTABLE.get(name) if isinstance(name, str) else None
    if event_name is None:
        raise EmitError(f"unknown event {name!r}: a function may emit one of {', '.join(sorted(EVENT_NAMES))}")
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
    if isinstance(payload, BaseException):  # sailor's idiom emit("rebound", err): its message is the reason
        return Message(body={"message": str(payload)})
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
