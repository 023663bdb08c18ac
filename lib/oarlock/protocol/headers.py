"""Outgoing AMQP headers (PROTOCOL.md §3), the same set sailor sends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from oarlock.protocol.message import new_id
from oarlock.protocol.settings import Settings

ROUTING_KEY_HEADER = "x-eio-routing-key"
META_PREFIX = "x-eio-meta-"
TRACE_ID_HEADER = "x-eio-meta-trace-id"


class OutgoingHeaders:
    """The headers every outgoing message of one input carries; the step's own part worked out once."""

    def __init__(self, settings: Settings) -> None:
        self._step: dict[str, Any] = {
            "execId": settings.exec_id,
            "taskId": settings.flow_id,
            "workspaceId": settings.workspace_id,
            "containerId": settings.container_id,
            "userId": settings.user_id,
            "stepId": settings.step_id,
            "compId": settings.comp_id,
            "function": settings.function,
        }
        self._protocol_version = settings.protocol_version
        self._additional = dict(settings.additional_headers)

    def for_input(self, incoming: Mapping[str, Any], *, start_ms: int) -> dict[str, Any]:
        headers = dict(self._step)
        headers["start"] = start_ms
        headers["protocolVersion"] = self._protocol_version
        meta: list[tuple[str, Any]] = []
        trace = None
        for name, value in incoming.items():  # one pass: meta headers (any case) and the trace id among them
            lowered = name.lower() if type(name) is str else str(name).lower()
            if lowered.startswith(META_PREFIX):
                meta.append((lowered, value))
                if trace is None and value and lowered == TRACE_ID_HEADER:
                    trace = value
        thread = incoming.get("threadId") or incoming.get(TRACE_ID_HEADER) or trace
        headers["threadId"] = str(thread) if thread else new_id()
        if incoming.get("messageId"):
            headers["parentMessageId"] = incoming["messageId"]
        for name, value in meta:
            headers[name] = value
        if incoming.get("reply_to"):
            headers["reply_to"] = incoming["reply_to"]
        if self._additional:
            headers.update(self._additional)
        return headers


def routing_key_override(message_headers: dict[str, Any]) -> str | None:
    """Pop an ``x-eio-routing-key`` header (any case) from an emitted message's headers."""
    for name in list(message_headers):
        if str(name).lower() == ROUTING_KEY_HEADER:
            value = message_headers.pop(name)
            return str(value) if value else None
    return None
