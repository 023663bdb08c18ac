"""The deployment kit in deploy/ does what docs/deploy.md says, as far as this machine can show it (1/2).

Docker cannot run here, so the Dockerfile is checked by executing its build steps: its COPY lines
into a folder standing for the image's file system, its `pip install` line in a fresh virtual
environment (one per test session), then the entrypoint with `--help` and `oarlock validate` on the
component it copied. The systemd units go through `systemd-analyze verify` with their ExecStart
pointed at that fresh environment. The example environment file must list every ELASTICIO_* /
OARLOCK_* variable the package reads and be a valid worker environment. The Kubernetes manifests:
test_deploy_kubernetes.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import venv
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from oarlock.protocol import settings as settings_module
from oarlock.protocol.settings import Settings
from tests.integration.deploykit import (
    DOCKERFILE,
    DRAIN_OVERHEAD_SECONDS,
    ENV_EXAMPLE,
    SYSTEMD,
    cli_options,
    used_options,
)
from tests.support import REPO, run_cli

# a marker of the scaffold's templates and a docstring's example, not variables
NOT_VARIABLES = {"OARLOCK_REQUIREMENT", "ELASTICIO_SOME_VAR"}


# -- the example environment file --------------------------------------------------------------------------
LINE = re.compile(r"^(?P<commented># )?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>\S*)$")


def env_lines() -> tuple[dict[str, str], set[str]]:
    """(variables set, variables shown commented out) of the example; a line that is neither is a failure."""
    active: dict[str, str] = {}
    optional: set[str] = set()
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        match = LINE.match(line)
        if match is None:
            assert line == "" or line.startswith("#"), f"line {number} is not KEY=value nor a comment: {line!r}"
            assert not re.match(r"^#\s*export\b|^export\b", line), f"line {number}: no export (docker reads it)"
            continue
        assert '"' not in match["value"] and "'" not in match["value"], f"line {number}: quotes are kept by docker"
        if match["commented"]:
            optional.add(match["name"])
        else:
            assert match["name"] not in active, f"line {number}: {match['name']} set twice"
            active[match["name"]] = match["value"]
    return active, optional


def variables_the_package_reads() -> set[str]:
    """Every ELASTICIO_* / OARLOCK_* name in lib/oarlock, and the settings read as PREFIX + name."""
    names: set[str] = set()
    for path in (REPO / "lib" / "oarlock").rglob("*"):
        if path.suffix in (".py", ".tmpl") and "__pycache__" not in path.parts:
            names.update(re.findall(r"\b(?:ELASTICIO|OARLOCK)_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    source = Path(settings_module.__file__).read_text()
    prefix = settings_module.PREFIX
    listed = (
        settings_module.ALWAYS_REQUIRED
        + settings_module.API_REQUIRED
        + settings_module.MESSAGING_REQUIRED
        + settings_module.CRYPTO
    )
    names.update(prefix + name for name in listed)
    names.update(prefix + name for name in re.findall(r'(?:PREFIX \+ |_int\(env, |_bool\(env, )"([A-Z0-9_]+)"', source))
    return names - NOT_VARIABLES


def test_the_example_environment_lists_every_variable_oarlock_reads() -> None:
    active, optional = env_lines()
    read = variables_the_package_reads()
    assert len(read) > 50  # the scan found the package's variables, not nothing
    missing = sorted(read - set(active) - optional)
    assert missing == [], f"deploy/oarlock.env.example does not list {missing}"
    unknown = sorted((set(active) | optional) - read - {"PGPASSWORD"})
    assert unknown == [], f"deploy/oarlock.env.example names variables oarlock does not read: {unknown}"


def test_the_example_environment_is_a_valid_worker_environment_as_docker_and_systemd_read_it() -> None:
    active, _ = env_lines()
    for name in (*settings_module.ALWAYS_REQUIRED, *settings_module.MESSAGING_REQUIRED):
        assert settings_module.PREFIX + name in active, f"required {name} is not set in the example"
    settings = Settings.from_env(active, api_optional=True)  # the cfg comes from --cfg in every deploy example
    assert settings.function == "request" and settings.grace_seconds == 30
    assert len(settings.message_crypto_iv or "") == 16
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ELASTICIO_", "OARLOCK_"))}
    done = run_cli(["topology", "declare", "--dry-run", "--format", "json"], env={**clean, **active})
    assert done.returncode == 0, done.stderr
    planned = [json.loads(line) for line in done.stdout.splitlines()]
    assert any(entry.get("name") == active["ELASTICIO_LISTEN_MESSAGES_ON"] for entry in planned), done.stdout


# -- the Dockerfile -------------------------------------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str
    argument: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.argument)
        assert isinstance(value, list), f"{self.keyword} must be in exec form (a JSON list): {self.argument}"
        return [str(part) for part in value]


def dockerfile() -> list[Instruction]:
    instructions: list[Instruction] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, argument = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(argument.split())))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def parse_env(argument: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(argument))


def test_the_dockerfile_runs_oarlock_as_a_non_root_user_and_stops_on_sigterm() -> None:
    steps = dockerfile()
    assert steps[0] == Instruction("FROM", "python:3.11-slim")
    users = [step for step in steps if step.keyword == "USER"]
    assert users, "no USER: the worker would run as root"
    last_user = users[-1].argument.split(":")[0]
    assert last_user not in ("root", "0"), users[-1]
    assert steps.index(users[-1]) > max(i for i, step in enumerate(steps) if step.keyword == "RUN"), "USER before a RUN"
    assert [step.argument for step in steps if step.keyword == "STOPSIGNAL"] == ["SIGTERM"]
    (entrypoint,) = [step for step in steps if step.keyword == "ENTRYPOINT"]
    assert entrypoint.exec_form() == ["oarlock", "run"]  # exec form: the signal reaches oarlock, not a shell
    pip_lines = [step for step in steps if step.keyword == "RUN" and step.argument.startswith("pip install")]
    assert len(pip_lines) == 1, "one pip install line, the one the next test runs"


@dataclass
class Image:
    """The image's file system as the Dockerfile's COPY steps lay it, and the venv its pip line installed into."""

    root: Path
    venv: Path
    env: dict[str, str] = field(default_factory=dict)

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name


def copy_into(image: Image, workdir: str, argument: str) -> None:
    *sources, destination = shlex.split(argument)
    target = image.path(destination if destination.startswith("/") else f"{workdir}/{destination}")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for source in sources:
        origin = REPO / source
        assert origin.exists(), f"COPY {source}: not in the build context"
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=ignore, dirs_exist_ok=True)
        else:
            folder = target if destination.endswith("/") or len(sources) > 1 else target.parent
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, folder / origin.name if folder == target else target)


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """Run the Dockerfile's COPY, WORKDIR, ENV and pip install steps; a fresh venv stands for the image's Python.

    The other RUN lines (groupadd/useradd, mkdir/chown of /var/lib/oarlock) change the system and are
    not run here; the USER is checked by the test above.
    """
    base = tmp_path_factory.mktemp("image")
    built = Image(base / "root", base / "venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(built.venv)
    workdir = "/"
    for step in dockerfile():
        if step.keyword == "WORKDIR":
            workdir = step.argument
            built.path(workdir).mkdir(parents=True, exist_ok=True)
        elif step.keyword == "ENV":
            built.env.update(parse_env(step.argument))
        elif step.keyword == "COPY":
            copy_into(built, workdir, step.argument)
        elif step.keyword == "RUN" and step.argument.startswith("pip install"):
            command = [str(built.bin("python")), "-m", *shlex.split(step.argument)]
            done = subprocess.run(
                command,
                cwd=built.path(workdir),
                env={**os.environ, **built.env},
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert done.returncode == 0, f"{step.argument} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return built


def test_the_dockerfile_pip_line_installs_a_working_oarlock_and_the_entrypoint_answers_help(image: Image) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ELASTICIO_", "VIRTUAL_ENV"))}
    env.update(image.env)
    env["ELASTICIO_COMPONENT_PATH"] = str(image.path(image.env["ELASTICIO_COMPONENT_PATH"]))
    entrypoint = next(step for step in dockerfile() if step.keyword == "ENTRYPOINT").exec_form()
    done = subprocess.run(
        [str(image.bin(entrypoint[0])), *entrypoint[1:], "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: oarlock run" in done.stdout and "--cfg" in done.stdout
    # the package came from the copied source, not from this checkout, and with the PostgreSQL driver
    where = subprocess.run(
        [str(image.bin("python")), "-c", "import oarlock, psycopg; print(oarlock.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(image.venv), where.stdout
    # the component the image copied is complete: what the worker loads validates
    checked = subprocess.run(
        [str(image.bin("oarlock")), "validate", env["ELASTICIO_COMPONENT_PATH"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- systemd ---------------------------------------------------------------------------------------------------
def unit(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> values (a key may repeat), continuation lines joined."""
    values: dict[str, list[str]] = {}
    section, pending = "", ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key}", []).append(value)
    return values


