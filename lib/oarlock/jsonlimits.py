"""JSON from outside (a message body, an input line) parsed within bounds: nesting depth is limited.

Deeply nested JSON makes every recursive step after parsing (copying, redaction, schema
validation) raise RecursionError, and at a few thousand levels the parser itself does: a poison
message that is never settled. :func:`loads` turns both into a :class:`~oarlock.errors.DecodeError`
naming the limit (``MAX_DEPTH`` levels of arrays and objects).
"""

from __future__ import annotations

import json
from typing import Any

from oarlock.errors import DecodeError

MAX_DEPTH = 200


def loads(text: str | bytes, *, what: str, invalid: str | None = None) -> Any:
    """Parse ``text``; DecodeError when it is not JSON (``invalid`` prefixes the reason) or nested too deep."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise DecodeError(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise DecodeError(f"{invalid or what + ' is not valid JSON'}: {exc.args[0]}") from None
    check_depth(value, what=what, text=text)
    return value


def check_depth(value: Any, *, what: str, text: str | bytes | None = None, limit: int = MAX_DEPTH) -> None:
    """DecodeError if arrays/objects nest deeper than ``limit`` (no recursion; a cheap pre-check on the text)."""
    if text is not None:
        opened = text.count("[") + text.count("{") if isinstance(text, str) else text.count(b"[") + text.count(b"{")
        if opened <= limit:
            return
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            raise DecodeError(f"{what} is nested deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
