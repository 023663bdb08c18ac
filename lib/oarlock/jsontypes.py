"""Names of JSON types for error messages ("got an array", "must be of type string, got number")."""

from __future__ import annotations

from typing import Any


def json_type(value: Any, *, article: bool = False) -> str:
    """The JSON type of a decoded value: null, boolean, number, string, array, object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        name = "boolean"
    elif isinstance(value, (int, float)):
        name = "number"
    elif isinstance(value, str):
        name = "string"
    elif isinstance(value, list):
        name = "array"
    elif isinstance(value, dict):
        name = "object"
    else:
        name = type(value).__name__
    if not article:
        return name
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
