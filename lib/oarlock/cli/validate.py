"""``oarlock validate [DIR]``: print every problem of a component folder; exit 1 on errors."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from oarlock.component.model import read_component_json
from oarlock.component.validate import validate


@click.command("validate")
@click.argument("directory", default=".", type=click.Path())
def validate_command(directory: str) -> None:
    """Check component.json in DIRECTORY (default: the current folder)."""
    problems = validate(directory)
    for problem in problems:
        click.echo(str(problem))
    errors = [p for p in problems if p.level == "error"]
    if errors:
        click.echo(f"{len(errors)} problem{'s' if len(errors) != 1 else ''} found")
        sys.exit(1)
    raw = read_component_json(Path(directory))
    count = len(raw.get("actions") or {}) + len(raw.get("triggers") or {})
    click.echo(f"component.json is valid ({count} functions)")
