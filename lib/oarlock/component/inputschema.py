"""Validate an incoming message body against a function's ``metadata.in`` JSON Schema.

Real components write their metadata in the draft-03 habit of ``"required": true`` inside a
property; that is translated into the parent's ``required`` list before validation so those
schemas work instead of being rejected.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

from oarlock.errors import MessageValidationError

log = logging.getLogger("oarlock.inputschema")


def normalise_schema(schema: Any) -> Any:
    """A copy of the schema with draft-03 ``required: true`` moved into the parent's ``required`` list."""
    schema = copy.deepcopy(schema)
    _move_required(schema)
    return schema


def _move_required(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _move_required(item)
        return
    if not isinstance(node, dict):
        return
    properties = node.get("properties")
    if isinstance(properties, dict):
        required = node.get("required")
        names = list(required) if isinstance(required, list) else []
        for name, sub in properties.items():
            flagged = sub.pop("required") if isinstance(sub, dict) and isinstance(sub.get("required"), bool) else False
            if flagged and name not in names:
                names.append(name)
        if names:
            node["required"] = names
        elif isinstance(required, bool):
            node.pop("required")
    for value in node.values():
        _move_required(value)


def schema_error(schema: Any) -> str | None:
    """Why ``schema`` (draft-03 ``required: true`` accepted) is not a valid JSON Schema, or None when it is."""
    if not isinstance(schema, (dict, bool)):
        return f"must be a JSON Schema object, got {type(schema).__name__}"
    normalised = normalise_schema(schema)
    cls = jsonschema.validators.validator_for(normalised, default=jsonschema.Draft7Validator)
    try:
        cls.check_schema(normalised)
    except SchemaError as exc:
        location = ".".join(str(p) for p in exc.absolute_path)
        return f"is not a valid JSON Schema{' at ' + location if location else ''}: {exc.message}"
    return None


class InputValidator:
    """Checks message bodies against one function's ``metadata.in``; unusable schemas disable the check."""

    def __init__(self, schema: dict[str, Any] | None, *, function: str) -> None:
        self._validator: jsonschema.protocols.Validator | None = None
        if not schema:
            return
        normalised = normalise_schema(schema)
        cls = jsonschema.validators.validator_for(normalised, default=jsonschema.Draft7Validator)
        try:
            cls.check_schema(normalised)
        except SchemaError as exc:
            log.warning(
                "metadata.in of %s is not a valid JSON Schema (%s): incoming messages are not checked",
                function,
                exc.message,
            )
            return
        self._validator = cls(normalised)

    def check(self, body: Any) -> None:
        """Raise MessageValidationError naming the first failing path of the body, if any."""
        if self._validator is None:
            return
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(body))
        if error is None:
            return
        path = "body" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise MessageValidationError(f"message does not match metadata.in: {path}: {error.message}")
