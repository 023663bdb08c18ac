"""Trigger `poll`: GET a list endpoint and emit each item newer than the cursor in the snapshot.

cfg: path (default /api/items), cursorField (default id), cursorParam (default since).
The answer may be a JSON list or an object with an "items" list. After emitting the items,
the newest cursor is saved with updateSnapshot, so the next poll starts after it.
"""

from __future__ import annotations

from typing import Any


class PollFailed(Exception):
    """The list endpoint answered with a non-2xx status or an unexpected body."""


def process(msg: Any, cfg: dict[str, Any], snapshot: dict[str, Any], ctx: Any) -> None:
    base = str(cfg.get("baseUrl") or "").rstrip("/")
    path = str(cfg.get("path") or "/api/items")
    field = str(cfg.get("cursorField") or "id")
    param = str(cfg.get("cursorParam") or "since")
    url = f"{base}/{path.lstrip('/')}"
    cursor = snapshot.get("cursor")
    params = {param: cursor} if cursor is not None else None
    response = ctx.http.get(url, params=params, timeout=30)
    if not 200 <= response.status_code < 300:
        raise PollFailed(f"{response.status_code} from GET {url}: {response.text[:300]}")
    try:
        payload = response.json()
    except ValueError:
        raise PollFailed(f"GET {url} did not answer JSON") from None
    items = payload.get("items") if isinstance(payload, dict) else payload
    if not isinstance(items, list):
        raise PollFailed(f"GET {url} answered neither a list nor an object with an 'items' list")
    newest = cursor
    for item in items:
        value = item.get(field) if isinstance(item, dict) else None
        if cursor is not None and value is not None and _before_or_at(value, cursor):
            continue
        ctx.emit("data", {"body": item})
        if value is not None and (newest is None or not _before_or_at(value, newest)):
            newest = value
    if newest != cursor:
        ctx.emit("updateSnapshot", {"cursor": newest})


def _before_or_at(value: Any, cursor: Any) -> bool:
    try:
        return bool(value <= cursor)
    except TypeError:
        return str(value) <= str(cursor)
