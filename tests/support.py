"""Paths to the shared test data and helpers to run the CLI as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"  # the sailor vectors and the component.json corpus
TEST_COMPONENTS = Path(__file__).resolve().parent / "components"


def run_cli(
    args: Sequence[str],
    *,
    stdin: str = "",
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m oarlock ARGS`` as a subprocess, like a user at a shell."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "oarlock", *args],
        input=stdin,
        text=True,
        capture_output=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def event_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def provider_cfg(dev: Any, /, *, account: str = "acct-1", subject: str = "user-1", **oauth2: Any) -> dict[str, Any]:
    """A cfg for the reference component against a DevProvider, with a freshly minted credential."""
    cfg: dict[str, Any] = dev.cfg(account=account, subject=subject, **oauth2)
    return cfg


def jsonl(messages: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(m) + "\n" for m in messages)
