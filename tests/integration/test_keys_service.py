"""The platform side as processes: ``oarlock keys serve`` on a real broker, ``keys refresh-dormant`` on the dev provider."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pika
import pytest

from oarlock.errors import KeyStoreError
from oarlock.keys.store import KeyStore, StoredCredential, open_store
from tests.brokerproxy import BrokerProxy
from tests.support import run_cli

UNREACHABLE = "amqp://guest:guest@127.0.0.1:9/%2F"


def crypto_env(broker: Any) -> dict[str, str]:
    return {
        "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": broker.password or "",
        "ELASTICIO_MESSAGE_CRYPTO_IV": broker.iv or "",
        "ELASTICIO_AMQP_URI": broker.amqp_uri,
    }


def publish_update(
    broker: Any, payload: Any = None, *, raw: bytes | None = None, headers: dict[str, Any] | None = None
) -> None:
    body = raw if raw is not None else broker.cipher.encrypt(payload)
    properties = pika.BasicProperties(headers=headers) if headers is not None else None
    broker.channel.basic_publish(broker.exchange, broker.routing_keys["updateKeys"], body, properties)


POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


class ServeProcess:
    """``oarlock keys serve ARGS`` as a process; its JSON log lines collected as they come."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "oarlock", "keys", "serve", *args],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.text: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.text.append(line)
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def messages(self) -> list[str]:
        return [line["message"] for line in list(self.lines)]

    def wait_for(self, text: str, what: str, *, count: int = 1, timeout: float = 60.0) -> list[dict[str, Any]]:
        def found() -> list[dict[str, Any]]:
            return [line for line in list(self.lines) if text in line["message"]]

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"keys serve ended before {what}: {''.join(self.text)[-3000:]}")
            return len(found()) >= count

        wait_until(ready, what, timeout)
        return found()

    def started(self) -> dict[str, Any]:
        (line,) = self.wait_for("keys service started: ", "the service started")
        details: dict[str, Any] = json.loads(line["message"].split(": ", 1)[1])
        return details

    def stop(self) -> tuple[int, str, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=90)
        self._reader.join(10)
        return self.process.returncode, out, "".join(self.text)


@pytest.fixture
def pg_table() -> Iterator[str]:
    from oarlock.keys.postgres import PostgresKeyStore

    name = f"oarlock_test_{uuid.uuid4().hex[:10]}"
    yield name
    store = PostgresKeyStore(POSTGRES, table=name)
    store.drop()
    store.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def stored_version(keys: str, account: str) -> int | None:
    store = open_store(keys)
    try:
        stored = store.get(account)
    finally:
        store.close()
    return None if stored is None else stored.version


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False)


def connections_named(name: str) -> list[str]:
    """The broker's ids of the connections whose client named them ``name``."""
    listed = rabbitmqctl("list_connections", "--no-table-headers", "pid", "client_properties")
    assert listed.returncode == 0, listed.stderr
    marker = f'{{"connection_name","{name}"}}'
    return [line.split("\t", 1)[0] for line in listed.stdout.splitlines() if marker in line]


def messages_in(queue: str) -> int:
    """Ready plus unacknowledged messages of a queue, as the broker counts them."""
    listed = rabbitmqctl("list_queues", "--no-table-headers", "name", "messages")
    assert listed.returncode == 0, listed.stderr
    counts = dict(line.split("\t") for line in listed.stdout.splitlines() if "\t" in line)
    return int(counts[queue])


