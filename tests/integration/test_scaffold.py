"""``oarlock new``: the component it writes validates and its own tests pass at once against the dev provider.

The proof runs as an author would: oarlock installed (not editable) into a fresh venv, made once per
test session, with pytest, the generated project's test extra; that venv's ``oarlock new`` and
``oarlock validate`` (so the templates and the schema come from the installed package data), then the
generated tests with that venv's python. They include a RabbitMQ run through the ``broker`` fixture,
hence the amqp mark.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

from oarlock.component.model import component_schema
from tests.support import REPO, run_cli

# the generated pyproject's [project.optional-dependencies] test (scaffold/templates/pyproject.toml.tmpl)
TEST_EXTRA = "pytest>=8"


@dataclass(frozen=True)
class FreshVenv:
    """A venv holding only oarlock (from this checkout) and the generated project's test needs."""

    root: Path

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    def env(self) -> dict[str, str]:
        """This process's environment without its venv or import path, the fresh venv first on PATH."""
        dropped = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTEST_ADDOPTS")
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run(self, args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=cwd, env=self.env(), capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    """``pip install CHECKOUT pytest`` in a new venv; the checkout is copied first so that the build's
    build/ and egg-info land in the copy, not in the working tree (nor a stale build/lib in the wheel)."""
    base = tmp_path_factory.mktemp("fresh")
    source = base / "oarlock-src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "lib" / "oarlock", source / "lib" / "oarlock", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):  # what the build reads besides lib/oarlock
        shutil.copy2(REPO / name, source / name)
    made = FreshVenv(base / "venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(made.root)
    done = made.run([made.bin("python"), "-m", "pip", "install", "-q", str(source), TEST_EXTRA])
    assert done.returncode == 0, f"pip install failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    where = made.run([made.bin("python"), "-c", "import oarlock; print(oarlock.__file__)"], cwd=base)
    assert where.returncode == 0 and Path(where.stdout.strip()).is_relative_to(made.root), where.stdout + where.stderr
    return made


@pytest.mark.amqp
def test_a_new_component_validates_and_its_own_tests_pass_in_a_fresh_venv(
    fresh_venv: FreshVenv, tmp_path: Path
) -> None:
    folder = tmp_path / "acme"
    created = fresh_venv.run([fresh_venv.bin("oarlock"), "new", "acme", "--dir", str(folder)])
    assert created.returncode == 0, created.stderr
    assert f'test = ["{TEST_EXTRA}"]' in (folder / "pyproject.toml").read_text()  # what the venv was given
    validated = fresh_venv.run([fresh_venv.bin("oarlock"), "validate", str(folder), "--format", "json"])
    report = json.loads(validated.stdout)
    assert validated.returncode == 0 and report["valid"] and report["errors"] == [] and report["warnings"] == []
    tested = fresh_venv.run([fresh_venv.bin("python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=folder)
    assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-2000:]
    assert "11 passed" in tested.stdout and "skipped" not in tested.stdout


def test_new_writes_a_component_named_after_it_depending_on_oarlock(tmp_path: Path) -> None:
    done = run_cli(["new", "my_crm-sync"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "my_crm-sync"
    component = json.loads((folder / "component.json").read_text())
    assert component["title"] == "My Crm Sync" and component["$schema"] == component_schema()["$id"]
    assert component["credentials"]["oauth2"]["client_id"] == "{{OAUTH_CLIENT_ID}}"
    assert set(component["actions"]) == {"create_item"} and component["triggers"]["new_items"]["type"] == "polling"
    pyproject = (folder / "pyproject.toml").read_text()
    assert 'name = "my_crm-sync"' in pyproject and 'dependencies = ["oarlock>=0.1"]' in pyproject
    written = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert written == [
        ".gitignore",
        "README.md",
        "component.json",
        "lib/actions/create_item.py",
        "lib/triggers/new_items.py",
        "pyproject.toml",
        "tests/conftest.py",
        "tests/routes.json",
        "tests/test_component.py",
        "tests/test_create_item.py",
        "tests/test_new_items.py",
        "verify_credentials.py",
    ]
    assert not any("@@" in (folder / name).read_text() for name in written)  # every marker filled in


def test_new_refuses_a_folder_that_is_not_empty_and_leaves_it_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    done = run_cli(["new", "acme", "--dir", str(tmp_path)])
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"oarlock: {tmp_path} is not empty: oarlock new writes only into a new or empty folder"
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_new_writes_into_an_empty_folder_that_exists(tmp_path: Path) -> None:
    done = run_cli(["new", "acme", "--dir", str(tmp_path)])
    assert done.returncode == 0 and (tmp_path / "component.json").is_file()


@pytest.mark.parametrize("name", ["../escape", "1st", "has space", "x" * 65])
def test_new_refuses_a_name_that_is_not_a_plain_component_name(tmp_path: Path, name: str) -> None:
    done = run_cli(["new", name], cwd=tmp_path)
    assert done.returncode == 2 and list(tmp_path.iterdir()) == []
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"oarlock: component name {name!r} must start with a letter")
