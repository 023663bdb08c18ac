"""`oarlock run` on the real broker: sailor's wire contract, confirm-before-ack, bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from oarlock.testing import BrokerSandbox
from tests.support import TEST_COMPONENTS

AMQP = str(TEST_COMPONENTS / "amqp")
pytestmark = pytest.mark.amqp


def run_worker(
    broker: BrokerSandbox,
    function: str,
    *args: str,
    cfg: dict[str, Any] | None = None,
    tmp_path: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    import os

    extra: list[str] = []
    if cfg is not None and tmp_path is not None:
        path = tmp_path / "cfg.json"
        path.write_text(json.dumps(cfg))
        extra = ["--cfg", str(path)]
    full_env = {**os.environ, **broker.env(function), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "oarlock", "run", "--component", AMQP, "--burst", *extra, *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_sailor_encrypted_message_is_processed_and_published_with_every_header(
    broker: BrokerSandbox, tmp_path: Path
) -> None:
    parent = broker.publish_input(
        {"id": "in-1", "body": {"a": 1}, "headers": {}},
        headers={"threadId": "thread-7", "x-eio-meta-Tenant": "t1", "reply_to": "r.key"},
    )
    done = run_worker(broker, "echo", cfg={}, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (data,) = broker.take("data", 1)
    assert data.decrypted()["body"] == {"echo": {"a": 1}}
    headers = data.headers
    expected = {
        "execId": "exec-1",
        "taskId": "flow-1",
        "workspaceId": "workspace-1",
        "containerId": "container-1",
        "userId": "user-1",
        "stepId": "step_1",
        "compId": "comp-1",
        "function": "echo",
        "protocolVersion": 1,
        "parentMessageId": parent,
        "threadId": "thread-7",
        "x-eio-meta-tenant": "t1",
        "reply_to": "r.key",
    }
    assert {k: headers[k] for k in expected} == expected
    assert isinstance(headers["start"], int) and headers["end"] >= headers["start"]
    assert headers["messageId"] == data.decrypted()["id"]
    assert data.properties.content_type == "application/json" and data.properties.content_encoding == "utf8"
    assert broker.count("in") == 0


def test_the_trace_id_becomes_the_thread_id_when_there_is_none(broker: BrokerSandbox, tmp_path: Path) -> None:
    broker.publish_input({"body": {}}, headers={"x-eio-meta-trace-id": "trace-9"})
    broker.publish_input({"body": {}}, protocol_version=2)
    assert run_worker(broker, "echo", cfg={}, tmp_path=tmp_path).returncode == 0
    first, second = broker.take("data", 2)
    assert first.headers["threadId"] == "trace-9"
    assert len(second.headers["threadId"]) == 36 and second.decrypted()["body"] == {"echo": {}}


def test_an_error_is_published_with_the_encrypted_error_and_input_and_the_input_is_rejected(
    broker: BrokerSandbox, tmp_path: Path
) -> None:
    broker.publish_input({"body": {"n": 7}}, headers={"reply_to": broker.routing_keys["reply"]})
    done = run_worker(broker, "fail", cfg={}, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (error,) = broker.take("error", 1)
    payload = error.json()
    decrypted_error = broker.cipher.decrypt(payload["error"].encode())
    assert decrypted_error["name"] == "ValueError" and decrypted_error["message"] == "cannot handle 7"
    assert broker.cipher.decrypt(payload["errorInput"].encode())["body"] == {"n": 7}
    (reply,) = broker.take("reply", 1)
    assert reply.headers["x-eio-error-response"] is True
    assert broker.cipher.decrypt(reply.body)["message"] == "cannot handle 7"
    assert broker.count("in") == 0 and broker.count("data") == 0


def test_a_rebound_republishes_the_original_with_growing_expiration_and_stops_at_the_limit(
    broker: BrokerSandbox, tmp_path: Path
) -> None:
    original = broker.cipher.encrypt({"body": {"x": 1}})
    broker.publish_input(raw=original)
    broker.publish_input(raw=original, headers={"reboundIteration": 3})
    broker.publish_input(raw=original, headers={"reboundIteration": 20})
    done = run_worker(broker, "rebound", cfg={}, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first, fourth = broker.take("rebound", 2)
    assert first.body == original and first.headers["reboundIteration"] == 1
    assert first.properties.expiration == "15000" and first.headers["reboundReason"] == "the API is busy"
    assert fourth.headers["reboundIteration"] == 4 and fourth.properties.expiration == str(8 * 15000)
    (error,) = broker.take("error", 1)
    assert broker.cipher.decrypt(error.json()["error"].encode())["message"] == "Rebound limit exceeded"
    assert broker.count("in") == 0


def test_snapshots_are_published_plain_and_carried_to_the_next_message(broker: BrokerSandbox, tmp_path: Path) -> None:
    broker.publish_input({"body": {}})
    broker.publish_input({"body": {"replace": True}})
    done = run_worker(broker, "snapshot", cfg={}, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    snapshots = broker.take("snapshot", 3)
    assert [(s.json(), s.headers["snapshotEvent"]) for s in snapshots] == [
        ({"count": 1}, "updateSnapshot"),
        ({"count": 2}, "updateSnapshot"),
        ({"replaced": True}, "snapshot"),
    ]


def test_an_http_reply_goes_encrypted_to_reply_to_and_needs_reply_to(broker: BrokerSandbox, tmp_path: Path) -> None:
    broker.publish_input({"body": {"q": 1}}, headers={"reply_to": broker.routing_keys["reply"]})
    broker.publish_input({"body": {"q": 2}})
    done = run_worker(broker, "reply", cfg={}, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (reply,) = broker.take("reply", 1)
    assert broker.cipher.decrypt(reply.body) == {
        "statusCode": 202,
        "body": {"ok": {"q": 1}},
        "headers": {"X-Test": "1"},
    }
    (error,) = broker.take("error", 1)
    assert "reply_to" in broker.cipher.decrypt(error.json()["error"].encode())["message"]


def test_an_x_eio_routing_key_header_overrides_the_data_routing_key_and_is_removed(
    broker: BrokerSandbox, tmp_path: Path
) -> None:
    broker.publish_input({"body": {"to": broker.routing_keys["reply"]}})
    assert run_worker(broker, "route", cfg={}, tmp_path=tmp_path).returncode == 0
    (routed,) = broker.take("reply", 1)
    assert routed.decrypted()["headers"] == {} and broker.count("data") == 0


def test_an_unroutable_output_is_an_error_not_a_silent_drop(broker: BrokerSandbox, tmp_path: Path) -> None:
    broker.publish_input({"body": {"a": 1}})
    done = run_worker(
        broker, "echo", cfg={}, tmp_path=tmp_path, env={"ELASTICIO_DATA_ROUTING_KEY": "nobody-listens-here"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (error,) = broker.take("error", 1)
    message = broker.cipher.decrypt(error.json()["error"].encode())
    assert message["name"] == "PublishError" and "nobody-listens-here" in message["message"]
    assert broker.count("in") == 0


BAD_INPUTS = {
    "bad base64": (b"%%% not base64 %%%", "not valid base64"),
    "truncated ciphertext": (None, "not a positive multiple of 16"),
    "non-JSON plaintext": (None, "not valid JSON after decryption"),
    "body not an object": (None, "must be a JSON object"),
}


def test_bad_inputs_each_give_an_error_and_a_reject_and_the_next_good_message_is_processed(
    broker: BrokerSandbox, tmp_path: Path
) -> None:
    from oarlock.protocol.crypto import MessageCipher

    good = broker.cipher.encrypt({"body": {"ok": True}})
    broker.publish_input(raw=b"%%% not base64 %%%")
    broker.publish_input(raw=MessageCipher("wrong key", broker.iv).encrypt({"body": {}}))
    broker.publish_input(raw=broker.cipher.encrypt({"body": {}}, 2)[:-5], protocol_version=2)
    broker.publish_input(raw=broker.cipher.encrypt_text("plain words"))
    broker.publish_input(raw=broker.cipher.encrypt([1, 2, 3]))
    broker.publish_input({"body": {"big": "x" * (20 * 1024 * 1024)}})
    broker.publish_input(raw=good)
    done = run_worker(broker, "echo", cfg={}, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = broker.take("error", 6)
    messages = [broker.cipher.decrypt(e.json()["error"].encode())["message"] for e in errors]
    assert "not valid base64" in messages[0]
    assert "wrong password" in messages[1]
    assert "not a positive multiple of 16" in messages[2]
    assert "not valid JSON after decryption" in messages[3]
    assert "message must be a JSON object, got an array" in messages[4]
    assert "over the limit of 10485760 bytes" in messages[5]
    (data,) = broker.take("data", 1)
    assert data.decrypted()["body"] == {"echo": {"ok": True}}
    assert broker.count("in") == 0
    assert "Traceback" not in done.stderr


def test_startup_init_and_shutdown_hooks_run_when_the_platform_asks_for_them(
    broker: BrokerSandbox, tmp_path: Path
) -> None:
    log = tmp_path / "hooks.log"
    broker.publish_input({"body": {"x": 1}})
    env = {"ELASTICIO_STARTUP_REQUIRED": "true", "ELASTICIO_HOOK_SHUTDOWN": "true"}
    done = run_worker(broker, "hooks", cfg={"log": str(log)}, tmp_path=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [["startup"], ["init"], ["shutdown", {"subscription": "sub-1"}]]
    assert len(broker.take("data", 1)) == 1


def test_distinct_messages_that_share_an_id_are_all_processed(broker: BrokerSandbox, tmp_path: Path) -> None:
    for n in range(3):
        broker.publish_input({"id": "order-17", "body": {"n": n}}, message_id="same-id")
    assert run_worker(broker, "echo", cfg={}, tmp_path=tmp_path).returncode == 0
    assert sorted(d.decrypted()["body"]["echo"]["n"] for d in broker.take("data", 3)) == [0, 1, 2]


def test_a_rebounded_copy_is_processed_again_when_it_comes_back(broker: BrokerSandbox, tmp_path: Path) -> None:
    original = broker.cipher.encrypt({"body": {"x": 1}}, 2)
    parent = broker.publish_input(raw=original, protocol_version=2)
    assert run_worker(broker, "rebound", cfg={}, tmp_path=tmp_path).returncode == 0
    (rebound,) = broker.take("rebound", 1)
    assert rebound.headers["parentMessageId"] == parent and rebound.headers["messageId"] != parent
    assert rebound.headers["protocolVersion"] == 2 and rebound.decrypted() == {"body": {"x": 1}}
    # the platform routes it back to the input queue after the expiration
    broker.channel.basic_publish("", broker.input_queue, rebound.body, rebound.properties)
    assert run_worker(broker, "rebound", cfg={}, tmp_path=tmp_path).returncode == 0
    (again,) = broker.take("rebound", 1)
    assert again.headers["reboundIteration"] == 2 and again.properties.expiration == "30000"


def test_a_function_that_cannot_be_loaded_rejects_every_message_with_an_error_naming_why(
    broker: BrokerSandbox, tmp_path: Path
) -> None:
    import os

    comp = tmp_path / "comp"
    comp.mkdir()
    (comp / "component.json").write_text(
        json.dumps({"title": "t", "actions": {"gone": {"main": "lib/gone.py", "metadata": {"in": {}}}}})
    )
    (tmp_path / "cfg.json").write_text("{}")
    broker.publish_input({"body": {}})
    broker.publish_input({"body": {}})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "oarlock",
            "run",
            "--component",
            str(comp),
            "--cfg",
            str(tmp_path / "cfg.json"),
            "--burst",
        ],
        env={**os.environ, **broker.env("gone")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    errors = broker.take("error", 2)
    for error in errors:
        decrypted = broker.cipher.decrypt(error.json()["error"].encode())
        assert decrypted["name"] == "ComponentError" and "lib/gone.py does not exist" in decrypted["message"]
    assert broker.count("in") == 0


def test_an_empty_crypto_password_means_plaintext_messages(tmp_path: Path) -> None:
    with BrokerSandbox(password=None, iv=None) as plain:
        plain.publish_input({"body": {"clear": True}})
        done = run_worker(plain, "echo", cfg={}, tmp_path=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        (data,) = plain.take("data", 1)
        assert json.loads(data.body)["body"] == {"echo": {"clear": True}}
