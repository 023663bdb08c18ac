"""ELASTICIO_LOG_FORMAT=bunyan: the log lines a sailor platform reads, redacted like every other line."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from oarlock.logs import BunyanFormatter
from oarlock.redact import register_secret
from tests.support import TEST_COMPONENTS, run_cli


def record(level: int, message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("oarlock.worker", level, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_a_bunyan_line_has_bunyans_core_fields_with_numeric_levels_and_oarlocks_context() -> None:
    line = json.loads(BunyanFormatter("echo").format(record(logging.WARNING, "hello %s", "there", messageId="m-1")))
    assert {k: line[k] for k in ("name", "hostname", "pid", "level", "msg", "v")} == {
        "name": "echo",
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "level": 40,
        "msg": "hello there",
        "v": 0,
    }
    assert line["time"].endswith("Z") and line["messageId"] == "m-1"
    levels = [json.loads(BunyanFormatter().format(record(n, "x")))["level"] for n in (10, 20, 30, 40, 50)]
    assert levels == [20, 30, 40, 50, 60]  # debug, info, warn, error, fatal


def test_a_bunyan_line_is_redacted() -> None:
    register_secret("bunyan-planted-secret-42")
    line = BunyanFormatter().format(record(logging.ERROR, "failed with bunyan-planted-secret-42"))
    assert "bunyan-planted-secret-42" not in line and json.loads(line)["msg"] == "failed with ***"


def test_oarlock_call_writes_bunyan_lines_when_asked(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text("{}")
    done = run_cli(
        [
            "call",
            "fail",
            "--component",
            str(TEST_COMPONENTS / "basic"),
            "--cfg",
            str(cfg),
            "--no-keys",
            "--log-level",
            "debug",
        ],
        stdin='{"body": {}}\n',
        env={"ELASTICIO_LOG_FORMAT": "bunyan"},
    )
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert lines and all(line["v"] == 0 and isinstance(line["level"], int) and "msg" in line for line in lines)
