"""A new author's first hour, without friction (issue 15 item 6).

The README's "Write a component in 15 lines" runs as written: its files and commands are read out
of README.md here, so the README and this test cannot drift; so do the README's pytest examples
for that component. ``oarlock call`` takes the cfg's oauth2 before it asks for component.json's
``{{ENV}}`` variables, by the same rule as ``oarlock verify``; a verifier that returns false says
what the last response was; a trigger run with empty stdin polls once with an empty message.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oarlock.devprovider import DevProvider
from tests.support import REPO, event_lines, run_cli

README = REPO / "README.md"
BIN = Path(sys.executable).parent
FILE_BLOCK = re.compile(r"`(my-component/[^`\s]+)`:\s*\n\n```[a-z]*\n(.*?)^```", re.S | re.M)
SHELL_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def readme_section(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    start, end = f"<!-- example: {name} -->", f"<!-- /example: {name} -->"
    assert start in text and end in text, f"README.md has no {start} ... {end} section"
    return text[text.index(start) + len(start) : text.index(end)]


def write_example(folder: Path) -> list[str]:
    """The 15-line example's files written under ``folder``; returns its commands."""
    section = readme_section("15 lines")
    files = FILE_BLOCK.findall(section)
    assert [path for path, _ in files] == [
        "my-component/component.json",
        "my-component/lib/actions/hello.py",
        "my-component/verify_credentials.py",
    ]
    for path, body in files:
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body, encoding="utf-8")
    code_lines = sum(len(body.strip().splitlines()) for _, body in files)
    assert code_lines <= 15, f"the 15-line example has {code_lines} lines"
    shell = SHELL_BLOCK.findall(section)
    assert len(shell) == 1
    return [line for line in shell[0].splitlines() if line.strip()]


