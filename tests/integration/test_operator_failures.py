"""What an operator reads when `oarlock run` cannot start or loses its broker: one line, exit 2, and no pika noise.

SIGTERM while the broker cannot be reached ends the process at once (exit 0) instead of after the 30 s
connect deadline; a lost broker is one line per reconnect attempt (a TCP proxy in front of RabbitMQ is
cut and brought back); each start-up failure is exactly one stderr line and exit 2.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from oarlock.testing import BrokerSandbox
from tests.brokerproxy import BrokerProxy
from tests.support import TEST_COMPONENTS

AMQP = str(TEST_COMPONENTS / "amqp")
PASSWORD = "s3cret-broker-pw"


def closed_port() -> int:
    """A port nothing listens on (bound, then released): connects are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def offline_env() -> dict[str, str]:
    """A complete worker environment whose broker is a port nothing listens on."""
    return {
        "ELASTICIO_FLOW_ID": "flow-1",
        "ELASTICIO_EXEC_ID": "exec-1",
        "ELASTICIO_STEP_ID": "step_1",
        "ELASTICIO_CONTAINER_ID": "container-1",
        "ELASTICIO_WORKSPACE_ID": "workspace-1",
        "ELASTICIO_USER_ID": "user-1",
        "ELASTICIO_COMP_ID": "comp-1",
        "ELASTICIO_FUNCTION": "echo",
        "ELASTICIO_AMQP_URI": f"amqp://guest:{PASSWORD}@127.0.0.1:{closed_port()}/%2F",
        "ELASTICIO_LISTEN_MESSAGES_ON": "ops-in",
        "ELASTICIO_PUBLISH_MESSAGES_TO": "ops",
        "ELASTICIO_DATA_ROUTING_KEY": "ops.data",
        "ELASTICIO_ERROR_ROUTING_KEY": "ops.error",
        "ELASTICIO_REBOUND_ROUTING_KEY": "ops.rebound",
        "ELASTICIO_SNAPSHOT_ROUTING_KEY": "ops.snapshot",
        "ELASTICIO_MESSAGE_CRYPTO_IV": "0123456789abcdef",
        "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": "crypto-pw",
    }


def worker_env(broker: BrokerSandbox | None = None, **overrides: str) -> dict[str, str]:
    base = broker.env("echo") if broker is not None else offline_env()
    return {**os.environ, **base, "ELASTICIO_CFG": "{}", "ELASTICIO_LOG_LEVEL": "info", **overrides}


