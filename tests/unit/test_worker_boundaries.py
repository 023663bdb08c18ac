"""What the worker does when the world misbehaves: a store that is down, a function that hangs, poison input."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oarlock.credentials.manager import CredentialManager
from oarlock.devprovider import DevProvider
from oarlock.errors import ConfigurationError, KeyStoreError
from oarlock.jsonlimits import MAX_DEPTH
from oarlock.keys.sqlite import SqliteKeyStore
from tests.unit.test_worker_rules import CIPHER, KEYS, Rig


class UnreachableStore(SqliteKeyStore):
    """The real SQLite store whose lock fails while ``down`` is set, as a database that went away."""

    down = True

    def lock(self, account: str, timeout: float = 30.0) -> contextlib.AbstractContextManager[None]:
        if self.down:
            raise KeyStoreError("keys store postgresql://oarlock:***@db/keys: OperationalError: connection refused")
        return super().lock(account, timeout)


@contextlib.contextmanager
def started(rig: Rig) -> Iterator[Rig]:
    rig.worker.start()
    try:
        yield rig
    finally:
        rig.worker.stop()


def test_an_unreachable_keys_store_leaves_the_input_for_redelivery_not_an_error_and_it_succeeds_later(
    tmp_path: Path,
) -> None:
    store = UnreachableStore(tmp_path / "keys.sqlite")
    with DevProvider() as provider:
        cfg = provider.cfg(account="acct-store")
        cfg["oauth"]["expires_at"] = 1.0  # expired: the request refreshes, which takes the store's lock
        rig = Rig("api", cfg, credentials=CredentialManager(coordinator=store), ELASTICIO_UPDATE_KEYS_ROUTING_KEY="k")
        with started(rig):
            rig.send({"n": 1})
            rig.transport.wait_for(lambda: len(rig.transport.rejected) >= 2)
            assert all(requeue for _delivery, requeue in rig.transport.rejected)
            assert rig.transport.published_to(KEYS["error"]) == [] and rig.transport.acked == []
            store.down = False
            rig.transport.wait_for(lambda: rig.transport.acked)
        assert rig.transport.acked[0].redelivered and len(rig.transport.published_to(KEYS["data"])) == 1
        stored = store.get("acct-store")
        assert stored is not None and provider.stats()["refresh_calls"] == 1


def test_a_keys_store_that_cannot_be_opened_at_start_is_one_line_naming_it_and_exit_2(tmp_path: Path) -> None:
    from tests.support import TEST_COMPONENTS, run_cli
    from tests.unit.test_worker_rules import settings_for

    settings = settings_for("echo")
    env = {
        f"ELASTICIO_{name.upper()}": str(value)
        for name, value in vars(settings).items()
        if isinstance(value, (str, int)) and not isinstance(value, bool)
    }
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    env["ELASTICIO_KEYS_STORE"] = str(blocker / "keys.sqlite")
    env["ELASTICIO_MESSAGE_CRYPTO_PASSWORD"] = settings.message_crypto_password or ""
    env["ELASTICIO_MESSAGE_CRYPTO_IV"] = settings.message_crypto_iv or ""
    done = run_cli(["run", "--component", str(TEST_COMPONENTS / "amqp"), "--cfg", str(write_cfg(tmp_path))], env=env)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("oarlock: keys store") and "not-a-folder" in line and "Traceback" not in done.stderr


def write_cfg(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text("{}")
    return path


def test_a_function_past_the_time_limit_is_an_error_and_a_reject_and_what_it_emits_later_is_dropped() -> None:
    rig = Rig("late", ELASTICIO_MESSAGE_TIME_LIMIT="0.05")
    module: Any = rig.worker.runner.module  # type: ignore[union-attr]
    module.RELEASE.clear()
    module.DONE.clear()
    with started(rig):
        rig.send({}, message_id="slow-1")
        rig.settled()
        (rejected, requeue) = rig.transport.rejected[0]
        assert requeue is False and rejected.headers["messageId"] == "slow-1"
        (error,) = rig.errors()
        assert error["name"] == "TimeLimitExceeded" and "time limit of 0.05 s" in error["message"]
        module.RELEASE.set()
        assert module.DONE.wait(10)
        rig.send({"next": True}, message_id="after")  # the worker goes on (released: this one returns at once)
        rig.transport.wait_for(lambda: rig.transport.acked)
    (data,) = rig.transport.published_to(KEYS["data"])  # the late emit of slow-1 was dropped
    assert data.headers["parentMessageId"] == "after" and len(rig.transport.rejected) == 1


def test_a_function_within_the_time_limit_is_not_affected() -> None:
    rig = Rig("echo", ELASTICIO_MESSAGE_TIME_LIMIT="30")
    with started(rig):
        rig.send({"a": 1})
        rig.settled()
    assert len(rig.transport.acked) == 1 and rig.errors() == []


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def test_a_body_nested_too_deep_is_a_decode_error_and_a_reject_and_the_next_input_is_processed() -> None:
    rig = Rig("echo", ELASTICIO_RABBITMQ_PREFETCH_SAILOR="1")
    deep_text = '{"body": ' + "[" * 5000 + "]" * 5000 + "}"
    with started(rig):
        rig.transport.deliver(CIPHER.encrypt_text(deep_text), {"messageId": "deep-parser"})
        rig.send(nested(MAX_DEPTH + 5), message_id="deep-walk")
        rig.send({"ok": True}, message_id="good")
        rig.settled(3)
    assert [m.headers["messageId"] for m in rig.transport.acked] == ["good"]
    messages = [e["message"] for e in rig.errors()]
    assert len(messages) == 2 and all(f"nested deeper than {MAX_DEPTH} levels" in m for m in messages)


def test_a_body_just_within_the_depth_limit_is_processed() -> None:
    rig = Rig("echo")
    with started(rig):
        rig.send(nested(MAX_DEPTH - 3))
        rig.settled()
    assert len(rig.transport.acked) == 1


def test_oarlock_call_reports_a_line_nested_too_deep_and_goes_on_with_the_next(tmp_path: Path) -> None:
    from tests.support import TEST_COMPONENTS, run_cli

    cfg = write_cfg(tmp_path)
    deep = '{"body": ' + "[" * 5000 + "]" * 5000 + "}"
    lines = deep + "\n" + json.dumps({"body": {"n": 2}}) + "\n"
    done = run_cli(
        ["call", "echo", "--component", str(TEST_COMPONENTS / "basic"), "--cfg", str(cfg), "--no-keys"], stdin=lines
    )
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert events[0]["event"] == "error" and events[0]["input"] == 0
    assert "input line 1 is nested deeper than" in events[0]["data"]["message"]
    assert [e["event"] for e in events[1:]] == ["data"] and events[1]["input"] == 1


def test_an_update_emitted_after_the_time_limit_settled_its_input_is_published_on_its_own_never_dropped() -> None:
    rig = Rig("late", ELASTICIO_MESSAGE_TIME_LIMIT="0.05", ELASTICIO_UPDATE_KEYS_ROUTING_KEY="rk.updateKeys")
    module: Any = rig.worker.runner.module  # type: ignore[union-attr]
    module.RELEASE.clear()
    module.DONE.clear()
    with started(rig):
        rig.send({"update": True}, message_id="slow-1")
        rig.settled()
        (error,) = rig.errors()
        assert error["name"] == "TimeLimitExceeded"
        module.RELEASE.set()  # the refresh answers now: its updateKeys comes after the input was rejected
        assert module.DONE.wait(10)
        rig.transport.wait_for(lambda: rig.transport.published_to("rk.updateKeys"))
    (update,) = rig.bodies("rk.updateKeys")
    assert update["oauth"]["refresh_token"] == "rt-late"
    assert rig.transport.published_to(KEYS["data"]) == [], "the late data is still dropped"
    assert len(rig.transport.rejected) == 1 and rig.transport.acked == [] and len(rig.errors()) == 1


@pytest.mark.parametrize(("kind", "name"), [("exit", "SystemExit"), ("abort", "Abort"), ("unprintable", "Unprintable")])
def test_a_function_failing_with_any_exception_gets_an_error_event_and_a_reject_and_the_next_input_runs(
    kind: str, name: str
) -> None:
    rig = Rig("poison")
    with started(rig):
        rig.send({"kind": kind}, message_id="poison-1")
        rig.settled()
        rig.send({}, message_id="next-1")
        rig.transport.wait_for(lambda: rig.transport.acked)
    ((rejected, requeue),) = rig.transport.rejected
    assert rejected.headers["messageId"] == "poison-1" and requeue is False
    (error,) = rig.errors()
    assert error["name"] == name
    assert [d.headers["messageId"] for d in rig.transport.acked] == ["next-1"]


def test_a_snapshot_that_cannot_be_encoded_fails_its_input_only_and_never_reaches_the_workers_snapshot() -> None:
    rig = Rig("poison")
    with started(rig):
        rig.send({"kind": "bad-snapshot"}, message_id="bad-1")
        rig.settled()
        rig.send({}, message_id="next-1")
        rig.settled(2)
    ((rejected, requeue),) = rig.transport.rejected
    assert rejected.headers["messageId"] == "bad-1" and requeue is False
    assert rig.errors()[0]["name"] == "EncodeError" and "updateSnapshot" in rig.errors()[0]["message"]
    assert [d.headers["messageId"] for d in rig.transport.acked] == ["next-1"]
    assert rig.bodies(KEYS["data"])[-1]["body"] == {"snapshot": {}}
    assert rig.worker.snapshot == {}


def test_on_stop_what_was_delivered_but_not_started_goes_back_to_the_broker_at_once() -> None:
    rig = Rig("late", ELASTICIO_RABBITMQ_PREFETCH_SAILOR="10", ELASTICIO_GRACE_SECONDS="30")
    module: Any = rig.worker.runner.module  # type: ignore[union-attr]
    module.RELEASE.clear()
    rig.worker.start()
    for n in range(10):
        rig.send({}, message_id=f"m-{n}")
    rig.transport.wait_for(lambda: rig.transport.unsettled == 10)  # all ten delivered, a few running
    stopping = threading.Thread(target=rig.worker.stop)
    stopping.start()
    rig.transport.wait_for(lambda: rig.transport.rejected)  # the unstarted ones, while the running ones still wait
    module.RELEASE.set()
    stopping.join(30)
    assert not stopping.is_alive()
    requeued = [delivery for delivery, requeue in rig.transport.rejected if requeue]
    assert len(requeued) == len(rig.transport.rejected) >= 1
    assert len(rig.transport.acked) + len(requeued) == 10
    assert len(rig.transport.published_to(KEYS["data"])) == len(rig.transport.acked), "only the started ones ran"


def test_a_delivery_whose_properties_could_not_be_decoded_is_an_error_naming_why_and_a_reject() -> None:
    rig = Rig("echo")
    with started(rig):
        rig.transport.deliver(b"{}", {}, decode_error="a timestamp header past the year 9999")
        rig.settled()
        rig.send({"a": 1}, message_id="next-1")
        rig.transport.wait_for(lambda: rig.transport.acked)
    ((_, requeue),) = rig.transport.rejected
    (error,) = rig.errors()
    assert requeue is False and error["name"] == "DecodeError" and "past the year 9999" in error["message"]


def test_a_configured_routing_key_amqp_cannot_carry_is_a_configuration_error_at_start_naming_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="ELASTICIO_ERROR_ROUTING_KEY is 300 bytes of UTF-8"):
        Rig("echo", ELASTICIO_ERROR_ROUTING_KEY="e" * 300)