def exec_args(command: str, after: str) -> list[str]:
    words = shlex.split(command)
    index = next(i for i, word in enumerate(words) if word.endswith("/oarlock"))
    assert words[index + 1 : index + 1 + len(after.split())] == after.split(), command
    return words[index + 1 + len(after.split()) :]


def test_the_worker_unit_runs_oarlock_run_as_a_user_and_waits_out_the_drain() -> None:
    worker = unit(SYSTEMD / "oarlock-worker@.service")
    args = exec_args(worker["Service.ExecStart"][0], "run")
    assert used_options(args) <= cli_options("run")
    assert worker["Service.User"] != ["root"] and worker["Service.KillSignal"] == ["SIGTERM"]
    assert worker["Service.EnvironmentFile"] == ["/etc/oarlock/%i.env"]
    grace = Settings.from_env(dict(env_lines()[0]), api_optional=True).grace_seconds
    assert int(worker["Service.TimeoutStopSec"][0]) > grace + DRAIN_OVERHEAD_SECONDS
    keys = unit(SYSTEMD / "oarlock-keys.service")
    key_args = exec_args(keys["Service.ExecStart"][0], "keys serve")
    assert "--keepalive" in key_args and used_options(key_args) <= cli_options("keys", "serve")
    assert keys["Service.User"] != ["root"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_both_units_against_the_fresh_install(image: Image, tmp_path: Path) -> None:
    for name, target in (("oarlock-worker@.service", "oarlock-worker@step_1.service"), ("oarlock-keys.service", None)):
        text = (SYSTEMD / name).read_text().replace("/opt/oarlock/venv", str(image.venv))
        path = tmp_path / (target or name)
        path.write_text(text)
        done = subprocess.run(
            ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0 and done.stdout + done.stderr == "", f"{name}: {done.stdout}{done.stderr}"
