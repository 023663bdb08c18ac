"""Outgoing AMQP headers (docs/protocol.md §4), the same set sailor sends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from oarlock.protocol.message import new_id
from oarlock.protocol.settings import Settings

ROUTING_KEY_HEADER = "x-eio-routing-key"
META_PREFIX = "x-eio-meta-"
TRACE_ID_HEADER = "x-eio-meta-trace-id"


class OutgoingHeaders:
    """The headers every outgoing message of one input carries, in sailor-nodejs 2.7.8's order.

    On the wire (``../shared/sailor-captures``): ``stepId``, the input's ``x-eio-meta-*`` headers
    (lower-cased), ``threadId``, ``messageId``, ``parentMessageId``, ``reply_to``, the
    ADDITIONAL_VARS_FOR_HEADERS values, ``execId``, ``taskId``, ``workspaceId``, ``containerId``,
    ``userId``, ``compId``, ``function``, ``start``, then per message ``end`` and ``protocolVersion``.
    :meth:`parts` gives the part before ``messageId`` and the part after it, so that an outgoing
    message's headers are two dict merges; the step's own part is worked out once.
    """

    def __init__(self, settings: Settings) -> None:
        self._step_id = settings.step_id
        self._step: dict[str, Any] = {
            "execId": settings.exec_id,
            "taskId": settings.flow_id,
            "workspaceId": settings.workspace_id,
            "containerId": settings.container_id,
            "userId": settings.user_id,
            "compId": settings.comp_id,
            "function": settings.function,
        }
        self._additional = dict(settings.additional_headers)

    def parts(self, incoming: Mapping[str, Any], *, start_ms: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the headers before ``messageId``, the headers after it) for the outgoing messages of one input."""
        head: dict[str, Any] = {"stepId": self._step_id}
        trace = None
        for name, value in incoming.items():  # one pass: meta headers (any case) and the trace id among them
            lowered = name.lower() if type(name) is str else str(name).lower()
            if lowered.startswith(META_PREFIX):
                head[lowered] = value
                if trace is None and value and lowered == TRACE_ID_HEADER:
                    trace = value
        thread = incoming.get("threadId") or incoming.get(TRACE_ID_HEADER) or trace
        head["threadId"] = str(thread) if thread else new_id()
        tail: dict[str, Any] = {}
        if incoming.get("messageId"):
            tail["parentMessageId"] = incoming["messageId"]
        if incoming.get("reply_to"):
            tail["reply_to"] = incoming["reply_to"]
        if self._additional:
            tail.update(self._additional)
        tail.update(self._step)
        tail["start"] = start_ms
        return head, tail

    def for_input(self, incoming: Mapping[str, Any], *, start_ms: int) -> dict[str, Any]:
        """Every header of the input's outgoing messages but ``messageId``, ``end`` and ``protocolVersion``."""
        head, tail = self.parts(incoming, start_ms=start_ms)
        return {**head, **tail}


def routing_key_override(message_headers: dict[str, Any]) -> str | None:
    """Pop an ``x-eio-routing-key`` header (any case) from an emitted message's headers."""
    for name in list(message_headers):
        if str(name).lower() == ROUTING_KEY_HEADER:
            value = message_headers.pop(name)
            return str(value) if value else None
    return None
