"""Unknown keys of component.json, at any level, each with its JSON path and a did-you-mean.

The known keys are read from the shipped JSON Schema (``component.schema.json``), so the schema
stays the one description of component.json: an object schema listing ``properties`` is closed
(a key it does not list is unknown), a map (``additionalProperties`` a schema) checks each value
against that schema, and an object schema without ``properties`` (``help``, a select ``model``,
an inline metadata JSON Schema) is open. The structural schema itself stays open so that
``Component.load`` runs legacy components; only ``oarlock validate`` is strict.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any, Literal

from oarlock.component.model import Problem, component_schema

#: how many known keys an unknown key's message lists when nothing is close to it
_LISTED = 14


def unknown_key_problems(raw: Any, *, lenient: bool = False) -> list[Problem]:
    """One Problem per unknown key: an error, or a warning with ``lenient``."""
    schema = component_schema()
    level: Literal["error", "warning"] = "warning" if lenient else "error"
    problems = []
    for path, key, known in _unknown(raw, schema, schema, ""):
        suggestion = did_you_mean(key, known)
        if suggestion is not None:
            message = f"unknown key: did you mean {suggestion}?"
        else:
            listed = ", ".join(sorted(known)[:_LISTED]) + (", …" if len(known) > _LISTED else "")
            message = f"unknown key (known here: {listed})"
        if lenient:
            message += " (--lenient: accepted)"
        problems.append(Problem(path, message, level, suggestion))
    return problems


def did_you_mean(word: str, candidates: Any) -> str | None:
    """The candidate closest to ``word`` (same letters in another case first), or None if none is close."""
    options = [str(c) for c in candidates]
    for option in options:
        if option.lower() == word.lower():
            return option
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return close[0] if close else None


def _resolve(node: Any, root: dict[str, Any]) -> Any:
    seen = 0
    while isinstance(node, dict) and "$ref" in node and seen < 16:
        ref = str(node["$ref"])
        target: Any = root
        for part in ref.removeprefix("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        node, seen = target, seen + 1
    return node


def _object_schema(node: Any, root: dict[str, Any]) -> dict[str, Any] | None:
    """The schema that describes an object instance: the node itself, or its first object branch."""
    node = _resolve(node, root)
    if not isinstance(node, dict):
        return None
    branches = node.get("anyOf") or node.get("oneOf")
    if isinstance(branches, list):
        for branch in branches:
            resolved = _resolve(branch, root)
            if isinstance(resolved, dict) and _allows_object(resolved):
                return resolved
        return None
    return node if _allows_object(node) else None


def _allows_object(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    if kind is None:
        return "properties" in node or "additionalProperties" in node
    return kind == "object" or (isinstance(kind, list) and "object" in kind)


def _unknown(instance: Any, node: Any, root: dict[str, Any], path: str) -> Iterator[tuple[str, str, list[str]]]:
    if not isinstance(instance, dict):
        return
    schema = _object_schema(node, root)
    if schema is None:
        return
    properties = schema.get("properties")
    extra = schema.get("additionalProperties")
    for key, value in instance.items():
        where = f"{path}.{key}" if path else str(key)
        if isinstance(properties, dict) and key in properties:
            yield from _unknown(value, properties[key], root, where)
        elif isinstance(extra, dict):
            yield from _unknown(value, extra, root, where)
        elif isinstance(properties, dict) and extra is not True:
            yield where, str(key), list(properties)
