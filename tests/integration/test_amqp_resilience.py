"""The worker loses nothing: kill -9, server-side connection close, SIGTERM, updateKeys before the ack."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from oarlock.devprovider import DevProvider
from oarlock.testing import BrokerSandbox
from tests.support import TEST_COMPONENTS, provider_cfg, run_cli

AMQP = str(TEST_COMPONENTS / "amqp")
pytestmark = pytest.mark.amqp


class Worker:
    """A worker subprocess whose logs go to a file (a pipe nobody reads would block it)."""

    def __init__(
        self, broker: BrokerSandbox, function: str, cfg_path: Path, *args: str, env: dict[str, str] | None = None
    ) -> None:
        full_env = {**os.environ, **broker.env(function), **(env or {})}
        self.log = cfg_path.parent / f"worker-{time.monotonic_ns()}.log"
        with self.log.open("w") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "oarlock", "run", "--component", AMQP, "--cfg", str(cfg_path), *args],
                env=full_env,
                stdout=subprocess.DEVNULL,
                stderr=sink,
                text=True,
            )

    def wait(self, timeout: float) -> tuple[int, str]:
        code = self.process.wait(timeout)
        return code, self.log.read_text()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)


def start_worker(
    broker: BrokerSandbox, function: str, cfg_path: Path, *args: str, env: dict[str, str] | None = None
) -> Worker:
    return Worker(broker, function, cfg_path, *args, env=env)


def write_cfg(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    return path


def wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def unsettled(queue: str) -> tuple[int, int] | None:
    """(ready, unacknowledged) messages of a queue as the broker counts them (None if it has no such queue)."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for line in listed.splitlines():
        name, ready, unacked = line.split("\t")
        if name == queue:
            return int(ready), int(unacked)
    return None


def consumers(broker: BrokerSandbox) -> int:
    return int(broker.channel.queue_declare(broker.input_queue, passive=True).method.consumer_count)


