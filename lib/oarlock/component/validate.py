"""``oarlock validate``: every check of a component folder, each finding a Problem with its JSON path.

Never raises for a broken component: everything becomes a Problem, and every check runs in one
pass (the file checks run after schema errors too, on whatever parts have the right types).
Quirks real components carry are accepted with a warning (legacy ``env``/``vars``,
``dynamicMetadata`` as a class name, draft-03 ``"required": true`` in metadata) so that authors
see them without failing. Strict on the rest: an unknown key anywhere is an error with a
did-you-mean (:mod:`oarlock.component.strict`), an invalid metadata JSON Schema is an error, and
``dynamicMetadata`` / a select field's ``model`` method must exist in the function's module.

The module is imported as the runtime imports it (:meth:`Component.load_module`, once, for the
``process`` check anyway), and the methods are looked up with ``getattr`` as
:mod:`oarlock.runtime.service` looks them up: a method re-exported from another module, assigned
or decorated is found exactly when the runtime would find it (an ``ast`` reading would miss those).

A name declared both as an action and as a trigger is a warning: oarlock (like sailor) runs the
trigger under that name and never the action.

``lenient`` is for legacy files: unknown keys become warnings, and so does every finding of a
function oarlock cannot run (its ``main`` a JavaScript file or a Java class: a Node.js or Java
component's descriptor).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from oarlock.component.inputschema import reference_error, schema_error
from oarlock.component.model import (
    JAVA_CLASS,
    PLACEHOLDER,
    Component,
    Problem,
    main_problem,
    parse_json,
    read_component_json,
    schema_problems,
)
from oarlock.component.strict import did_you_mean, unknown_key_problems
from oarlock.errors import ComponentError

SELECT_VIEWS = ("SelectView", "MultiSelectView")


def validate(root: str | Path, env: Mapping[str, str] | None = None, *, lenient: bool = False) -> list[Problem]:
    """Every problem of the component folder ``root``; ``lenient`` for legacy files (see the module docstring)."""
    folder = Path(root)
    if not folder.is_dir():
        return [Problem("", f"component folder {root} does not exist")]
    try:
        raw = read_component_json(folder)
    except ComponentError as exc:
        return [Problem("component.json", str(exc))]
    problems = schema_problems(raw)
    problems += unknown_key_problems(raw, lenient=lenient)
    problems += _legacy_keys(raw)
    problems += _placeholders(raw)
    problems += _shared_names(raw)
    component = Component(folder, {"title": str(raw.get("title") or folder.name)})
    for kind in ("trigger", "action"):
        functions = raw.get(f"{kind}s")
        for name, spec in functions.items() if isinstance(functions, dict) else ():
            if not isinstance(spec, dict):
                continue  # the schema problem says so
            found = list(_function_problems(component, f"{kind}s.{name}", spec))
            if lenient and _foreign(spec):
                found = [_as_legacy(p) for p in found]
            problems += found
    return problems


def _shared_names(raw: dict[str, Any]) -> list[Problem]:
    """A warning per name declared both under actions and under triggers: the trigger shadows the action."""
    actions, triggers = raw.get("actions"), raw.get("triggers")
    if not isinstance(actions, dict) or not isinstance(triggers, dict):
        return []
    return [
        Problem(
            f"actions.{name}",
            f"{name} is also declared as a trigger (triggers.{name}): oarlock, like sailor, runs the trigger"
            " under this name and never this action; rename one of them",
            "warning",
        )
        for name in actions
        if name in triggers
    ]


def _foreign(spec: dict[str, Any]) -> bool:
    """A function oarlock cannot run: its main names no Python file (a JavaScript file, a Java class)."""
    main = spec.get("main")
    if not isinstance(main, str):
        return False
    return bool(JAVA_CLASS.match(main)) or Path(main).suffix in (".js", ".mjs", ".cjs", ".ts")


def _as_legacy(problem: Problem) -> Problem:
    if problem.level == "warning":
        return problem
    message = problem.message
    if problem.path.endswith(".main"):
        message += " (--lenient: accepted, oarlock cannot run this function)"
    return dataclasses.replace(problem, message=message, level="warning")


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
    main = spec.get("main")
    module: ModuleType | None = None
    if isinstance(main, str) and main:  # otherwise the schema problem says what is wrong
        problem = main_problem(component.root, main)
        if problem:
            yield Problem(f"{where}.main", problem)
        else:
            module, problem = _load_module(component, where, spec)
            if problem:
                yield Problem(f"{where}.main", problem)
    dynamic = spec.get("dynamicMetadata")
    if isinstance(dynamic, str):
        yield Problem(f"{where}.dynamicMetadata", f"is a class name ({dynamic}), accepted as true", "warning")
    if dynamic and module is not None:
        yield from _method_problem(module, str(main), f"{where}.dynamicMetadata", "getMetaModel", "dynamicMetadata")
    metadata = spec.get("metadata")
    if not metadata and not dynamic:
        yield Problem(where, "has neither metadata nor dynamicMetadata", "warning")
    if isinstance(metadata, dict):
        for direction in ("in", "out"):
            if direction in metadata:
                yield from _metadata_problems(component.root, f"{where}.metadata.{direction}", metadata[direction])
    fields = spec.get("fields")
    for field_name, field_spec in fields.items() if isinstance(fields, dict) else ():
        if not isinstance(field_spec, dict):
            continue
        path = f"{where}.fields.{field_name}.model"
        model = field_spec.get("model")
        if str(field_spec.get("viewClass", "")) in SELECT_VIEWS and "model" not in field_spec:
            yield Problem(path, "a select field needs a model (a map of options or a method name)")
        elif isinstance(model, str) and model and module is not None:
            yield from _method_problem(module, str(main), path, model, f"the select model of field {field_name}")


def _load_module(component: Component, where: str, spec: dict[str, Any]) -> tuple[ModuleType | None, str | None]:
    """The function's module, imported the way the runtime imports it, or why it cannot be."""
    name = where.split(".", 1)[1]
    kind = "action" if where.startswith("actions.") else "trigger"
    bare = {k: v for k, v in spec.items() if k != "metadata"}
    probe = Component(component.root, {"title": component.title, f"{kind}s": {name: bare}})
    try:
        return probe.load_module(name), None
    except ComponentError as exc:
        text = str(exc)
        prefix = f"{where}.main: "
        return None, text[len(prefix) :] if text.startswith(prefix) else text


