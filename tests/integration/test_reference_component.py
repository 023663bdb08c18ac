"""The reference REST component (request, poll, verify_credentials.py) against the real dev provider."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from oarlock.devprovider import DevProvider
from tests.support import REPO, event_lines, jsonl, provider_cfg, run_cli


def write_cfg(tmp_path: Path, cfg: dict[str, Any]) -> str:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def call(tmp_path: Path, function: str, cfg: dict[str, Any], messages: list[dict[str, Any]], *extra: str):  # type: ignore[no-untyped-def]
    return run_cli(
        ["call", function, "--component", str(REPO), "--cfg", write_cfg(tmp_path, cfg), "--no-keys", *extra],
        stdin=jsonl(messages),
        cwd=tmp_path,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_reference_component_is_valid() -> None:
    done = run_cli(["validate", str(REPO)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_request_sends_method_path_query_and_json_and_emits_status_headers_body(
    tmp_path: Path, dev_provider: DevProvider
) -> None:
    cfg = provider_cfg(dev_provider)
    messages = [
        {"body": {"method": "POST", "path": "/api/items", "json": {"name": "from a test"}}},
        {"body": {"path": "/api/items", "query": {"since": 5}}},
        {"body": {"method": "get", "path": "/api/me"}},
    ]
    done = call(tmp_path, "request", cfg, messages)
    assert done.returncode == 0, done.stderr
    created, listed, me = (line["data"]["body"] for line in event_lines(done.stdout))
    assert created["status"] == 201 and created["body"]["name"] == "from a test"
    assert [item["name"] for item in listed["body"]["items"]] == ["from a test"]
    assert me["status"] == 200 and me["body"]["subject"] == "user-1"
    assert "application/json" in me["headers"]["Content-Type"]


def test_request_turns_a_non_2xx_answer_into_an_error_with_status_and_excerpt(
    tmp_path: Path, dev_provider: DevProvider
) -> None:
    done = call(tmp_path, "request", provider_cfg(dev_provider), [{"body": {"path": "/api/missing"}}])
    assert done.returncode == 1
    (error,) = event_lines(done.stdout)
    assert error["event"] == "error" and error["data"]["name"] == "HTTPStatusError"
    assert error["data"]["message"].startswith(f"404 from GET {dev_provider.url}/api/missing")


def test_request_reports_a_refused_connection_in_plain_words(tmp_path: Path, dev_provider: DevProvider) -> None:
    cfg = {**provider_cfg(dev_provider), "baseUrl": f"http://127.0.0.1:{closed_port()}"}
    done = call(tmp_path, "request", cfg, [{"body": {"path": "/api/me"}}])
    (error,) = event_lines(done.stdout)
    assert error["data"]["name"] == "RequestFailed" and "connection refused" in error["data"]["message"]


def test_request_rejects_a_message_without_path_by_its_metadata(tmp_path: Path, dev_provider: DevProvider) -> None:
    done = call(tmp_path, "request", provider_cfg(dev_provider), [{"body": {"method": "GET"}}])
    (error,) = event_lines(done.stdout)
    assert (
        error["data"]["name"] == "MessageValidationError"
        and "'path' is a required property" in error["data"]["message"]
    )


def test_poll_emits_new_items_once_and_keeps_the_cursor_in_the_snapshot(
    tmp_path: Path, dev_provider: DevProvider
) -> None:
    cfg = provider_cfg(dev_provider)
    snapshot = tmp_path / "snapshot.json"
    first = call(tmp_path, "poll", cfg, [{}], "--snapshot", str(snapshot))
    assert first.returncode == 0, first.stderr
    lines = event_lines(first.stdout)
    assert [line["data"]["body"]["id"] for line in lines if line["event"] == "data"] == [1, 2, 3, 4, 5]
    assert lines[-1] == {"event": "updateSnapshot", "data": {"cursor": 5}, "input": 0}
    again = call(tmp_path, "poll", cfg, [{}], "--snapshot", str(snapshot))
    assert event_lines(again.stdout) == []
    call(tmp_path, "request", cfg, [{"body": {"method": "POST", "path": "/api/items", "json": {"name": "new"}}}])
    third = call(tmp_path, "poll", cfg, [{}], "--snapshot", str(snapshot))
    assert [line["data"]["body"]["name"] for line in event_lines(third.stdout) if line["event"] == "data"] == ["new"]
    assert json.loads(snapshot.read_text()) == {"cursor": 6}


def verify(tmp_path: Path, cfg: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    done = run_cli(["verify", "--component", str(REPO), "--cfg", write_cfg(tmp_path, cfg)])
    assert "Traceback" not in done.stderr
    return done.returncode, json.loads(done.stdout)


def test_verify_accepts_a_working_credential(tmp_path: Path, dev_provider: DevProvider) -> None:
    assert verify(tmp_path, provider_cfg(dev_provider)) == (0, {"verified": True})


def test_verify_says_the_token_endpoint_answered_invalid_grant(tmp_path: Path) -> None:
    with DevProvider(ttl=1) as provider:
        cfg = provider_cfg(provider, account="acct-v")
        provider.revoke()
        cfg["oauth"]["expires_at"] = 0
        code, result = verify(tmp_path, cfg)
    assert code == 1 and result["verified"] is False
    assert "invalid_grant" in result["reason"] and "acct-v" in result["reason"]
    assert cfg["oauth"]["refresh_token"] not in result["reason"]


def test_verify_says_connection_refused(tmp_path: Path, dev_provider: DevProvider) -> None:
    cfg = {**provider_cfg(dev_provider), "baseUrl": f"http://127.0.0.1:{closed_port()}"}
    code, result = verify(tmp_path, cfg)
    assert code == 1 and "connection refused" in result["reason"]


def test_verify_reports_a_401_from_the_api(tmp_path: Path, dev_provider: DevProvider) -> None:
    cfg = {"_account": "a", "baseUrl": dev_provider.url, "oauth": {"access_token": "not-a-live-token"}}
    code, result = verify(tmp_path, cfg)
    assert code == 1 and result["reason"].startswith("401 from GET")


class _Collector(BaseHTTPRequestHandler):
    received: list[Any] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def result_server() -> Iterator[tuple[str, list[Any]]]:
    _Collector.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/result", _Collector.received
    server.shutdown()


def test_service_mode_verify_credentials_posts_the_result_like_sailor(
    result_server: tuple[str, list[Any]], dev_provider: DevProvider
) -> None:
    url, received = result_server
    env = {"ELASTICIO_CFG": json.dumps(provider_cfg(dev_provider)), "ELASTICIO_POST_RESULT_URL": url}
    done = run_cli(["service", "verifyCredentials", "--component", str(REPO)], env=env)
    assert done.returncode == 0, done.stderr
    assert received == [{"status": "success", "data": {"verified": True}}]


def test_service_mode_reports_bad_cfg_json_as_an_error_result(result_server: tuple[str, list[Any]]) -> None:
    url, received = result_server
    env = {"ELASTICIO_CFG": "{not json", "ELASTICIO_POST_RESULT_URL": url}
    done = run_cli(["service", "verifyCredentials", "--component", str(REPO)], env=env)
    assert done.returncode == 1
    assert received[0]["status"] == "error" and "ELASTICIO_CFG is not valid JSON" in received[0]["data"]["message"]


@pytest.mark.parametrize(
    ("service", "extra", "expected"),
    [
        ("getMetaModel", {}, {"in": {"type": "object", "properties": {"field": {"type": "string", "title": "L"}}}}),
        ("selectModel", {"ELASTICIO_GET_MODEL_METHOD": "listThings"}, {"a": "Thing A", "b": "Thing B"}),
    ],
)
def test_service_mode_get_meta_model_and_select_model(
    result_server: tuple[str, list[Any]], service: str, extra: dict[str, str], expected: Any
) -> None:
    from tests.support import TEST_COMPONENTS

    url, received = result_server
    env = {
        "ELASTICIO_CFG": json.dumps({"label": "L"}),
        "ELASTICIO_POST_RESULT_URL": url,
        "ELASTICIO_ACTION_OR_TRIGGER": "echo",
        **extra,
    }
    done = run_cli(["service", service, "--component", str(TEST_COMPONENTS / "basic")], env=env)
    assert done.returncode == 0, done.stderr
    assert received == [{"status": "success", "data": expected}]


def test_service_mode_names_a_missing_model_method(result_server: tuple[str, list[Any]]) -> None:
    from tests.support import TEST_COMPONENTS

    url, received = result_server
    env = {
        "ELASTICIO_CFG": "{}",
        "ELASTICIO_POST_RESULT_URL": url,
        "ELASTICIO_ACTION_OR_TRIGGER": "echo",
        "ELASTICIO_GET_MODEL_METHOD": "nothingHere",
    }
    done = run_cli(["service", "selectModel", "--component", str(TEST_COMPONENTS / "basic")], env=env)
    assert done.returncode == 1
    assert received[0] == {"status": "error", "data": {"message": "function 'echo' does not define nothingHere(cfg)"}}


def test_the_cli_lists_every_command_and_has_a_version() -> None:
    done = run_cli(["--help"])
    for command in ("call", "demo", "dev-provider", "keys", "run", "service", "validate", "verify"):
        assert command in done.stdout
    assert run_cli(["--version"]).stdout.strip().endswith("0.1.0")