class HeldApi:
    """A real local HTTP API for the ``api`` function: every ``GET /api/me`` waits until the test releases it."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.arrived = threading.Condition()
        self.calls = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with api.arrived:
                    api.calls += 1
                    api.arrived.notify_all()
                api.released.wait(60)
                body = json.dumps({"subject": "held"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for_calls(self, count: int, timeout: float) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: self.calls >= count, timeout), f"{self.calls} of {count} calls arrived"

    @contextmanager
    def serving(self) -> Iterator[HeldApi]:
        thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.released.set()
            self.server.shutdown()
            self.server.server_close()


def outputs(broker: BrokerSandbox, expected: int) -> collections.Counter[int]:
    received = broker.take("data", expected + 500, timeout=5)
    return collections.Counter(r.decrypted()["body"]["n"] for r in received)


def test_update_keys_is_published_before_the_ack_and_the_next_message_uses_the_rotated_token(
    broker: BrokerSandbox, tmp_path: Path
) -> None:
    with DevProvider(ttl=60, rotation="single-use") as provider:
        cfg = provider_cfg(provider, account="acct-amqp")
        cfg["oauth"]["expires_at"] = 0  # expired: the first message must refresh
        for n in range(5):
            broker.publish_input({"body": {"n": n}})
        worker = start_worker(broker, "api", write_cfg(tmp_path, cfg), "--burst")
        code, stderr = worker.wait(120)
        stats = provider.stats()
    assert code == 0, stderr[-3000:]
    assert stats["refresh_calls"] == 1 and stats["invalid_grant"] == 0 and stats["unauthorized"] == 0
    (update,) = broker.take("updateKeys", 1)
    payload = update.decrypted()
    assert payload["account"] == "acct-amqp" and isinstance(payload["version"], int)
    assert payload["response"]["refresh_token"] == payload["oauth"]["refresh_token"] != cfg["oauth"]["refresh_token"]
    assert payload["oauth"]["expires_at"] > time.time()
    data = broker.take("data", 5)
    assert sorted(d.decrypted()["body"]["n"] for d in data) == [0, 1, 2, 3, 4]
    assert update.headers["parentMessageId"] in {d.headers["parentMessageId"] for d in data}
    assert broker.count("in") == 0
    # the platform side persists it
    keys = tmp_path / "keys.sqlite"
    done = run_cli(
        ["keys", "serve", "--store", str(keys), "--queue", broker.queues["updateKeys"], "--burst"],
        env={
            "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": broker.password or "",
            "ELASTICIO_MESSAGE_CRYPTO_IV": broker.iv or "",
        },
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stored"] == 0  # already taken above: nothing left to store
    for_store = {"account": "acct-amqp", "version": payload["version"], "oauth": payload["oauth"]}
    broker.channel.basic_publish(broker.exchange, broker.routing_keys["updateKeys"], broker.cipher.encrypt(for_store))
    done = run_cli(
        ["keys", "serve", "--store", str(keys), "--queue", broker.queues["updateKeys"], "--burst"],
        env={
            "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": broker.password or "",
            "ELASTICIO_MESSAGE_CRYPTO_IV": broker.iv or "",
        },
    )
    assert json.loads(done.stdout)["stored"] == 1
    shown = json.loads(run_cli(["keys", "show", "acct-amqp", "--keys", str(keys)]).stdout)
    assert shown["version"] == payload["version"] and shown["oauth"]["refresh_token"] == "***"


def test_kill_9_in_the_middle_of_2000_messages_loses_none(broker: BrokerSandbox, tmp_path: Path) -> None:
    total = 2000
    for n in range(total):
        broker.publish_input({"body": {"n": n, "sleep": 0.01}})  # about 2.5 s of work at concurrency 8
    cfg = write_cfg(tmp_path, {})
    env = {"ELASTICIO_RABBITMQ_PREFETCH_SAILOR": "40"}
    worker = start_worker(broker, "slow", cfg, "--concurrency", "8", env=env)
    wait_for(lambda: broker.count("data") >= 400)
    worker.signal(signal.SIGKILL)
    worker.wait(10)
    assert broker.count("data") < total, "the kill must land in the middle of the stream"
    in_flight_bound = 40
    restarted = start_worker(broker, "slow", cfg, "--burst", "--concurrency", "8", env=env)
    code, stderr = restarted.wait(180)
    assert code == 0, stderr[-3000:]
    counts = outputs(broker, total)
    assert set(counts) == set(range(total)), f"lost: {sorted(set(range(total)) - set(counts))[:20]}"
    duplicates = sum(c - 1 for c in counts.values())
    print(f"kill -9 after >=400 outputs: {duplicates} duplicates (in-flight bound {in_flight_bound})")
    assert duplicates <= in_flight_bound
    assert broker.count("in") == 0


def close_worker_connections(name_part: str) -> int:
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    closed = 0
    for line in listed.splitlines():
        if name_part in line:
            pid = line.split("\t", 1)[0]
            subprocess.run(
                ["rabbitmqctl", "-q", "close_connection", pid, "test: server-side close"],
                capture_output=True,
                check=False,
            )
            closed += 1
    return closed


def test_a_server_side_connection_close_mid_stream_is_survived_and_nothing_is_lost(
    broker: BrokerSandbox, tmp_path: Path
) -> None:
    total = 600
    for n in range(total):
        broker.publish_input({"body": {"n": n, "sleep": 0.02}})  # about 3 s of work at concurrency 4
    step = f"step-close-{broker.id}"
    env = {"ELASTICIO_RABBITMQ_PREFETCH_SAILOR": "20", "ELASTICIO_STEP_ID": step}
    worker = start_worker(broker, "slow", write_cfg(tmp_path, {}), "--burst", "--concurrency", "4", env=env)
    wait_for(lambda: broker.count("data") >= 100)
    assert close_worker_connections(step) == 2
    code, stderr = worker.wait(180)
    assert code == 0, stderr[-3000:]
    assert "reconnecting" in stderr
    counts = outputs(broker, total)
    assert set(counts) == set(range(total))
    assert sum(c - 1 for c in counts.values()) <= 20
    assert broker.count("in") == 0


def test_sigterm_lets_in_flight_messages_finish_and_exits_0(broker: BrokerSandbox, tmp_path: Path) -> None:
    for n in range(6):
        broker.publish_input({"body": {"n": n}})
    env = {"ELASTICIO_RABBITMQ_PREFETCH_SAILOR": "6"}
    with HeldApi().serving() as api:
        worker = start_worker(broker, "api", write_cfg(tmp_path, {"baseUrl": api.url}), "--concurrency", "6", env=env)
        api.wait_for_calls(6, timeout=60)  # all six delivered and in flight: each waits in the function for its answer
        consuming = consumers(broker)
        worker.signal(signal.SIGTERM)
        wait_for(lambda: consumers(broker) < consuming, timeout=30)  # the worker is stopping: it cancelled its consumer
        assert worker.process.poll() is None and broker.count("data") == 0, "nothing finished before the SIGTERM"
        api.released.set()
        code, stderr = worker.wait(60)
    assert code == 0, stderr[-3000:]
    assert broker.count("data") == 6, "every in-flight message finished before the exit"
    assert "6 of at most 6 function threads were needed" in stderr  # six waiting calls, six threads
    assert sorted(outputs(broker, 6)) == list(range(6))
    assert broker.count("in") == 0


def test_two_workers_sharing_a_keys_store_never_burn_a_single_use_refresh_token(
    broker: BrokerSandbox, tmp_path: Path
) -> None:
    import uuid

    from oarlock.keys.postgres import PostgresKeyStore

    table = f"oarlock_fleet_{uuid.uuid4().hex[:10]}"
    store_url = "postgresql://postgres@127.0.0.1:5432/test"
    try:
        with DevProvider(ttl=1, rotation="single-use", latency_ms=40) as provider:
            cfg = provider_cfg(provider, account="acct-fleet")
            total = 400
            for n in range(total):
                broker.publish_input({"body": {"n": n}})
            env = {"ELASTICIO_KEYS_STORE": f"{store_url}?table={table}", "ELASTICIO_RABBITMQ_PREFETCH_SAILOR": "8"}
            path = write_cfg(tmp_path, cfg)
            workers = [start_worker(broker, "api", path, "--burst", "--concurrency", "4", env=env) for _ in range(2)]
            results = [worker.wait(180) for worker in workers]
            stats = provider.stats()
        for code, log in results:
            assert code == 0, log[-3000:]
        counts = outputs(broker, total)
        assert set(counts) == set(range(total))
        assert stats["invalid_grant"] == 0, "a worker burnt the other's single-use refresh token"
        assert stats["refresh_calls"] >= 2
        assert all("refreshed" in log or "another process refreshed" in log for _, log in results)
    finally:
        PostgresKeyStore(store_url, table=table).drop()
