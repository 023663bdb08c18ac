"""``oarlock new NAME [--dir D]``: write a new component folder from the templates shipped with oarlock.

The templates are package data (``oarlock/scaffold/templates``, every file ending in ``.tmpl`` so that
no tool takes them for oarlock's own code; ``dot-`` starts a dotfile). They hold a component that
``oarlock validate`` accepts and whose tests pass at once against the dev provider: component.json
with an OAuth2 credential and ``$schema``, an action, a polling trigger with a snapshot cursor,
verify_credentials.py, tests using oarlock's pytest plugin, a README and a pyproject depending on
oarlock. Markers ``@@NAME@@``, ``@@TITLE@@``, ``@@SCHEMA@@`` and ``@@OARLOCK_REQUIREMENT@@`` are filled in.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata, resources
from importlib.resources.abc import Traversable
from pathlib import Path

import click

from oarlock.component.model import component_schema
from oarlock.errors import ConfigurationError

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
SUFFIX = ".tmpl"


def templates() -> Traversable:
    return resources.files("oarlock").joinpath("scaffold", "templates")


def render(name: str) -> dict[str, str]:
    """The files of a new component NAME: relative path -> text."""
    if not NAME.match(name):
        raise ConfigurationError(
            f"component name {name!r} must start with a letter and hold only letters, digits, - and _ (at most 64)"
        )
    try:
        version = metadata.version("oarlock")
    except metadata.PackageNotFoundError:
        version = "0.1.0"
    markers = {
        "@@NAME@@": name,
        "@@TITLE@@": " ".join(word.capitalize() for word in re.split(r"[-_]+", name) if word),
        "@@SCHEMA@@": str(component_schema().get("$id", "")),
        "@@OARLOCK_REQUIREMENT@@": f"oarlock>={'.'.join(version.split('.')[:2])}",
    }
    files: dict[str, str] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.name.endswith(SUFFIX):
                target = entry.name[: -len(SUFFIX)]
                target = "." + target[4:] if target.startswith("dot-") else target
                text = entry.read_text(encoding="utf-8")
                for marker, value in markers.items():
                    text = text.replace(marker, value)
                files[prefix + target] = text

    walk(templates(), "")
    if "component.json" not in files:
        raise ConfigurationError(f"the component templates of oarlock are missing (looked in {templates()})")
    return files


def write_component(name: str, folder: Path) -> list[str]:
    """Write the new component into ``folder`` (created, or empty); returns the files written."""
    files = render(name)
    if folder.exists() and not folder.is_dir():
        raise ConfigurationError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise ConfigurationError(f"{folder} is not empty: oarlock new writes only into a new or empty folder")
    try:
        for relative, text in files.items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot write {folder}: {exc.strerror or exc}") from None
    return list(files)


@click.command("new")
@click.argument("name")
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False),
    help="Folder to write the component into (new or empty).  [default: ./NAME]",
)
def new_command(name: str, folder: str | None) -> None:
    """Write a new component NAME: component.json (OAuth2), an action, a polling trigger, verify_credentials.py,
    tests using oarlock's pytest plugin, a README and a pyproject.

    Refuses a folder that is not empty (exit 2).
    """
    target = Path(folder) if folder else Path(name)
    try:
        written = write_component(name, target)
    except ConfigurationError as exc:
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(2)
    click.echo(f"created component {name} in {target} ({len(written)} files)")
    click.echo(f"next: cd {target} && pip install -e '.[test]' && pytest -q && oarlock validate .")