class Worker:
    """`oarlock run` in the background, its stderr in a file (a pipe nobody reads could block it)."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        with log.open("w") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "oarlock", "run", "--component", AMQP, *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]

    def wait_for(self, what: str, condition: Callable[[list[dict[str, Any]]], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.records()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"never saw {what}; stderr:\n" + "\n".join(self.lines()[-20:]))
            time.sleep(0.05)

    def terminate(self) -> tuple[int, float]:
        """SIGTERM; the exit code and the seconds until the process had exited (5 s at most: a hang guard)."""
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=5)
        return code, time.monotonic() - sent


def attempt_lines(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["logger"] == "oarlock.amqp" and "cannot connect to the broker" in r["message"]]


def test_sigterm_while_the_broker_cannot_be_reached_exits_0_at_once(tmp_path: Path) -> None:
    # debug level: the start's attempts are logged, so the test knows the worker is in its connect phase
    worker = Worker(worker_env(ELASTICIO_LOG_LEVEL="debug"), tmp_path / "worker.log")
    worker.wait_for("a first failed attempt", lambda records: bool(attempt_lines(records)))
    code, seconds = worker.terminate()
    assert code == 0, worker.lines()[-10:]
    messages = [r["message"] for r in worker.records()]
    assert any(m.startswith("stopped while connecting to the broker at 127.0.0.1:") for m in messages)
    assert not any("Traceback" in line for line in worker.lines())
    print(f"SIGTERM during the connect phase: exit 0 after {seconds:.3f} s")


@pytest.mark.amqp
def test_a_lost_broker_is_one_oarlock_line_per_reconnect_attempt_and_no_pika_line(
    broker: BrokerSandbox, tmp_path: Path
) -> None:
    with BrokerProxy() as proxy:
        worker = Worker(worker_env(broker, ELASTICIO_AMQP_URI=proxy.uri()), tmp_path / "worker.log")
        worker.wait_for("the worker consuming", lambda rs: any(r["message"].startswith("consuming ") for r in rs))
        proxy.go_dark()
        worker.wait_for("three failed reconnect attempts", lambda rs: len(attempt_lines(rs)) >= 3)
        proxy.come_back()
        broker.publish_input({"body": {"after": "the outage"}})
        (output,) = broker.take("data", 1, timeout=60)
        assert output.decrypted()["body"] == {"echo": {"after": "the outage"}}
        code, _ = worker.terminate()
    assert code == 0
    records = worker.records()  # every line is one of oarlock's JSON records: none of pika's, no traceback
    assert {r["logger"].split(".")[0] for r in records} == {"oarlock"}
    lost = [r for r in records if r["message"].endswith("): reconnecting")]  # the channel's or the connection's
    assert len(lost) == 1 and lost[0]["level"] == "warning", [r["message"] for r in records]
    assert f"127.0.0.1:{proxy.port} (vhost /)" in lost[0]["message"]
    attempts = attempt_lines(records)
    assert [r["attempt"] for r in attempts] == list(range(1, len(attempts) + 1))
    where = f"cannot connect to the broker at 127.0.0.1:{proxy.port} (vhost /): connection refused (attempt "
    assert all(r["level"] == "warning" and r["message"].startswith(where) for r in attempts)
    assert broker.count("in") == 0


def start_up_failure(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oarlock", "run", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("oarlock: ") and all(part in line for part in expected), line
    assert PASSWORD not in line and "Traceback" not in line
    return line


def test_a_missing_variable_is_one_line_and_exit_2() -> None:
    env = worker_env()
    del env["ELASTICIO_LISTEN_MESSAGES_ON"]
    assert_one_line(start_up_failure(env, "--component", AMQP), "ELASTICIO_LISTEN_MESSAGES_ON is required")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (f"amqp://guest:{PASSWORD}@127.0.0.1:not-a-port/%2F", "invalid AMQP URI (ELASTICIO_AMQP_URI): Port could not"),
        (f"rabbit://guest:{PASSWORD}@127.0.0.1/", "the scheme must be amqp:// or amqps://, not 'rabbit'"),
    ],
)
def test_a_bad_uri_is_one_line_and_exit_2(uri: str, expected: str) -> None:
    assert_one_line(start_up_failure(worker_env(ELASTICIO_AMQP_URI=uri), "--component", AMQP), expected)


def test_a_tls_file_that_is_missing_is_one_line_naming_the_variable_and_exit_2(tmp_path: Path) -> None:
    env = worker_env(
        ELASTICIO_AMQP_URI=f"amqps://guest:{PASSWORD}@127.0.0.1:{closed_port()}/%2F",
        ELASTICIO_AMQP_TLS_CA_FILE=str(tmp_path / "ca.pem"),
    )
    assert_one_line(
        start_up_failure(env, "--component", AMQP), f"ELASTICIO_AMQP_TLS_CA_FILE={tmp_path}/ca.pem: no such"
    )


def test_a_component_folder_without_component_json_is_one_line_and_exit_2(tmp_path: Path) -> None:
    assert_one_line(start_up_failure(worker_env(), "--component", str(tmp_path)), "component.json")


@pytest.mark.amqp
def test_a_broker_that_refuses_the_password_is_one_line_at_once_and_exit_2() -> None:
    env = worker_env(ELASTICIO_AMQP_URI=f"amqp://guest:{PASSWORD}@127.0.0.1:5672/%2F")
    assert_one_line(
        start_up_failure(env, "--component", AMQP),
        "cannot connect to the broker at 127.0.0.1:5672 (vhost /): the broker refused the user name or password",
    )


def test_a_broker_that_cannot_be_reached_is_one_line_after_the_connect_deadline_and_exit_2() -> None:
    port = closed_port()
    started = time.monotonic()
    done = start_up_failure(
        worker_env(ELASTICIO_AMQP_URI=f"amqp://guest:{PASSWORD}@127.0.0.1:{port}/%2F"), "--component", AMQP
    )
    line = assert_one_line(
        done, f"cannot connect to the broker at 127.0.0.1:{port} (vhost /) within 30 s: connection refused ("
    )
    print(f"unreachable broker: {line!r} after {time.monotonic() - started:.1f} s")


@pytest.mark.amqp
def test_an_input_queue_that_does_not_exist_is_one_line_naming_it_and_exit_2_not_a_reconnect_loop(
    broker: BrokerSandbox,
) -> None:
    started = time.monotonic()
    done = start_up_failure(
        worker_env(broker, ELASTICIO_LISTEN_MESSAGES_ON=f"{broker.input_queue}-missing"),
        "--component",
        AMQP,
        "--burst",
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"oarlock: queue {broker.input_queue}-missing (ELASTICIO_LISTEN_MESSAGES_ON) cannot be")
    assert done.stderr.count("reconnecting") <= 1 and "Traceback" not in done.stderr  # the check closed a channel
    assert time.monotonic() - started < 20


@pytest.mark.amqp
def test_an_exchange_that_does_not_exist_is_one_line_naming_it_and_exit_2_not_a_loop_rerunning_the_input(
    broker: BrokerSandbox,
) -> None:
    broker.publish_input({"body": {"n": 1}})
    done = start_up_failure(
        worker_env(broker, ELASTICIO_PUBLISH_MESSAGES_TO=f"{broker.exchange}-missing"), "--component", AMQP, "--burst"
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert (
        last
        == f"oarlock: exchange {broker.exchange}-missing (ELASTICIO_PUBLISH_MESSAGES_TO) does not exist or is not accessible"
    )
    assert broker.count("in") == 1, "the input was not taken: it waits for a worker that can publish its outputs"
