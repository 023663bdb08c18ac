"""Validate an incoming message body against a function's ``metadata.in`` JSON Schema.

Real components write their metadata in the draft-03 habit of ``"required": true`` inside a
property; that is translated into the parent's ``required`` list before validation so those
schemas work instead of being rejected.

A schema whose local ``$ref`` (``#/definitions/x``, ``#anchor``) points nowhere passes jsonschema's
``check_schema`` but fails every message that reaches it: :func:`reference_error` resolves each
one with ``referencing`` up front, ``oarlock validate`` reports it and :class:`InputValidator`
refuses it (a ComponentError: the function cannot be loaded). A remote ``$ref`` is not fetched:
a message that reaches one is a ComponentError naming it, never jsonschema's private error class.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema.exceptions import SchemaError

from oarlock.errors import ComponentError, MessageValidationError

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
    """Why ``schema`` (draft-03 ``required: true`` accepted) is not a valid JSON Schema, or None when it is:
    it breaks its meta-schema, or a local ``$ref`` of it points nowhere."""
    if not isinstance(schema, (dict, bool)):
        return f"must be a JSON Schema object, got {type(schema).__name__}"
    normalised = normalise_schema(schema)
    cls = _validator_class(normalised)
    try:
        cls.check_schema(normalised)
    except SchemaError as exc:
        location = ".".join(str(p) for p in exc.absolute_path)
        return f"is not a valid JSON Schema{' at ' + location if location else ''}: {exc.message}"
    return _dangling(normalised, cls)


def reference_error(schema: Any) -> str | None:
    """``is not a valid JSON Schema: $ref #/definitions/x points nowhere`` for the first local ``$ref`` of a
    schema that passes its meta-schema but cannot be resolved; None when every local ``$ref`` resolves."""
    if not isinstance(schema, dict):
        return None
    normalised = normalise_schema(schema)
    cls = _validator_class(normalised)
    try:
        cls.check_schema(normalised)
    except SchemaError:
        return None  # schema_error says what is wrong
    return _dangling(normalised, cls)


def _validator_class(schema: Any) -> type[jsonschema.protocols.Validator]:
    cls: type[jsonschema.protocols.Validator] = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft7Validator
    )
    return cls


#: keywords whose value is data, not a schema: a ``$ref`` in there is no reference
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})


def _dangling(schema: Any, cls: type[jsonschema.protocols.Validator]) -> str | None:
    """The first local ``$ref`` of ``schema`` (valid against its meta-schema) that points nowhere, as a sentence.

    Resolved as jsonschema resolves it when validating (``referencing``, the ``$id`` scopes of embedded
    schemas included); remote references are not fetched and not reported. Iterative: no recursion.
    """
    if not isinstance(schema, dict):
        return None
    dialect = schema.get("$schema") if isinstance(schema.get("$schema"), str) else cls.META_SCHEMA.get("$schema")
    specification = referencing.jsonschema.specification_with(str(dialect), default=referencing.jsonschema.DRAFT7)
    root = specification.create_resource(schema)
    base = root.id() or ""
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(base, root).crawl()
    top: Any = schema
    stack = [(top, registry.resolver(base_uri=base))]
    while stack:
        node, resolver = stack.pop()
        if isinstance(node, list):
            stack.extend((item, resolver) for item in reversed(node) if isinstance(item, (dict, list)))
            continue
        if not isinstance(node, dict):
            continue
        if node is not schema and _has_own_id(node):
            resolver = resolver.in_subresource(specification.create_resource(node))
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            try:
                resolver.lookup(ref)
            except (referencing.exceptions.PointerToNowhere, referencing.exceptions.NoSuchAnchor):
                return f"is not a valid JSON Schema: $ref {ref} points nowhere"
            except referencing.exceptions.Unresolvable:
                pass  # a scope oarlock cannot read statically: left to validation, as before
        children = [(v, resolver) for k, v in node.items() if k not in _DATA_KEYWORDS and isinstance(v, (dict, list))]
        stack.extend(reversed(children))  # popped in document order: the first dangling $ref is reported
    return None


def _has_own_id(node: dict[str, Any]) -> bool:
    """An embedded schema with its own ``$id`` (``id`` before draft 6): its local refs resolve against it."""
    ids = [node[key] for key in ("$id", "id") if key in node]
    return bool(ids) and all(isinstance(value, str) for value in ids)


class InputValidator:
    """Checks message bodies against one function's ``metadata.in``.

    A schema that breaks its meta-schema disables the check (a warning). One whose local ``$ref``
    points nowhere is a ComponentError here: every message reaching that ``$ref`` would fail, so the
    function cannot be loaded (``oarlock run`` rejects each message with this error, as for any
    unloadable function).
    """

    def __init__(self, schema: dict[str, Any] | None, *, function: str) -> None:
        self._validator: jsonschema.protocols.Validator | None = None
        self._function = function
        if not schema:
            return
        normalised = normalise_schema(schema)
        cls = _validator_class(normalised)
        try:
            cls.check_schema(normalised)
        except SchemaError as exc:
            log.warning(
                "metadata.in of %s is not a valid JSON Schema (%s): incoming messages are not checked",
                function,
                exc.message,
            )
            return
        dangling = _dangling(normalised, cls)
        if dangling is not None:
            raise ComponentError(f"metadata.in of {function} {dangling}")
        self._validator = cls(normalised)

    def check(self, body: Any) -> None:
        """Raise MessageValidationError naming the first failing path of the body, if any; ComponentError
        when the schema itself cannot be used for it (a ``$ref`` that cannot be resolved)."""
        if self._validator is None:
            return
        try:
            error = jsonschema.exceptions.best_match(self._validator.iter_errors(body))
        except referencing.exceptions.Unresolvable as exc:  # jsonschema wraps it in a private subclass
            ref = str(getattr(exc, "ref", "") or "")
            hint = "" if ref.startswith("#") else ": oarlock does not fetch referenced schemas"
            raise ComponentError(f"metadata.in of {self._function}: $ref {ref} cannot be resolved{hint}") from None
        if error is None:
            return
        path = "body" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise MessageValidationError(f"message does not match metadata.in: {path}: {error.message}")
