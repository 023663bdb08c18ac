"""``oarlock validate [DIR] [--lenient] [--format text|json]``: every problem of a component folder; exit 1 on errors.

Text: one line per problem (warnings prefixed ``warning:``), then a summary line. JSON (for CI): one
object ``{"component", "valid", "functions", "errors": [...], "warnings": [...]}``, each problem
``{"path", "message", "suggestion"}`` (``suggestion`` the did-you-mean, or null).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click

from oarlock.component.model import Problem, read_component_json
from oarlock.component.validate import validate
from oarlock.errors import ComponentError


@click.command("validate")
@click.argument("directory", default=".", type=click.Path())
@click.option(
    "--lenient", is_flag=True, help="Legacy files: unknown keys, and functions oarlock cannot run, are warnings."
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object with the errors and warnings (path, message, suggestion), for CI.",
)
def validate_command(directory: str, lenient: bool, output_format: str) -> None:
    """Check component.json in DIRECTORY (default: the current folder) and the files it names.

    Exit 0 when there is no error (warnings allowed), 1 when there is any.
    """
    problems = validate(directory, lenient=lenient)
    errors = [p for p in problems if p.level == "error"]
    warnings = [p for p in problems if p.level == "warning"]
    functions = _function_count(directory)
    if output_format == "json":
        report = {
            "component": directory,
            "valid": not errors,
            "functions": functions,
            "errors": [p.as_dict() for p in errors],
            "warnings": [p.as_dict() for p in warnings],
        }
        click.echo(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        for problem in problems:
            click.echo(str(problem))
        click.echo(_summary(errors, warnings, functions))
    sys.exit(1 if errors else 0)


def _summary(errors: list[Problem], warnings: list[Problem], functions: int) -> str:
    if errors:
        text = f"{len(errors)} problem{'s' if len(errors) != 1 else ''} found"
        return text + (f" and {_counted(warnings)}" if warnings else "")
    text = f"component.json is valid ({functions} functions)"
    return text + (f" with {_counted(warnings)}" if warnings else "")


def _counted(warnings: list[Problem]) -> str:
    """``12 warnings (7 unknown keys, 5 draft-03 required)``: how many of each kind."""
    kinds = Counter(_kind(p) for p in warnings)
    listed = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
    return f"{len(warnings)} warning{'s' if len(warnings) != 1 else ''} ({listed})"


def _kind(problem: Problem) -> str:
    message = problem.message
    for needle, kind in (
        ("unknown key", "unknown keys"),
        ("cannot run this function", "functions oarlock cannot run"),
        ("draft-03", 'draft-03 "required": true'),
        ("neither metadata nor dynamicMetadata", "functions without metadata"),
        ("is a class name", "dynamicMetadata class names"),
        ("not declared in envVars", "undeclared {{placeholders}}"),
        ("legacy spelling", "legacy env/vars"),
        ("does not exist", "missing files"),
        ("not a valid JSON Schema", "invalid JSON Schemas"),
        ("also declared as a trigger", "names shared by an action and a trigger"),
    ):
        if needle in message:
            return kind
    return "other"


def _function_count(directory: str) -> int:
    try:
        raw: Any = read_component_json(Path(directory))
    except ComponentError:
        return 0
    return sum(len(raw.get(k)) for k in ("actions", "triggers") if isinstance(raw.get(k), dict))
