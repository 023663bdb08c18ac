"""The platform API side of the worker: step config from GET /v1/tasks/…, optional PUT /v1/accounts/…, logs."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from oarlock.devprovider import DevProvider
from oarlock.testing import BrokerSandbox
from tests.support import TEST_COMPONENTS, provider_cfg

pytestmark = pytest.mark.amqp


class FakePlatform(BaseHTTPRequestHandler):
    """A real HTTP server standing for the platform API (step config and account updates)."""

    step: dict[str, Any] = {}
    puts: list[tuple[str, Any, str]] = []
    gets: list[tuple[str, str]] = []
    put_statuses: list[int] = []  # answers to the next PUTs (then 200)

    def do_GET(self) -> None:
        type(self).gets.append((self.path, self.headers.get("Authorization", "")))
        body = json.dumps(type(self).step).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        type(self).puts.append((self.path, json.loads(self.rfile.read(length)), self.headers.get("Authorization", "")))
        statuses = type(self).put_statuses
        self.send_response(statuses.pop(0) if statuses else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def platform() -> Iterator[str]:
    FakePlatform.puts, FakePlatform.gets, FakePlatform.put_statuses = [], [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePlatform)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_step_config_comes_from_the_platform_api_and_update_keys_can_also_be_put(platform: str) -> None:
    with DevProvider(rotation="single-use") as provider, BrokerSandbox() as broker:
        cfg = provider_cfg(provider, account="acct-api")
        cfg["oauth"]["expires_at"] = 0
        FakePlatform.step = {"config": cfg, "snapshot": {}, "is_passthrough": True}
        broker.publish_input({"body": {"n": 1}})
        env = {
            **os.environ,
            **broker.env("api"),
            "ELASTICIO_API_URI": platform,
            "ELASTICIO_API_USERNAME": "me",
            "ELASTICIO_API_KEY": "api-key-planted-77",
            "ELASTICIO_UPDATE_KEYS_VIA_API": "true",
        }
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "oarlock", "run", "--component", str(TEST_COMPONENTS / "amqp"), "--burst"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert time.monotonic() - started < 120
        (data,) = broker.take("data", 1)
        (update,) = broker.take("updateKeys", 1)
    path, auth = FakePlatform.gets[0]
    assert path == "/v1/tasks/flow-1/steps/step_1"
    assert auth == "Basic " + base64.b64encode(b"me:api-key-planted-77").decode()
    message = data.decrypted()
    assert message["body"] == {"n": 1, "me": "user-1"}
    # as sailor 2.7.8: passthrough[STEP_ID] is the step's output without its passthrough
    own = message["passthrough"]["step_1"]
    assert own["body"] == {"n": 1, "me": "user-1"} and own["id"] == message["id"] and "passthrough" not in own
    ((put_path, put_body, _),) = FakePlatform.puts
    assert put_path == "/v1/accounts/acct-api"
    assert put_body["keys"]["oauth"]["refresh_token"] == update.decrypted()["oauth"]["refresh_token"]
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    processed = [line for line in lines if line["message"].startswith("message processed")]
    assert processed and {"messageId", "threadId", "stepId", "function", "duration_ms"} <= processed[0].keys()
    for secret in ("api-key-planted-77", broker.password or "?", cfg["oauth"]["refresh_token"]):
        assert secret not in done.stderr


def run_on_a_sailor_platform(
    platform: str, broker: BrokerSandbox, cfg: dict[str, Any], function: str = "api", *args: str
) -> subprocess.CompletedProcess[str]:
    """The environment a sailor container gets: step cfg from the platform API, no updateKeys binding."""
    FakePlatform.step = {"config": cfg, "snapshot": {}, "is_passthrough": False}
    env = {
        **os.environ,
        **broker.env(function),
        "ELASTICIO_API_URI": platform,
        "ELASTICIO_UPDATE_KEYS_ROUTING_KEY": "nothing-is-bound-to-this-key",  # as on a platform built for sailor
    }
    return subprocess.run(
        [sys.executable, "-m", "oarlock", "run", "--component", str(TEST_COMPONENTS / "amqp"), "--burst", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_on_a_sailor_platform_a_refresh_is_put_before_the_ack_and_no_error_is_published(platform: str) -> None:
    with DevProvider(rotation="single-use") as provider, BrokerSandbox() as broker:
        cfg = provider_cfg(provider, account="acct-sailor")
        cfg["oauth"]["expires_at"] = 0
        broker.publish_input({"body": {"n": 1}})
        done = run_on_a_sailor_platform(platform, broker, cfg)
        assert done.returncode == 0, done.stderr[-3000:]
        (data,) = broker.take("data", 1)
        assert broker.count("error") == 0 and broker.count("in") == 0 and broker.count("updateKeys") == 0
    assert data.decrypted()["body"] == {"n": 1, "me": "user-1"}
    ((path, body, _auth),) = FakePlatform.puts
    assert (
        path == "/v1/accounts/acct-sailor" and body["keys"]["oauth"]["refresh_token"] != cfg["oauth"]["refresh_token"]
    )


@pytest.mark.parametrize(("statuses", "attempts"), [([500, 500, 500], 3), ([404], 1)])
def test_on_a_sailor_platform_a_put_that_fails_is_an_error_message_and_a_reject_never_an_ack(
    platform: str, statuses: list[int], attempts: int
) -> None:
    FakePlatform.put_statuses = list(statuses)
    with DevProvider(rotation="single-use") as provider, BrokerSandbox() as broker:
        cfg = provider_cfg(provider, account="acct-sailor")
        cfg["oauth"]["expires_at"] = 0
        broker.publish_input({"body": {"n": 1}})
        done = run_on_a_sailor_platform(platform, broker, cfg)
        assert done.returncode == 0, done.stderr[-3000:]
        (error,) = broker.take("error", 1)
        assert broker.count("in") == 0  # rejected, not requeued
    assert len(FakePlatform.puts) == attempts
    message = broker.cipher.decrypt(json.loads(error.body)["error"].encode())["message"]
    assert f"HTTP {statuses[0]} after {attempts} attempt" in message and "acct-sailor" in message


def test_a_component_refreshing_the_sailor_way_has_each_emitted_update_merged_and_put_once(platform: str) -> None:
    with DevProvider(rotation="single-use", ttl=0.4, latency_ms=15) as provider, BrokerSandbox() as broker:
        cfg = provider_cfg(provider, account="acct-by-hand")
        for n in range(200):
            broker.publish_input({"body": {"n": n}})
        done = run_on_a_sailor_platform(platform, broker, cfg, "sailor_refresh", "--concurrency", "16")
        assert done.returncode == 0, done.stderr[-3000:]
        data = broker.take("data", 200)
        stats = provider.stats()
        assert broker.count("error") == 0 and broker.count("in") == 0
    assert sorted(d.decrypted()["body"]["n"] for d in data) == list(range(200))
    print(f"sailor-style component: {stats['refresh_calls']} refreshes, {len(FakePlatform.puts)} PUTs")
    assert stats["invalid_grant"] == 0 and stats["refresh_calls"] >= 1
    # every refresh the component made reached the platform once, as the merged token set of cfg._account
    assert len(FakePlatform.puts) == stats["refresh_calls"]
    assert {path for path, _body, _auth in FakePlatform.puts} == {"/v1/accounts/acct-by-hand"}
    assert all(body["keys"]["oauth"]["refresh_token"] for _path, body, _auth in FakePlatform.puts)
