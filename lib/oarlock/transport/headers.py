"""Outgoing AMQP headers (PROTOCOL.md §3), the same set sailor sends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from oarlock.message import new_id
from oarlock.settings import Settings

ROUTING_KEY_HEADER = "x-eio-routing-key"
META_PREFIX = "x-eio-meta-"


def thread_id(incoming: Mapping[str, Any]) -> str:
    """The incoming threadId, else the incoming x-eio-meta-trace-id, else a new uuid4."""
    for name in ("threadId", "x-eio-meta-trace-id"):
        value = incoming.get(name)
        if value:
            return str(value)
    for name, value in incoming.items():
        if value and str(name).lower() == "x-eio-meta-trace-id":
            return str(value)
    return new_id()


def base_headers(settings: Settings, incoming: Mapping[str, Any], *, start_ms: int) -> dict[str, Any]:
    """The headers every outgoing message of one input carries."""
    headers: dict[str, Any] = {
        "execId": settings.exec_id,
        "taskId": settings.flow_id,
        "workspaceId": settings.workspace_id,
        "containerId": settings.container_id,
        "userId": settings.user_id,
        "stepId": settings.step_id,
        "compId": settings.comp_id,
        "function": settings.function,
        "start": start_ms,
        "protocolVersion": settings.protocol_version,
        "threadId": thread_id(incoming),
    }
    if incoming.get("messageId"):
        headers["parentMessageId"] = incoming["messageId"]
    for name, value in incoming.items():
        if str(name).lower().startswith(META_PREFIX):
            headers[str(name).lower()] = value
    if incoming.get("reply_to"):
        headers["reply_to"] = incoming["reply_to"]
    headers.update(settings.additional_headers)
    return headers


def routing_key_override(message_headers: dict[str, Any]) -> str | None:
    """Pop an ``x-eio-routing-key`` header (any case) from an emitted message's headers."""
    for name in list(message_headers):
        if str(name).lower() == ROUTING_KEY_HEADER:
            value = message_headers.pop(name)
            return str(value) if value else None
    return None