def _method_problem(module: ModuleType, main: str, where: str, method: str, role: str) -> Iterator[Problem]:
    if callable(getattr(module, method, None)):
        return
    defined = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None))]
    suggestion = did_you_mean(method, defined)
    hint = f": did you mean {suggestion}?" if suggestion else ""
    yield Problem(where, f"{main.removeprefix('./')} does not define {method}(cfg), {role}{hint}", "error", suggestion)


def _metadata_problems(root: Path, where: str, value: Any) -> Iterator[Problem]:
    from_file = isinstance(value, str)
    original = str(value).removeprefix("./")
    if isinstance(value, str):
        path = root / value
        if not path.is_file():
            yield Problem(where, f"{value.removeprefix('./')} does not exist")
            return
        try:
            value = parse_json(path.read_text(encoding="utf-8"), shown=original)
        except OSError as exc:
            yield Problem(where, f"cannot read {original}: {exc.strerror or exc}")
            return
        except UnicodeDecodeError:
            yield Problem(where, f"{original} is not UTF-8 text")
            return
        except ComponentError as exc:
            yield Problem(where, str(exc))
            return
    if not isinstance(value, dict):
        yield Problem(where, "must be a JSON Schema object")
        return
    if _has_boolean_required(value):
        yield Problem(where, 'uses draft-03 "required": true inside properties: accepted and enforced', "warning")
    text = schema_error(value)
    if text is not None:
        if from_file:
            text = f"{original} {text}"
        if where.endswith(".in"):
            if reference_error(value) is not None:
                text += " (oarlock cannot load this function: every message would be rejected with this error)"
            else:
                text += " (oarlock would not check incoming messages against it)"
        yield Problem(where, text)


def _has_boolean_required(node: Any) -> bool:
    if isinstance(node, dict):
        if isinstance(node.get("required"), bool):
            return True
        return any(_has_boolean_required(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_boolean_required(v) for v in node)
    return False