@pytest.mark.amqp
def test_keys_serve_stores_the_newest_and_rejects_garbage(tmp_path: Path) -> None:
    from oarlock.testing import BrokerSandbox

    keys = str(tmp_path / "keys.sqlite")
    with BrokerSandbox() as broker:
        publish = broker.channel.basic_publish
        key = broker.routing_keys["updateKeys"]
        publish(broker.exchange, key, broker.cipher.encrypt({"account": "a", "version": 5, "oauth": {"t": 5}}))
        publish(broker.exchange, key, broker.cipher.encrypt({"account": "a", "version": 4, "oauth": {"t": 4}}))
        publish(broker.exchange, key, b"garbage that is not encrypted")
        env = {
            "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": broker.password or "",
            "ELASTICIO_MESSAGE_CRYPTO_IV": broker.iv or "",
        }
        done = run_cli(["keys", "serve", "--store", keys, "--queue", broker.queues["updateKeys"], "--burst"], env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"stored": 1, "refused": 1, "rejected": 1}
        assert broker.count("updateKeys") == 0
    assert "updateKeys message rejected" in done.stderr
    stored = open_store(keys).get("a")
    assert stored is not None and stored.oauth == {"t": 5}


@pytest.mark.amqp
def test_malformed_messages_are_rejected_and_the_good_one_after_them_is_stored(tmp_path: Path, broker: Any) -> None:
    keys = str(tmp_path / "keys.sqlite")
    publish_update(broker, raw=b"garbage that is not encrypted")
    publish_update(broker, [1, 2, 3])  # encrypted, but not an object
    publish_update(broker, {"account": "a", "oauth": {"access_token": "AT-secret-9"}})  # no version
    publish_update(broker, {"account": "a", "version": 2, "oauth": {"t": 2}})
    queue = broker.queues["updateKeys"]
    done = run_cli(["keys", "serve", "--store", keys, "--queue", queue, "--burst"], env=crypto_env(broker))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"stored": 1, "refused": 0, "rejected": 3}
    assert broker.count("updateKeys") == 0 and messages_in(queue) == 0  # rejected ones are not requeued
    rejected = [line for line in done.stderr.splitlines() if "updateKeys message rejected" in line]
    assert len(rejected) == 3 and "has no 'version'" in rejected[2]
    assert "AT-secret-9" not in done.stderr and "Traceback" not in done.stderr
    assert stored_version(keys, "a") == 2