def shell(line: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    return subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=environ, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_the_15_line_example_of_the_readme_runs_as_written(
    tmp_path: Path, background: list[subprocess.Popen[str]]
) -> None:
    commands = write_example(tmp_path)
    outputs: list[subprocess.CompletedProcess[str]] = []
    for line in commands:
        if line.endswith("&"):
            # as a person does: start it, wait for its line; on a port of its own (the machine is shared)
            args = [*shlex.split(line[:-1]), "--port", "0"]
            assert args[0] == "oarlock"
            process = subprocess.Popen(
                [str(BIN / "oarlock"), *args[1:]], cwd=tmp_path, stdout=subprocess.PIPE, text=True
            )
            background.append(process)
            assert process.stdout is not None
            assert json.loads(process.stdout.readline())["url"].startswith("http://127.0.0.1:")
            continue
        outputs.append(shell(line, tmp_path))
    called, verified, validated = outputs
    assert called.returncode == 0, called.stderr
    events = event_lines(called.stdout)
    assert [e["event"] for e in events] == ["updateSnapshot", "data"]
    assert events[1]["data"]["body"]["hello"]["subject"] == "user-1"
    assert verified.returncode == 0 and json.loads(verified.stdout) == {"verified": True}, verified.stdout
    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_the_readme_tests_of_the_15_line_component_pass_as_written(tmp_path: Path) -> None:
    write_example(tmp_path)
    blocks = re.findall(r"^```python\n(.*?)^```", readme_section("tests of my-component"), re.S | re.M)
    assert len(blocks) == 1
    (tmp_path / "test_hello.py").write_text(blocks[0])
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_hello.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0 and "3 passed" in ran.stdout, ran.stdout + ran.stderr


# -- call takes the cfg's oauth2 first, as verify does ----------------------------------------------

TEMPLATE_COMPONENT = {
    "title": "Placeholders",
    "envVars": {"OAUTH_CLIENT_ID": {"required": True}, "OAUTH_CLIENT_SECRET": {"required": True}},
    "credentials": {
        "oauth2": {
            "auth_uri": "{{AUTH_HOST}}/authorize",
            "token_uri": "{{AUTH_HOST}}/token",
            "client_id": "{{OAUTH_CLIENT_ID}}",
            "client_secret": "{{OAUTH_CLIENT_SECRET}}",
        }
    },
    "actions": {"me": {"title": "Me", "main": "lib/me.py", "metadata": {"in": {}, "out": {}}}},
    "triggers": {"tick": {"title": "Tick", "main": "lib/tick.py", "type": "polling"}},
}
ME = "def process(msg, cfg, snapshot, ctx):\n    return ctx.http.get(cfg['baseUrl'] + '/api/me').json()\n"
TICK = "def process(msg, cfg, snapshot):\n    return {'polled': msg.body, 'count': snapshot.get('count', 0) + 1}\n"
VERIFY = "def verify(cfg, ctx):\n    return ctx.http.get(cfg['baseUrl'] + '/api/me').ok\n"
NO_OAUTH_ENV = {"OAUTH_CLIENT_ID": "", "OAUTH_CLIENT_SECRET": "", "AUTH_HOST": ""}


def placeholder_component(folder: Path, verifier: str = VERIFY) -> Path:
    (folder / "lib").mkdir(parents=True)
    (folder / "component.json").write_text(json.dumps(TEMPLATE_COMPONENT))
    (folder / "lib" / "me.py").write_text(ME)
    (folder / "lib" / "tick.py").write_text(TICK)
    (folder / "verify_credentials.py").write_text(verifier)
    return folder


def cli(args: list[str], cwd: Path, *, stdin: str = "", env: dict[str, str] | None = None) -> Any:
    """run_cli with the variables named "" removed from the environment."""
    environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if v != ""}
    return subprocess.run(
        [sys.executable, "-m", "oarlock", *args],
        input=stdin,
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_call_and_verify_take_the_cfgs_oauth2_and_need_no_env_variable(tmp_path: Path) -> None:
    component = placeholder_component(tmp_path / "c")
    with DevProvider() as provider:
        cfg = provider.cfg(account="acct-f")  # oauth2: token_uri, client_id, client_secret of the provider
        cfg["oauth"]["expires_at"] = time.time() - 1  # the run must refresh: with the cfg's client
        (tmp_path / "cfg.json").write_text(json.dumps(cfg))
        common = ["--component", str(component), "--cfg", "cfg.json", "--keys", "keys.sqlite"]
        called = cli(["call", "me", *common], tmp_path, stdin='{"body": {}}\n', env=NO_OAUTH_ENV)
        verified = cli(["verify", *common], tmp_path, env=NO_OAUTH_ENV)
        refreshes = provider.stats()["refresh_calls"]
    assert called.returncode == 0, called.stderr
    assert event_lines(called.stdout)[-1]["data"]["body"]["subject"] == "user-1"
    assert verified.returncode == 0 and json.loads(verified.stdout) == {"verified": True}, verified.stderr
    assert refreshes == 1  # one refresh, with the cfg's client; verify started from the stored result


def test_call_and_verify_name_the_missing_variable_and_the_cfg_key_that_would_do_alike(tmp_path: Path) -> None:
    component = placeholder_component(tmp_path / "c")
    with DevProvider() as provider:
        cfg = provider.cfg()
        del cfg["oauth2"]["client_secret"]
        (tmp_path / "cfg.json").write_text(json.dumps(cfg))
        common = ["--component", str(component), "--cfg", "cfg.json", "--no-keys"]
        env = {**NO_OAUTH_ENV, "AUTH_HOST": provider.url}
        called = cli(["call", "me", *common], tmp_path, stdin='{"body": {}}\n', env=env)
        verified = cli(["verify", *common], tmp_path, env=env)
        with_env = cli(["call", "me", *common], tmp_path, stdin="{}\n", env={**env, "OAUTH_CLIENT_SECRET": "s"})
    expected = (
        "oarlock: credentials.oauth2.client_secret: environment variable OAUTH_CLIENT_SECRET is not set "
        "(used as {{OAUTH_CLIENT_SECRET}}); or give the cfg an oauth2.client_secret"
    )
    assert called.returncode == 2 and called.stderr.strip().splitlines()[-1] == expected
    assert verified.returncode == 2 and verified.stderr.strip().splitlines()[-1] == expected
    assert with_env.returncode == 0, with_env.stderr


def test_a_verifier_that_returns_false_says_what_the_last_response_was(tmp_path: Path) -> None:
    verifier = "def verify(cfg, ctx):\n    return ctx.http.get(cfg['baseUrl'] + '/me?secret=abc123').ok\n"
    component = placeholder_component(tmp_path / "c", verifier)
    with DevProvider() as provider:
        (tmp_path / "cfg.json").write_text(json.dumps(provider.cfg()))
        verified = cli(["verify", "--component", str(component), "--cfg", "cfg.json", "--no-keys"], tmp_path)
    assert verified.returncode == 1
    assert json.loads(verified.stdout) == {
        "verified": False,
        "reason": f"the verifier returned false (last response: 404 from GET {provider.url}/me)",
    }
    assert "abc123" not in verified.stdout + verified.stderr


def test_a_trigger_run_with_empty_stdin_polls_once_with_an_empty_message_and_says_so(tmp_path: Path) -> None:
    component = placeholder_component(tmp_path / "c")
    (tmp_path / "cfg.json").write_text("{}")
    (tmp_path / "snapshot.json").write_text('{"count": 4}')
    common = ["--component", str(component), "--cfg", "cfg.json", "--no-keys"]
    polled = run_cli(["call", "tick", *common, "--snapshot", "snapshot.json"], stdin="", cwd=tmp_path)
    assert polled.returncode == 0, polled.stderr
    assert [(e["event"], e["data"]["body"]) for e in event_lines(polled.stdout)] == [
        ("data", {"polled": {}, "count": 5})
    ]
    assert "no input lines: trigger tick runs once with an empty message" in polled.stderr
    action = run_cli(["call", "me", *common], stdin="", cwd=tmp_path)
    assert action.returncode == 0 and action.stdout == "" and "runs once" not in action.stderr  # an action waits


def test_a_trigger_started_from_a_terminal_does_not_wait_for_typed_input(tmp_path: Path) -> None:
    component = placeholder_component(tmp_path / "c")
    (tmp_path / "cfg.json").write_text("{}")
    command = ["call", "tick", "--component", str(component), "--cfg", "cfg.json", "--no-keys"]
    controller, terminal = os.openpty()
    try:
        polled = subprocess.run(
            [sys.executable, "-m", "oarlock", *command],
            stdin=terminal,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert polled.returncode == 0, polled.stderr
    assert [e["data"]["body"] for e in event_lines(polled.stdout)] == [{"polled": {}, "count": 1}]
