"""The platform side as processes: ``oarlock keys serve`` on a real broker, ``keys refresh-dormant`` on the dev provider."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from oarlock.errors import KeyStoreError
from oarlock.keys.store import KeyStore, StoredCredential, open_store
from tests.support import run_cli

UNREACHABLE = "amqp://guest:guest@127.0.0.1:9/%2F"


def crypto_env(broker: Any) -> dict[str, str]:
    return {
        "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": broker.password or "",
        "ELASTICIO_MESSAGE_CRYPTO_IV": broker.iv or "",
        "ELASTICIO_AMQP_URI": broker.amqp_uri,
    }


def publish_update(broker: Any, payload: Any = None, *, raw: bytes | None = None) -> None:
    body = raw if raw is not None else broker.cipher.encrypt(payload)
    broker.channel.basic_publish(broker.exchange, broker.routing_keys["updateKeys"], body)


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
    assert "updateKeys message rejected: unexpected RuntimeError" in caplog.text
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