@pytest.mark.amqp
@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl to close a connection")
def test_the_service_reconnects_after_the_broker_closed_its_connection(tmp_path: Path, broker: Any) -> None:
    keys = str(tmp_path / "keys.sqlite")
    queue = broker.queues["updateKeys"]
    publish_update(broker, {"account": "a", "version": 1, "oauth": {"t": 1}})
    service = subprocess.Popen(
        [sys.executable, "-m", "oarlock", "keys", "serve", "--store", keys, "--queue", queue],
        env={**os.environ, **crypto_env(broker)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: stored_version(keys, "a") == 1, "the first update is stored")
        wait_until(lambda: messages_in(queue) == 0, "the first update is acked")
        named = connections_named(f"oarlock keys serve {queue}")
        assert named, "the service's connections are not listed by the broker"
        for connection in named:
            rabbitmqctl("close_connection", connection, "test")  # the second may be gone already
        publish_update(broker, {"account": "a", "version": 2, "oauth": {"t": 2}})
        wait_until(lambda: stored_version(keys, "a") == 2, "the update published after the close is stored")
        wait_until(lambda: messages_in(queue) == 0, "the second update is acked")
    finally:
        service.send_signal(signal.SIGTERM)
        out, err = service.communicate(timeout=60)
    assert service.returncode == 0, err
    assert json.loads(out) == {"stored": 2, "refused": 0, "rejected": 0}
    assert "reconnecting" in err and "Traceback" not in err


def test_a_broker_that_cannot_be_reached_at_start_is_a_one_line_error_and_exit_3(tmp_path: Path) -> None:
    keys = str(tmp_path / "keys.sqlite")
    done = run_cli(
        ["keys", "serve", "--store", keys, "--queue", "q", "--burst"], env={"ELASTICIO_AMQP_URI": UNREACHABLE}
    )
    assert done.returncode == 3
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("oarlock: cannot connect to the broker at 127.0.0.1:9 (vhost /) within ")
    assert "guest" not in line


@pytest.mark.amqp
def test_a_queue_that_does_not_exist_is_a_one_line_error_and_exit_3(tmp_path: Path, broker: Any) -> None:
    keys = str(tmp_path / "keys.sqlite")
    missing = broker.queues["updateKeys"] + "-missing"
    done = run_cli(["keys", "serve", "--store", keys, "--queue", missing, "--burst"], env=crypto_env(broker))
    assert done.returncode == 3 and done.stdout == ""
    assert f"oarlock: queue {missing} cannot be consumed on the broker at 127.0.0.1:5672" in done.stderr
    assert "Traceback" not in done.stderr


class ExplodingStore:
    """A real SQLite store that fails with an unexpected exception for one account."""

    def __init__(self, inner: KeyStore, account: str) -> None:
        self.inner, self.account = inner, account

    def save(
        self,
        account: str,
        oauth: dict[str, Any],
        version: int,
        response: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> bool:
        if account == self.account:
            raise RuntimeError("the store tripped over its own feet")
        return self.inner.save(account, oauth, version, response, settings)

    def get(self, account: str) -> StoredCredential | None:
        return self.inner.get(account)

    def list(self) -> list[StoredCredential]:
        return self.inner.list()

    def lock(self, account: str, timeout: float = 30.0) -> Any:
        return self.inner.lock(account, timeout)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.amqp
def test_an_unexpected_failure_for_one_message_rejects_it_and_the_service_goes_on(
    tmp_path: Path, broker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from oarlock.keys.consumer import KeysService

    store = ExplodingStore(open_store(str(tmp_path / "keys.sqlite")), "boom")
    publish_update(broker, {"account": "boom", "version": 1, "oauth": {"t": 1}})
    publish_update(broker, {"account": "fine", "version": 1, "oauth": {"t": 1}})
    service = KeysService(store, broker.amqp_uri, broker.queues["updateKeys"], broker.cipher)
    with caplog.at_level(logging.INFO, logger="oarlock.keys.service"):
        assert service.run(burst=True) == 1
    assert (service.stored, service.refused, service.rejected) == (1, 0, 1)
    assert broker.count("updateKeys") == 0 and messages_in(broker.queues["updateKeys"]) == 0
    assert "updateKeys message rejected (account boom): unexpected RuntimeError" in caplog.text
    fine = store.get("fine")
    assert fine is not None and fine.version == 1
    store.close()


class BlippingStore(ExplodingStore):
    """A real SQLite store that cannot be written for its first ``failures`` saves, as a database restarting."""

    def __init__(self, inner: KeyStore, failures: int) -> None:
        super().__init__(inner, "")
        self.failures = failures

    def save(
        self,
        account: str,
        oauth: dict[str, Any],
        version: int,
        response: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> bool:
        if self.failures > 0:
            self.failures -= 1
            raise KeyStoreError("keys store postgresql://oarlock:***@db/keys: OperationalError: the server restarts")
        return self.inner.save(account, oauth, version, response, settings)


@pytest.mark.amqp
def test_a_store_that_cannot_be_written_leaves_the_update_in_the_queue_and_it_is_stored_once_the_store_is_back(
    tmp_path: Path, broker: Any
) -> None:
    from oarlock.keys.consumer import KeysService

    store = BlippingStore(open_store(str(tmp_path / "keys.sqlite")), failures=2)
    publish_update(broker, {"account": "acct-blip", "version": 7, "oauth": {"t": 7}})
    pauses: list[float] = []
    service = KeysService(store, broker.amqp_uri, broker.queues["updateKeys"], broker.cipher, sleep=pauses.append)
    assert service.run(burst=True) == 1
    assert (service.stored, service.rejected, service.requeued) == (1, 0, 2) and pauses == [0.5, 1.0]
    stored = store.get("acct-blip")
    assert stored is not None and stored.version == 7 and messages_in(broker.queues["updateKeys"]) == 0
    store.close()


@pytest.mark.amqp
@pytest.mark.parametrize("version", [float("inf"), float("nan"), 2**64, "12abc", True, 10**18, -3, 2.5])
def test_an_update_whose_version_is_not_a_finite_integer_up_to_a_day_ahead_is_rejected_and_the_next_stored(
    tmp_path: Path, broker: Any, version: Any
) -> None:
    from oarlock.keys.consumer import KeysService

    store = open_store(str(tmp_path / "keys.sqlite"))
    publish_update(broker, {"account": "acct-v", "version": version, "oauth": {"t": 1}})
    publish_update(broker, {"account": "acct-v", "version": 5, "oauth": {"t": 5}})
    service = KeysService(store, broker.amqp_uri, broker.queues["updateKeys"], broker.cipher)
    assert service.run(burst=True) == 1
    assert (service.stored, service.rejected) == (1, 1)
    stored = store.get("acct-v")
    assert stored is not None and stored.version == 5
    store.close()


def test_refresh_dormant_refreshes_sleeping_credentials_and_reports_dead_ones(tmp_path: Path) -> None:
    from oarlock.devprovider import DevProvider

    keys = str(tmp_path / "keys.sqlite")
    with DevProvider(rotation="single-use") as provider:
        store = open_store(keys)
        alive, dead = provider.mint("alive"), provider.mint("dead")
        store.save("acct-alive", alive, 1)
        store.save("acct-dead", dead, 1)
        provider.revoke("dead")
        done = run_cli(
            [
                "keys",
                "refresh-dormant",
                "--keys",
                keys,
                "--idle-days",
                "0",
                "--token-uri",
                provider.token_url,
                "--client-id",
                "oarlock-dev",
            ],
            env={"OARLOCK_CLIENT_SECRET": "oarlock-dev-secret"},
        )
        summary = json.loads(done.stdout)  # one summary line (the keep-alive's run_once)
        stats = provider.stats()
    assert done.returncode == 1
    assert summary["refreshed"] == ["acct-alive"] and summary["versions"]["acct-alive"] > 1
    assert summary["needs_reauthorization"] == ["acct-dead"]
    assert "must be re-authorized" in summary["reasons"]["acct-dead"]
    stored = store.get("acct-alive")
    assert stored is not None and stored.oauth["refresh_token"] != alive["refresh_token"]
    assert stats["refresh_calls"] == 2 and dead["refresh_token"] not in done.stdout + done.stderr
    untouched = run_cli(
        [
            "keys",
            "refresh-dormant",
            "--keys",
            keys,
            "--idle-days",
            "30",
            "--token-uri",
            "http://127.0.0.1:9/token",
            "--client-id",
            "x",
        ]
    )
    idle = json.loads(untouched.stdout)  # a summary line even when nothing was due
    assert untouched.returncode == 0 and idle["checked"] == 2 and idle["due"] == [] and idle["refreshed"] == []


@pytest.mark.amqp
def test_every_kind_of_malformed_message_is_rejected_with_its_reason_and_the_running_service_stores_the_next(
    tmp_path: Path, broker: Any
) -> None:
    keys, queue = str(tmp_path / "keys" / "keys.sqlite"), broker.queues["updateKeys"]
    service = ServeProcess(["--store", keys, "--queue", queue], crypto_env(broker))
    try:
        service.started()
        later = int(time.time() * 1000) + 2 * 24 * 3600 * 1000
        good = {"account": "acct-ok", "version": 9, "oauth": {"access_token": "AT-planted-ok"}}
        encrypt = broker.cipher.encrypt_text
        publish_update(broker, raw=b"garbage that is not encrypted")  # crypto
        publish_update(broker, raw=encrypt('{"account": "acct-json", "version": 1, "oauth": {'))  # JSON
        publish_update(broker, raw=encrypt("[" * 300 + "]" * 300))  # nesting
        publish_update(broker, good, headers={"protocolVersion": "two"})  # header types
        publish_update(broker, good, headers={"protocolVersion": [1]})
        publish_update(broker, raw=encrypt('{"account": "acct-inf", "version": 1e400, "oauth": {}}'))
        publish_update(broker, {"account": "acct-big", "version": 2**63 + 1, "oauth": {}})
        publish_update(broker, {"account": "acct-ahead", "version": later, "oauth": {}})
        publish_update(broker, {"version": 1, "oauth": {}})  # missing fields
        publish_update(broker, {"account": "acct-no-oauth", "version": 1})
        publish_update(broker, {"account": "acct-no-version", "oauth": {"refresh_token": "RT-planted-x"}})
        publish_update(broker, good)
        service.wait_for("updateKeys of account acct-ok version 9: stored", "the valid update is stored")
        wait_until(lambda: messages_in(queue) == 0, "the queue is empty")
        assert service.process.poll() is None  # alive
        rejected = service.wait_for("updateKeys message rejected", "11 rejections", count=11)
    finally:
        code, out, err = service.stop()
    assert code == 0 and json.loads(out) == {"stored": 1, "refused": 0, "rejected": 11}
    reasons = [line["message"] for line in rejected]
    for expected in (
        "not valid base64",
        "not valid JSON",
        "nested deeper than 200 levels",
        "protocolVersion header must be an integer, got 'two'",
        "protocolVersion header must be an integer, got a list",
        "(account acct-inf): updateKeys payload's 'version' must be a finite integer",
        "(account acct-big): updateKeys payload's 'version'",
        "(account acct-ahead): updateKeys payload's 'version'",
        "has no 'account'",
        "(account acct-no-oauth): updateKeys payload has no 'oauth'",
        "(account acct-no-version): updateKeys payload has no 'version'",
    ):
        assert any(expected in reason for reason in reasons), (expected, reasons)
    named = [line.get("account") for line in rejected]
    assert {"acct-inf", "acct-big", "acct-ahead", "acct-no-oauth", "acct-no-version"} <= set(named)
    assert stored_version(keys, "acct-ok") == 9
    assert "RT-planted-x" not in err and "AT-planted-ok" not in err and "Traceback" not in err


@pytest.mark.amqp
@pytest.mark.postgres
def test_the_start_line_is_one_json_object_with_the_queue_the_store_masked_the_http_address_and_the_keepalive(
    tmp_path: Path, broker: Any, pg_table: str
) -> None:
    queue = broker.queues["updateKeys"]
    store = f"postgresql://postgres:pw-planted-7@127.0.0.1:5432/test?table={pg_table}"  # trust: any password
    env = {**crypto_env(broker), "OARLOCK_API_USERNAME": "platform", "OARLOCK_API_KEY": "api-key-planted-7"}
    service = ServeProcess(["--store", store, "--queue", queue, "--http", ":0"], env)
    try:
        details = service.started()
        publish_update(broker, {"account": "acct-1", "version": 3, "oauth": {"t": 3}})
        publish_update(broker, {"account": "acct-1", "version": 2, "oauth": {"t": 2}})
        (older,) = service.wait_for("version 2: refused as older", "the older update is refused")
        (stored,) = service.wait_for("version 3: stored", "the update is stored")
    finally:
        code, _out, err = service.stop()
    assert code == 0
    assert details["queue"] == queue and details["keepalive"] is False
    assert details["store"] == f"postgresql://postgres:***@127.0.0.1:5432/test?table={pg_table}"
    assert details["http"].startswith("http://127.0.0.1:") and details["alerts"] == []
    (start,) = [line for line in service.lines if line.get("event") == "keys_service_started"]
    assert start["level"] == "info" and start["logger"] == "oarlock.keys.service"
    assert (stored["account"], stored["version"], stored["status"]) == ("acct-1", 3, "stored")
    assert (older["account"], older["version"], older["status"]) == ("acct-1", 2, "refused as older")
    assert "pw-planted-7" not in err and "api-key-planted-7" not in err


@pytest.mark.amqp
@pytest.mark.postgres
def test_a_postgresql_outage_behind_a_tcp_proxy_loses_no_update_and_stores_each_once_it_is_back(
    broker: Any, pg_table: str
) -> None:
    from oarlock.keys.consumer import KeysService

    queue = broker.queues["updateKeys"]
    direct = open_store(f"{POSTGRES}?table={pg_table}")
    pauses: list[float] = []

    def pause(seconds: float) -> None:  # the real backoff, recorded; slept at most 0.2 s to keep the test short
        pauses.append(seconds)
        time.sleep(min(seconds, 0.2))

    with BrokerProxy(upstream=("127.0.0.1", 5432)) as proxy:
        store = open_store(f"postgresql://postgres@127.0.0.1:{proxy.port}/test?table={pg_table}")
        service = KeysService(store, broker.amqp_uri, queue, broker.cipher, sleep=pause)
        runner = threading.Thread(target=service.run, daemon=True)
        runner.start()
        try:
            for n in range(3):
                publish_update(broker, {"account": f"acct-{n}", "version": 1, "oauth": {"n": n}})
            wait_until(lambda: service.stored == 3, "the first updates are stored")
            proxy.go_dark()  # the database vanishes: connections cut, connects refused
            publish_update(broker, {"account": "acct-0", "version": 2, "oauth": {"n": 10}})
            for n in range(3, 8):
                publish_update(broker, {"account": f"acct-{n}", "version": 1, "oauth": {"n": n}})
            wait_until(lambda: service.requeued >= 6, "the store's failures send the updates back to the queue")
            assert direct.get("acct-3") is None and messages_in(queue) == 6  # none acked, none lost
            proxy.come_back()
            wait_until(lambda: service.stored == 9 and messages_in(queue) == 0, "every update is stored", 90)
        finally:
            service.stop()
            runner.join(60)
            store.close()
    versions = {n: direct.get(f"acct-{n}") for n in range(8)}
    direct.close()
    assert all(stored is not None for stored in versions.values())
    assert {n: (s.version, s.oauth["n"]) for n, s in versions.items() if s} == {
        0: (2, 10),
        **{n: (1, n) for n in range(1, 8)},
    }
    assert (service.stored, service.refused, service.rejected) == (9, 0, 0)  # each written once
    assert pauses[:3] == [0.5, 1.0, 2.0]


@pytest.mark.amqp
def test_one_service_consumes_an_update_keys_queue_and_a_credential_invalid_queue(tmp_path: Path, broker: Any) -> None:
    keys = str(tmp_path / "keys" / "keys.sqlite")
    reports_queue = f"{broker.exchange}:credentialInvalid"
    broker.channel.queue_declare(reports_queue)
    broker.channel.queue_bind(reports_queue, broker.exchange, routing_key=f"{broker.id}.credentialInvalid")
    try:
        publish_update(broker, {"account": "acct-r", "version": 4, "oauth": {"t": 4}})
        report = {"type": "credentialInvalid", "account": "acct-r", "version": 4, "reason": "invalid_grant"}
        broker.channel.basic_publish(broker.exchange, f"{broker.id}.credentialInvalid", broker.cipher.encrypt(report))
        args = ["--store", keys, "--queue", broker.queues["updateKeys"], "--queue", reports_queue, "--burst"]
        done = run_cli(["keys", "serve", *args], env=crypto_env(broker))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"stored": 1, "refused": 0, "rejected": 0, "reports": 1}
        assert messages_in(reports_queue) == 0
    finally:
        broker.channel.queue_delete(reports_queue)
    shown = json.loads(run_cli(["keys", "show", "acct-r", "--keys", keys]).stdout)
    assert shown["state"] == "needs_reauthorization" and shown["reason"] == "invalid_grant"
