"""``oarlock demo``: the embedded-defaults run of the README's first command.

Starts the dev provider (single-use rotating refresh tokens, short-lived access tokens),
writes a cfg for it, and runs the reference component's ``request`` action through
``oarlock call`` three times: with a fresh token, after the token expired (proactive
refresh, updateKeys), and once more from the now stale cfg file (the embedded keys store
supplies the rotated credential). Events go to stdout as JSON lines, the story to stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click

from oarlock.devprovider import DevProvider
from oarlock.keys.private import write_private

ACCOUNT = "demo-account"
MESSAGES: list[dict[str, object]] = [
    {"body": {"method": "GET", "path": "/api/me"}},
    {"body": {"method": "POST", "path": "/api/items", "json": {"name": "written by oarlock demo"}}},
]


def say(text: str) -> None:
    click.echo(click.style(f"# {text}", fg="cyan"), err=True)


def find_component() -> Path:
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (candidate / "component.json").is_file() and (candidate / "lib" / "actions" / "request.py").is_file():
            return candidate
    raise click.ClickException("the reference component was not found: run `oarlock demo` from the repository root")


def call(component: Path, cfg_path: Path, keys: Path, messages: list[dict[str, object]]) -> int:
    stdin = "".join(json.dumps(m) + "\n" for m in messages)
    command = [
        sys.executable,
        "-m",
        "oarlock",
        "call",
        "request",
        "--component",
        str(component),
        "--cfg",
        str(cfg_path),
        "--keys",
        str(keys),
        "--log-level",
        "warning",
    ]
    say("$ oarlock call request --cfg " + str(cfg_path) + " --keys " + str(keys) + " < messages.jsonl")
    done = subprocess.run(command, input=stdin, text=True, stdout=subprocess.PIPE, check=False)
    for line in done.stdout.splitlines():
        click.echo(line)
    return done.returncode


def run_demo(*, ttl: float, workdir: Path) -> int:
    component = find_component()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path, keys = workdir / "cfg.json", workdir / "keys.sqlite"
    for stale in (keys, keys.with_name(keys.name + "-wal"), keys.with_name(keys.name + "-shm")):
        stale.unlink(missing_ok=True)
    with DevProvider(ttl=ttl, rotation="single-use") as provider:
        say(f"dev provider at {provider.url}: access tokens live {ttl:g} s, refresh tokens are single-use")
        cfg = provider.cfg(account=ACCOUNT, subject="demo-user")
        write_private(cfg_path, json.dumps(cfg, indent=2) + "\n")
        say(f"cfg written to {cfg_path}; 1) two requests with a fresh token")
        codes = [call(component, cfg_path, keys, MESSAGES)]
        say(f"2) waiting {ttl + 0.5:g} s until the access token has expired")
        time.sleep(ttl + 0.5)
        say("   same stale cfg file: oarlock refreshes before sending and emits updateKeys (tokens masked)")
        codes.append(call(component, cfg_path, keys, MESSAGES[:1]))
        time.sleep(ttl + 0.5)
        say("3) expired again; the cfg file's refresh token was used up (single-use), the keys store has the new one")
        codes.append(call(component, cfg_path, keys, MESSAGES[:1]))
        stats = provider.stats()
    say("stored credential: oarlock keys show " + ACCOUNT + " --keys " + str(keys))
    subprocess.run([sys.executable, "-m", "oarlock", "keys", "show", ACCOUNT, "--keys", str(keys)], check=False)
    say(
        f"provider saw {stats['token_calls']} token calls, {stats['api_calls']} API calls, "
        f"{stats['unauthorized']} 401s, {stats['invalid_grant']} invalid_grant"
    )
    ok = all(code == 0 for code in codes) and stats["unauthorized"] == 0 and stats["invalid_grant"] == 0
    say("demo finished: " + ("the credential kept itself alive" if ok else "something failed, see above"))
    return 0 if ok else 1
