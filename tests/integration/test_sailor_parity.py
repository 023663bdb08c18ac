"""oarlock against sailor-nodejs 2.7.8's own output: each captured scenario replayed on the real broker.

tests/data/sailor-captures holds what sailor published for one input (README there). Each test
gives ``oarlock run`` the capture's environment (broker, exchange, queue and API address replaced
by this test's own), serves the capture's step document from a stub platform API, publishes the
capture's input, and compares what oarlock publishes with what sailor did: routing key,
properties, header names, order and values, and the decrypted body's structure; volatile values
(ids, timestamps, the JS stack) aside. The wire types of the headers are checked in the unit tier
(tests/unit/test_outgoing.py) on the very bytes the transport writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pika
import pytest

from oarlock.protocol.crypto import MessageCipher
from tests.support import DATA, TEST_COMPONENTS

pytestmark = pytest.mark.amqp
CAPTURES = DATA / "sailor-captures"
VOLATILE_HEADERS = {"messageId", "start", "end"}
AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/%2F"


class StubPlatform(ThreadingHTTPServer):
    """The platform API sailor talks to: serves one step document, records every request."""

    def __init__(self, step: dict[str, Any]) -> None:
        self.step = step
        self.requests: list[tuple[str, str]] = []
        self.puts: list[tuple[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: StubPlatform

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path))
        body = json.dumps(self.server.step).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        self.server.requests.append(("PUT", self.path))
        self.server.puts.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        return


class Replay:
    """The capture's topology on the real broker: its routing keys bound on a fresh exchange."""

    def __init__(self, capture: dict[str, Any]) -> None:
        self.capture = capture
        self.env = dict(capture["env"])
        tag = uuid.uuid4().hex[:10]
        self.exchange = f"oarlock-parity-{tag}"
        self.input_queue = f"oarlock-parity-{tag}-in"
        self.keys = {
            name: self.env[f"ELASTICIO_{name.upper()}_ROUTING_KEY"] for name in ("data", "error", "rebound", "snapshot")
        }
        self.queues = {name: f"oarlock-parity-{tag}-{name}" for name in self.keys}
        self.connection = pika.BlockingConnection(pika.URLParameters(AMQP_URI))
        self.channel = self.connection.channel()
        self.channel.exchange_declare(self.exchange, exchange_type="direct")
        self.channel.queue_declare(self.input_queue)
        for name, queue in self.queues.items():
            self.channel.queue_declare(queue)
            self.channel.queue_bind(queue, self.exchange, routing_key=self.keys[name])
        self.cipher = MessageCipher(
            self.env["ELASTICIO_MESSAGE_CRYPTO_PASSWORD"], self.env["ELASTICIO_MESSAGE_CRYPTO_IV"]
        )

    def publish_input(self) -> None:
        given = self.capture["input"]
        props = {k: v for k, v in given["properties"].items() if v is not None and k != "headers"}
        body = self.cipher.encrypt(given["body_decrypted"], int(given["headers"].get("protocolVersion") or 1))
        self.channel.basic_publish(
            "", self.input_queue, body, pika.BasicProperties(headers=dict(given["headers"]), **props)
        )

    def run(self, api_url: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            **self.env,
            "ELASTICIO_AMQP_URI": AMQP_URI,
            "ELASTICIO_LISTEN_MESSAGES_ON": self.input_queue,
            "ELASTICIO_PUBLISH_MESSAGES_TO": self.exchange,
            "ELASTICIO_API_URI": api_url,
            "ELASTICIO_COMPONENT_PATH": str(TEST_COMPONENTS / "sailor"),
            "ELASTICIO_LOG_LEVEL": "warning",
        }
        return subprocess.run(
            [sys.executable, "-m", "oarlock", "run", "--burst"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def take(self, name: str) -> list[tuple[Any, Any, bytes]]:
        got = []
        while True:
            method, props, body = self.channel.basic_get(self.queues[name], auto_ack=True)
            if method is None:
                return got
            got.append((method, props, body))

    def close(self) -> None:
        for queue in [self.input_queue, *self.queues.values()]:
            self.channel.queue_delete(queue)
        self.channel.exchange_delete(self.exchange)
        self.connection.close()


@pytest.fixture
def replay(request: pytest.FixtureRequest) -> Iterator[tuple[Replay, StubPlatform]]:
    capture = json.loads((CAPTURES / request.param).read_text())
    made, api = Replay(capture), StubPlatform(capture["step_data_served"])
    try:
        yield made, api
    finally:
        made.close()
        api.close()


def published_by_oarlock(replay: Replay) -> list[tuple[str, Any, Any, bytes]]:
    out = []
    for name in replay.keys:
        for method, props, body in replay.take(name):
            out.append((method.routing_key, props, props.headers, body))
    return out


def compare_headers(ours: dict[str, Any], theirs: dict[str, Any], order: list[str]) -> None:
    assert list(ours) == order, f"header order: oarlock {list(ours)} vs sailor {order}"
    for name in order:
        if name not in VOLATILE_HEADERS:
            assert ours[name] == theirs[name], f"header {name}: oarlock {ours[name]!r} vs sailor {theirs[name]!r}"
    assert ours["end"] >= ours["start"]


def compare_properties(props: Any, theirs: dict[str, Any]) -> None:
    for name in ("content_type", "content_encoding", "delivery_mode", "priority", "reply_to", "expiration"):
        assert getattr(props, name) == theirs[name], name


def run_and_compare_envelope(made: Replay, api: StubPlatform) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """Replay the capture's input through ``oarlock run``: the one message published must match sailor's in
    routing key, properties and headers; returns its headers and body and sailor's published record."""
    made.publish_input()
    done = made.run(api.url)
    assert done.returncode == 0, done.stderr[-3000:]
    ((routing_key, props, headers, body),) = published_by_oarlock(made)
    (theirs,) = made.capture["published"]
    assert routing_key == theirs["routing_key"]
    compare_properties(props, theirs["properties"])
    compare_headers(headers, theirs["headers"], theirs["header_order"])
    return headers, body, theirs


@pytest.mark.parametrize(
    "replay", ["capture-passthrough.json", "capture-passthrough.is_passthrough.json"], indirect=True
)
def test_a_data_message_matches_sailors_in_routing_key_properties_header_order_and_body_structure(
    replay: tuple[Replay, StubPlatform],
) -> None:
    made, api = replay
    headers, body, theirs = run_and_compare_envelope(made, api)
    ours = made.cipher.decrypt(body)
    expected = theirs["body_decrypted"]
    assert list(ours) == list(expected), "the data body's keys and their order"
    assert headers["messageId"] == ours["id"]
    assert {k: v for k, v in ours.items() if k not in ("id", "passthrough")} == {
        k: v for k, v in expected.items() if k not in ("id", "passthrough")
    }
    if "passthrough" in expected:
        (step,) = expected["passthrough"]
        assert list(ours["passthrough"]) == [step]
        assert list(ours["passthrough"][step]) == list(expected["passthrough"][step])
        assert ours["passthrough"][step]["id"] == ours["id"]  # the step's own output, as sailor stores it
    assert api.requests == [("GET", f"/v1/tasks/{made.env['ELASTICIO_FLOW_ID']}/steps/{made.env['ELASTICIO_STEP_ID']}")]


@pytest.mark.parametrize("replay", ["capture-fail.json"], indirect=True)
def test_an_error_message_matches_sailors_with_no_protocol_version_and_the_input_is_rejected(
    replay: tuple[Replay, StubPlatform],
) -> None:
    made, api = replay
    headers, body, theirs = run_and_compare_envelope(made, api)
    assert "protocolVersion" not in headers
    outer = json.loads(body)
    assert list(outer) == theirs["body_decrypted"]["outer_json_keys"]
    error = made.cipher.decrypt(outer["error"].encode())
    expected = theirs["body_decrypted"]["error"]
    assert list(error) == list(expected) and error["name"] == expected["name"]
    assert error["message"] == expected["message"]
    assert made.cipher.decrypt(outer["errorInput"].encode()) == theirs["body_decrypted"]["errorInput"]
    assert made.channel.queue_declare(made.input_queue, passive=True).method.message_count == 0  # rejected


@pytest.mark.parametrize("replay", ["capture-refresh.json"], indirect=True)
def test_a_component_update_keys_is_put_to_the_account_as_sailor_does_and_only_data_is_published(
    replay: tuple[Replay, StubPlatform],
) -> None:
    made, api = replay
    _headers, body, theirs = run_and_compare_envelope(made, api)
    ours = made.cipher.decrypt(body)
    assert list(ours) == list(theirs["body_decrypted"]) and ours["body"] == theirs["body_decrypted"]["body"]
    (sailors_put,) = made.capture["account_updates"]
    ((path, put_body),) = api.puts
    assert path == sailors_put["path"] and list(put_body) == ["keys"]
    emitted = sailors_put["body"]["keys"]["oauth"]
    # oarlock PUTs the merged token set: every field sailor sent, plus its own bookkeeping (docs/protocol.md §10)
    assert {k: put_body["keys"]["oauth"][k] for k in emitted} == emitted
    assert [m for m, _p in api.requests] == ["GET", "PUT"]
