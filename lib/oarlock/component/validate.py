"""``oarlock validate``: every check of a component folder, each finding a Problem with its JSON path.

Never raises for a broken component: everything becomes a Problem. Quirks real components
carry are accepted with a warning (legacy ``env``/``vars``, ``dynamicMetadata`` as a class
name, draft-03 ``"required": true`` in metadata) so that authors see them without failing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

from oarlock.component.inputschema import normalise_schema
from oarlock.component.model import (
    PLACEHOLDER,
    Component,
    Problem,
    main_problem,
    read_component_json,
    schema_problems,
)
from oarlock.errors import ComponentError


def validate(root: str | Path, env: Mapping[str, str] | None = None) -> list[Problem]:
    folder = Path(root)
    if not folder.is_dir():
        return [Problem("", f"component folder {root} does not exist")]
    try:
        raw = read_component_json(folder)
    except ComponentError as exc:
        return [Problem("component.json", str(exc))]
    problems = schema_problems(raw)
    if problems:
        return problems
    problems += _legacy_keys(raw)
    problems += _placeholders(raw)
    component = Component(folder, {**raw, "triggers": {}, "actions": {}})
    for kind in ("trigger", "action"):
        for name, spec in (raw.get(f"{kind}s") or {}).items():
            problems += list(_function_problems(component, f"{kind}s.{name}", spec))
    return problems


def _legacy_keys(raw: dict[str, Any]) -> list[Problem]:
    return [
        Problem(
            key, "legacy spelling of envVars: accepted, but write envVars ({NAME: {required, description}})", "warning"
        )
        for key in ("env", "vars")
        if key in raw
    ]


def _declared_env(raw: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for key in ("envVars", "env", "vars"):
        value = raw.get(key)
        if isinstance(value, dict):
            names.update(value)
        elif isinstance(value, list):
            names.update(str(v) for v in value)
    return names


def _credential_fields(raw: dict[str, Any]) -> set[str]:
    credentials = raw.get("credentials")
    fields = credentials.get("fields") if isinstance(credentials, dict) else None
    return set(fields) if isinstance(fields, dict) else set()


def _placeholders(raw: dict[str, Any]) -> list[Problem]:
    """``{{NAME}}`` must name a declared envVar (or a credential field, filled from the cfg).

    A component that declares no envVars at all relies on the platform's OAuth client to fill
    them (elastic.io's authClientTypes): that is a warning, not an error.
    """
    declared = _declared_env(raw)
    known = declared | _credential_fields(raw)
    problems = []
    for path, text in _strings(raw, ""):
        for match in PLACEHOLDER.finditer(text):
            name = match.group(1)
            if name in known:
                continue
            if declared:
                problems.append(
                    Problem(path, f"{{{{{name}}}}} names an environment variable that envVars does not declare")
                )
            else:
                problems.append(
                    Problem(
                        path,
                        f"{{{{{name}}}}} is not declared in envVars: it must come from the "
                        "platform's OAuth client or the environment at run time",
                        "warning",
                    )
                )
    return problems


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def _function_problems(component: Component, where: str, spec: dict[str, Any]) -> Iterator[Problem]:
    main = str(spec.get("main", ""))
    problem = main_problem(component.root, main)
    if problem:
        yield Problem(f"{where}.main", problem)
    else:
        yield from _process_problem(component, where, spec)
    dynamic = spec.get("dynamicMetadata")
    if isinstance(dynamic, str):
        yield Problem(f"{where}.dynamicMetadata", f"is a class name ({dynamic}), accepted as true", "warning")
    metadata = spec.get("metadata")
    if not metadata and not dynamic:
        yield Problem(where, "has neither metadata nor dynamicMetadata", "warning")
    if isinstance(metadata, dict):
        for direction in ("in", "out"):
            if direction in metadata:
                yield from _metadata_problems(component.root, f"{where}.metadata.{direction}", metadata[direction])
    for field_name, field_spec in (spec.get("fields") or {}).items():
        if str(field_spec.get("viewClass", "")) in ("SelectView", "MultiSelectView") and "model" not in field_spec:
            yield Problem(
                f"{where}.fields.{field_name}.model", "a select field needs a model (a map of options or a method name)"
            )


def _process_problem(component: Component, where: str, spec: dict[str, Any]) -> Iterator[Problem]:
    name = where.split(".", 1)[1]
    kind = "action" if where.startswith("actions.") else "trigger"
    bare = {k: v for k, v in spec.items() if k != "metadata"}
    probe = Component(component.root, {"title": component.title, f"{kind}s": {name: bare}})
    try:
        probe.load_module(name)
    except ComponentError as exc:
        text = str(exc)
        prefix = f"{where}.main: "
        yield Problem(f"{where}.main", text[len(prefix) :] if text.startswith(prefix) else text)


def _metadata_problems(root: Path, where: str, value: Any) -> Iterator[Problem]:
    from_file = isinstance(value, str)
    if isinstance(value, str):
        path = root / value
        if not path.is_file():
            yield Problem(where, f"{value.removeprefix('./')} does not exist")
            return
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            yield Problem(where, f"{value.removeprefix('./')} is not valid JSON: {exc}")
            return
    if not isinstance(value, dict):
        yield Problem(where, "must be a JSON Schema object")
        return
    if _has_boolean_required(value):
        yield Problem(where, 'uses draft-03 "required": true inside properties: accepted and enforced', "warning")
    schema = normalise_schema(value)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        location = ".".join(str(p) for p in exc.absolute_path)
        text = f"is not a valid JSON Schema{' at ' + location if location else ''}: {exc.message}"
        # an inline schema is UI metadata first; only a schema file is held to JSON Schema strictly
        yield Problem(
            where,
            text if from_file else f"{text} (incoming messages are not checked against it)",
            "error" if from_file else "warning",
        )


def _has_boolean_required(node: Any) -> bool:
    if isinstance(node, dict):
        if isinstance(node.get("required"), bool):
            return True
        return any(_has_boolean_required(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_boolean_required(v) for v in node)
    return False
