"""`oarlock topology declare`, `oarlock peek` and `oarlock decrypt` against the real broker, and a worker on what
the topology declared (its outputs routed, its rebounds dead-lettered back, its password rotated)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.adapters.blocking_connection
import pytest

from oarlock.cli.topology import plan
from oarlock.protocol.crypto import MessageCipher
from oarlock.protocol.settings import Settings
from tests.support import TEST_COMPONENTS, run_cli

pytestmark = pytest.mark.amqp
AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/%2F"
PASSWORD, IV = "testCryptoPassword", "iv=any16_symbols"
CIPHER = MessageCipher(PASSWORD, IV)
Channel = pika.adapters.blocking_connection.BlockingChannel


@dataclass
class Step:
    env: dict[str, str]
    channel: Channel

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env, api_optional=True)

    @property
    def exchange(self) -> str:
        return self.env["ELASTICIO_PUBLISH_MESSAGES_TO"]

    @property
    def input_queue(self) -> str:
        return self.env["ELASTICIO_LISTEN_MESSAGES_ON"]

    def queue_of(self, role: str) -> str:
        return f"{self.input_queue}:{self.env[f'ELASTICIO_{role.upper()}_ROUTING_KEY']}"

    def count(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def publish_input(self, value: Any, *, cipher: MessageCipher = CIPHER, **headers: Any) -> None:
        self.channel.basic_publish(
            "", self.input_queue, cipher.encrypt(value), pika.BasicProperties(headers={"protocolVersion": 1, **headers})
        )

    def declare(self, *args: str) -> list[dict[str, Any]]:
        done = run_cli(["topology", "declare", "--format", "json", *args], env=self.env)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    def run_worker(self, tmp_path: Path, **env: str) -> None:
        (tmp_path / "cfg.json").write_text("{}")
        args = ["run", "--component", str(TEST_COMPONENTS / "amqp"), "--burst", "--cfg", str(tmp_path / "cfg.json")]
        done = run_cli(args, env={**self.env, **env})
        assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture
def step() -> Iterator[Step]:
    tag = uuid.uuid4().hex[:10]
    env = {
        "ELASTICIO_FLOW_ID": "flow-1",
        "ELASTICIO_EXEC_ID": "exec-1",
        "ELASTICIO_STEP_ID": "step_1",
        "ELASTICIO_CONTAINER_ID": "container-1",
        "ELASTICIO_WORKSPACE_ID": "workspace-1",
        "ELASTICIO_USER_ID": "user-1",
        "ELASTICIO_COMP_ID": "comp-1",
        "ELASTICIO_FUNCTION": "echo",
        "ELASTICIO_AMQP_URI": AMQP_URI,
        "ELASTICIO_LISTEN_MESSAGES_ON": f"topo-{tag}:in",
        "ELASTICIO_PUBLISH_MESSAGES_TO": f"topo-{tag}",
        "ELASTICIO_DATA_ROUTING_KEY": f"{tag}.step_1.message",
        "ELASTICIO_ERROR_ROUTING_KEY": f"{tag}.step_1.error",
        "ELASTICIO_REBOUND_ROUTING_KEY": f"{tag}.step_1.rebound",
        "ELASTICIO_SNAPSHOT_ROUTING_KEY": f"{tag}.step_1.snapshot",
        "ELASTICIO_UPDATE_KEYS_ROUTING_KEY": f"{tag}.updateKeys",
        "ELASTICIO_CREDENTIAL_INVALID_ROUTING_KEY": f"{tag}.credentialInvalid",
        "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": PASSWORD,
        "ELASTICIO_MESSAGE_CRYPTO_IV": IV,
        "ELASTICIO_LOG_LEVEL": "warning",
    }
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URI))
    made = Step(env, connection.channel())
    try:
        yield made
    finally:
        channel = connection.channel()
        for entry in plan(made.settings):
            name = getattr(entry.item, "name", None)
            if name and name != made.exchange:
                channel.queue_delete(name)
        channel.exchange_delete(made.exchange)
        connection.close()


def test_declaring_twice_changes_nothing_and_every_outgoing_key_routes_to_its_queue(step: Step) -> None:
    first = step.declare()
    assert [line["status"] for line in first if line["kind"] != "binding"] == ["created"] * 9
    assert {line["status"] for line in first if line["kind"] == "binding"} == {"bound"}

    channel = step.channel
    channel.confirm_delivery()  # an unroutable mandatory publish raises: every key must reach a queue
    keys = {line["routing_key"]: line["queue"] for line in first if line["kind"] == "binding"}
    assert len(keys) == 7
    for key in keys:
        channel.basic_publish(step.exchange, key, key.encode(), mandatory=True)

    second = step.declare()
    assert [line["status"] for line in second if line["kind"] != "binding"] == ["exists"] * 9
    assert [(line["kind"], line.get("name"), line.get("queue")) for line in second] == [
        (line["kind"], line.get("name"), line.get("queue")) for line in first
    ]
    counts = {line["name"]: line["messages"] for line in second if line["kind"] == "queue"}
    assert counts == {step.input_queue: 0, **{queue: 1 for queue in keys.values()}}
    for key, queue in keys.items():
        method, _, body = channel.basic_get(queue, auto_ack=True)
        assert method is not None and method.routing_key == key and body == key.encode()


def test_a_queue_declared_before_with_other_arguments_is_one_line_naming_it_and_exit_3(step: Step) -> None:
    step.channel.queue_declare(step.queue_of("rebound"), durable=True)  # without the dead-letter arguments
    done = run_cli(["topology", "declare"], env=step.env)
    assert done.returncode == 3
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1
    assert f"cannot declare queue '{step.queue_of('rebound')}' on 127.0.0.1:5672 (vhost /)" in line
    assert "PRECONDITION_FAILED" in line and "guest" not in line


def test_a_worker_on_the_declared_topology_gets_its_rebound_back_through_the_dead_letter_route(
    step: Step, tmp_path: Path
) -> None:
    step.declare()
    step.publish_input({"body": {"n": 1}}, messageId="in-1")
    rebound_env = {"ELASTICIO_FUNCTION": "rebound", "ELASTICIO_REBOUND_INITIAL_EXPIRATION": "50"}
    step.run_worker(tmp_path, ELASTICIO_REBOUND_LIMIT="1", **rebound_env)
    # the copy expires in the rebound queue and is dead-lettered to the input queue, where the same worker may
    # already have taken it again (iteration 2 > limit 1: an error); if not, a second run takes it
    deadline = time.monotonic() + 30
    while not step.count(step.input_queue) and not step.count(step.queue_of("error")) and time.monotonic() < deadline:
        time.sleep(0.05)
    if step.count(step.input_queue):
        step.run_worker(tmp_path, ELASTICIO_REBOUND_LIMIT="1", **rebound_env)
    assert step.count(step.queue_of("rebound")) == 0 and step.count(step.input_queue) == 0
    method, _, body = step.channel.basic_get(step.queue_of("error"), auto_ack=True)
    assert method is not None
    assert CIPHER.decrypt(json.loads(body)["error"].encode())["message"] == "Rebound limit exceeded"


def test_peek_leaves_the_messages_in_the_queue_and_prints_them_decrypted_and_masked(step: Step) -> None:
    step.declare()
    data_key, data_queue = step.env["ELASTICIO_DATA_ROUTING_KEY"], step.queue_of("data")
    secret = {"id": "m-1", "body": {"oauth": {"access_token": "at-0123456789abcdef"}}}
    props = pika.BasicProperties
    step.channel.basic_publish(step.exchange, data_key, CIPHER.encrypt(secret), props(headers={"messageId": "m-1"}))
    step.channel.basic_publish(
        step.exchange, data_key, CIPHER.encrypt({"body": {"n": 2}}, 2), props(headers={"protocolVersion": 2})
    )
    foreign = MessageCipher("some other password", IV).encrypt({"body": {}})
    step.channel.basic_publish(step.exchange, data_key, foreign, props(headers={"messageId": "m-3"}))

    two = run_cli(["peek", data_queue, "--count", "2"], env=step.env)
    assert two.returncode == 0, two.stderr
    lines = [json.loads(line) for line in two.stdout.splitlines()]
    assert [line["body"] for line in lines] == [{"id": "m-1", "body": {"oauth": {"access_token": "***"}}},
                                                {"body": {"n": 2}}]  # fmt: skip
    assert lines[0]["headers"] == {"messageId": "m-1"} and lines[0]["routing_key"] == data_key
    assert "at-0123456789abcdef" not in two.stdout

    every = run_cli(["peek", data_queue, "--count", "10"], env=step.env)
    assert every.returncode == 1
    lines = [json.loads(line) for line in every.stdout.splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert lines[2]["headers"] == {"messageId": "m-3"} and "body" not in lines[2]
    assert lines[2]["error"] == (
        "does not decrypt: decryption failed (bad padding): wrong password or IV, or corrupted message"
    )
    assert every.stderr.strip() == f"oarlock: 1 of 3 messages in {data_queue} did not decrypt"

    revealed = run_cli(["peek", data_queue, "--reveal"], env=step.env)
    assert json.loads(revealed.stdout)["body"] == secret

    assert step.count(data_queue) == 3
    method, properties, _ = step.channel.basic_get(data_queue, auto_ack=True)  # the order is kept
    assert method is not None and properties.headers["messageId"] == "m-1"


def test_peek_of_a_queue_that_does_not_exist_is_one_line_and_exit_3(step: Step) -> None:
    done = run_cli(["peek", step.input_queue + "-missing"], env=step.env)
    assert done.returncode == 3
    assert done.stderr.strip() == (
        f"oarlock: cannot read queue '{step.input_queue}-missing' on 127.0.0.1:5672 (vhost /): "
        f"404 NOT_FOUND - no queue '{step.input_queue}-missing' in vhost '/'"
    )


def test_a_worker_rotating_its_password_reads_old_inputs_and_its_output_decrypts_from_a_file(
    step: Step, tmp_path: Path
) -> None:
    step.declare()
    old = MessageCipher("the password before", IV)
    step.publish_input({"body": {"written": "before"}}, cipher=old, messageId="old-1")
    step.publish_input({"body": {"written": "after"}}, messageId="new-1")
    rotating = {"ELASTICIO_MESSAGE_CRYPTO_PASSWORD_PREVIOUS": "the password before", "ELASTICIO_PROTOCOL_VERSION": "2"}
    step.run_worker(tmp_path, **rotating)
    assert step.count(step.queue_of("error")) == 0

    bodies = []
    for _ in range(2):
        method, properties, body = step.channel.basic_get(step.queue_of("data"), auto_ack=True)
        assert method is not None and properties.headers["protocolVersion"] == 2
        (tmp_path / "body").write_bytes(body)
        (tmp_path / "headers.json").write_text(json.dumps(properties.headers))
        done = run_cli(["decrypt", str(tmp_path / "body"), "--headers", str(tmp_path / "headers.json")], env=step.env)
        assert done.returncode == 0, done.stderr
        bodies.append(json.loads(done.stdout)["body"]["body"])
        with pytest.raises(Exception, match="wrong password"):  # written with the current password only
            old.decrypt(body, 2)
    assert sorted(b["echo"]["written"] for b in bodies) == ["after", "before"]
