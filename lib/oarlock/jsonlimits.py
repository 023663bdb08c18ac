"""JSON from outside (a message body, an input line) parsed within bounds: nesting depth is limited.

Deeply nested JSON makes every recursive step after parsing (copying, redaction, schema
validation) raise RecursionError, and at a few thousand levels the parser itself does: a poison
message that is never settled. :func:`loads` turns both into a :class:`~oarlock.errors.DecodeError`
naming the limit (``MAX_DEPTH`` levels of arrays and objects).

It reads JSON as JavaScript's ``JSON.parse`` does (sailor-nodejs on the other side): the ``NaN``, ``Infinity``
and ``-Infinity`` literals Python's json module accepts are a DecodeError ("… is not valid JSON: NaN is not JSON").
"""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Callable
from typing import Any

from oarlock.errors import DecodeError

MAX_DEPTH = 200


def loads(text: str | bytes, *, what: str, invalid: str | None = None) -> Any:
    """Parse ``text``; DecodeError when it is not JSON (``invalid`` prefixes the reason) or nested too deep."""
    try:
        value = _parse(text)
    except RecursionError:
        raise DecodeError(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise DecodeError(f"{invalid or what + ' is not valid JSON'}: {exc.args[0]}") from None
    check_depth(value, what=what, text=text)
    return value


def _no_constant(name: str) -> Any:
    """The decoder's parse_constant: JSON.parse refuses the literals json.loads turns into non-finite floats."""
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
# the scanner json.loads runs (JSONDecoder builds its scan_once the same way), without its wrappers: two regex
# scans for whitespace and a BOM check (typeshed types make_scanner's context as itself, not the decoder)
_scan_once: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(_DECODER)  # type: ignore[arg-type]


def _parse(text: str | bytes) -> Any:
    """``json.loads(text)`` without the non-finite literals, the same value or error: one scan when the text is one
    JSON value from its first to its last character (every message a worker receives); json.loads for the rest."""
    if type(text) is str:
        try:
            value, end = _scan_once(text, 0)
        except StopIteration:
            pass  # leading whitespace, a BOM or no value: json.loads says which
        else:
            if end == len(text):
                return value
    return json.loads(text, parse_constant=_no_constant)


def check_depth(value: Any, *, what: str, text: str | bytes | None = None, limit: int = MAX_DEPTH) -> None:
    """DecodeError if arrays/objects nest deeper than ``limit`` (no recursion; a cheap pre-check on the text)."""
    if text is not None:
        # `in` finds a character with memchr, far faster than count() walks the text: count only what is there
        if isinstance(text, str):
            opened = (text.count("[") if "[" in text else 0) + (text.count("{") if "{" in text else 0)
        else:
            opened = (text.count(b"[") if b"[" in text else 0) + (text.count(b"{") if b"{" in text else 0)
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
