"""`oarlock keys serve` stops cleanly on SIGINT as on SIGTERM, and when stopped while still connecting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

UNREACHABLE = "amqp://guest:guest@127.0.0.1:9/%2F"


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "oarlock", "keys", "serve", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_while_still_connecting_ends_the_service_at_once_with_exit_0(tmp_path: Path) -> None:
    service = serve("--store", str(tmp_path / "keys.sqlite"), "--queue", "q", env={"ELASTICIO_AMQP_URI": UNREACHABLE})
    time.sleep(1.0)  # it is retrying the broker now (the connect deadline is 10 s)
    started = time.monotonic()
    service.send_signal(signal.SIGTERM)
    out, err = service.communicate(timeout=30)
    assert service.returncode == 0, err
    assert time.monotonic() - started < 5
    assert "Traceback" not in err and "cannot connect" not in err
    assert json.loads(out) == {"stored": 0, "refused": 0, "rejected": 0}


@pytest.mark.amqp
def test_sigint_stops_the_service_like_sigterm_with_its_summary_and_exit_0(tmp_path: Path, broker: Any) -> None:
    env = {"ELASTICIO_AMQP_URI": broker.amqp_uri, "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": broker.password or ""}
    env["ELASTICIO_MESSAGE_CRYPTO_IV"] = broker.iv or ""
    service = serve("--store", str(tmp_path / "keys.sqlite"), "--queue", broker.queues["updateKeys"], env=env)
    deadline = time.monotonic() + 30
    lines: list[str] = []
    assert service.stderr is not None
    while time.monotonic() < deadline:  # wait for its start line
        line = service.stderr.readline()
        lines.append(line)
        if "keys service started" in line or not line:
            break
    service.send_signal(signal.SIGINT)
    out, err = service.communicate(timeout=60)
    assert service.returncode == 0, "".join(lines) + err
    assert "Aborted" not in err and json.loads(out) == {"stored": 0, "refused": 0, "rejected": 0}
