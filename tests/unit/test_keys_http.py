"""The keys service's account route (keys/http.py) on a real HTTP server on 127.0.0.1, over a SQLite store."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from oarlock.credentials.token import lineage_hash
from oarlock.errors import ConfigurationError, KeyStoreError
from oarlock.keys import http as accounts_http
from oarlock.keys.accounts import ACTIVE, NEEDS_REAUTHORIZATION
from oarlock.keys.http import AccountsServer, ApiCredentials, account_of, serve_accounts
from oarlock.keys.store import KeyStore, open_store
from tests.support import DATA

CAPTURE = json.loads((DATA / "sailor-captures" / "capture-refresh.json").read_text())
SAILOR_USER = CAPTURE["env"]["ELASTICIO_API_USERNAME"]
SAILOR_KEY = CAPTURE["env"]["ELASTICIO_API_KEY"]
CREDENTIALS = ApiCredentials(SAILOR_USER, SAILOR_KEY)


def basic(user: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()


AUTH = {"Authorization": basic(SAILOR_USER, SAILOR_KEY)}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KeyStore]:
    opened = open_store(str(tmp_path / "keys" / "keys.sqlite"))
    yield opened
    opened.close()


@pytest.fixture
def server(store: KeyStore) -> Iterator[AccountsServer]:
    running = serve_accounts("127.0.0.1:0", store, CREDENTIALS)
    yield running
    running.close()


def sailor_put(url: str, *, auth: bool = True) -> requests.Response:
    """Exactly the PUT sailor-nodejs 2.7.8 made in capture-refresh.json: path, headers, JSON body."""
    (captured,) = CAPTURE["account_updates"]
    headers = {
        "Content-Type": captured["content_type"],
        "User-Agent": captured["user_agent"],
        "Accept": "application/json, text/plain, */*",
    }
    if auth:
        headers["Authorization"] = basic(captured["auth_user"], SAILOR_KEY)
    body = json.dumps(captured["body"], separators=(",", ":"))  # JSON.stringify
    return requests.put(url + captured["path"], data=body.encode(), headers=headers, timeout=10)


def raw_request(server: AccountsServer, data: bytes, *, read: int = 65536) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(read):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_sailor_style_put_without_auth_is_401_and_with_auth_is_stored_and_read_back(
    server: AccountsServer, store: KeyStore
) -> None:
    (captured,) = CAPTURE["account_updates"]
    account = captured["account_id"]
    refused = sailor_put(server.url, auth=False)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic ")
    assert store.get(account) is None
    answer = sailor_put(server.url)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert body["id"] == account and body["stored"] is True
    stored = store.get(account)
    assert stored is not None and stored.version == body["version"]
    sent = captured["body"]["keys"]["oauth"]
    assert {k: stored.oauth[k] for k in sent} == sent and stored.oauth["obtained_at"] > 0  # stamped
    read = requests.get(f"{server.url}/v1/accounts/{account}", headers=AUTH, timeout=10)
    assert read.status_code == 200
    got = read.json()
    assert got["id"] == account and got["version"] == body["version"] and got["state"] == ACTIVE
    assert got["keys"]["oauth"] == stored.oauth and got["updated_at"].endswith("Z")


def test_a_wrong_key_a_wrong_user_or_a_garbled_header_is_401(server: AccountsServer) -> None:
    url = f"{server.url}/v1/accounts/a"
    for header in (basic(SAILOR_USER, "nope"), basic("someone", SAILOR_KEY), "Basic !!!", "Bearer x", basic("", "")):
        for method in ("GET", "PUT"):
            answer = requests.request(method, url, headers={"Authorization": header}, json={"keys": {}}, timeout=10)
            assert answer.status_code == 401, (method, header)


def test_a_put_stores_the_refresh_settings_without_the_client_secret_and_a_reauthorization_wins(
    server: AccountsServer, store: KeyStore
) -> None:
    url = f"{server.url}/v1/accounts/acct-s"
    oauth2 = {"token_uri": "http://127.0.0.1:9/token", "client_id": "app", "client_secret": "cs-planted-1"}
    first = requests.put(url, json={"keys": {"oauth": {"refresh_token": "RT-1"}, "oauth2": oauth2}}, headers=AUTH)
    second = requests.put(url, json={"keys": {"oauth": {"refresh_token": "RT-2"}}}, headers=AUTH)
    assert first.json()["stored"] and second.json()["stored"]
    assert second.json()["version"] > first.json()["version"]
    stored = store.get("acct-s")
    assert stored is not None and stored.oauth["refresh_token"] == "RT-2"
    assert stored.settings == {"token_uri": "http://127.0.0.1:9/token", "client_id": "app"}
    assert "cs-planted-1" not in json.dumps(stored.settings)


def test_a_late_put_of_an_oarlock_refresh_the_store_has_moved_past_is_refused(
    server: AccountsServer, store: KeyStore
) -> None:
    url = f"{server.url}/v1/accounts/acct-l"
    requests.put(url, json={"keys": {"oauth": {"refresh_token": "RT-0"}}}, headers=AUTH)
    root = store.get("acct-l")
    assert root is not None
    at = root.oauth["obtained_at"]
    # an oarlock worker rotated RT-0 -> RT-1 -> RT-2; the PUT of RT-1 arrives after RT-2's
    older = {"refresh_token": "RT-1", "obtained_at": at + 10, "oarlock_lineage": [lineage_hash("RT-0")]}
    newer = {
        "refresh_token": "RT-2",
        "obtained_at": at + 20,
        "oarlock_lineage": [lineage_hash("RT-1"), lineage_hash("RT-0")],
    }
    assert requests.put(url, json={"keys": {"oauth": newer}}, headers=AUTH).json()["stored"] is True
    late = requests.put(url, json={"keys": {"oauth": older}}, headers=AUTH).json()
    assert late["stored"] is False
    stored = store.get("acct-l")
    assert stored is not None and stored.oauth["refresh_token"] == "RT-2" and late["version"] == stored.version


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", '{"keys"'),
        (b'{"keys": []}', '{"keys"'),
        (b'{"keys": {"oauth": "AT"}}', "token set"),
        (b'{"keys": {"oauth": {"token_type": "Bearer"}}}', "token set"),
        (b'{"keys": {"oauth": {"access_token": ""}}}', "token set"),
        (b"[" * 300 + b"]" * 300, "nested deeper than 200"),
    ],
)
def test_a_malformed_body_is_400_naming_what_is_wrong(server: AccountsServer, body: bytes, reason: str) -> None:
    answer = requests.put(f"{server.url}/v1/accounts/a", data=body, headers=AUTH, timeout=10)
    assert answer.status_code == 400 and reason in answer.json()["error"]


def test_a_body_above_1_mib_is_413_before_it_is_read_and_a_chunked_one_is_cut_at_1_mib(
    server: AccountsServer,
) -> None:
    head = (
        f"PUT /v1/accounts/a HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {2 * 1024 * 1024}\r\n\r\n"
    ).encode()
    answer = raw_request(server, head)  # no body sent at all: the answer comes from the header alone
    assert answer.startswith(b"HTTP/1.1 413 ")
    chunk = b"x" * 65536
    chunked = (
        f"PUT /v1/accounts/a HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode() + (b"10000\r\n" + chunk + b"\r\n") * 17
    assert raw_request(server, chunked).startswith(b"HTTP/1.1 413 ")
    small = b'{"keys": {"oauth": {"access_token": "AT-chunked"}}}'
    ok = (
        (
            f"PUT /v1/accounts/chunky HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        ).encode()
        + f"{len(small):x}\r\n".encode()
        + small
        + b"\r\n0\r\n\r\n"
    )
    assert raw_request(server, ok).startswith(b"HTTP/1.1 200 ")


def test_a_put_without_a_length_is_411(server: AccountsServer) -> None:
    request = f"PUT /v1/accounts/a HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n\r\n"
    assert raw_request(server, request.encode()).startswith(b"HTTP/1.1 411 ")


def test_other_paths_are_404_other_methods_405_and_an_unknown_account_404(server: AccountsServer) -> None:
    for path in ("/", "/v1/accounts/", "/v1/accounts/a/b", "/v1/tasks/f/steps/s", "/v2/accounts/a"):
        assert requests.get(server.url + path, headers=AUTH, timeout=10).status_code == 404, path
    not_allowed = requests.post(f"{server.url}/v1/accounts/a", json={}, headers=AUTH, timeout=10)
    assert not_allowed.status_code == 405 and not_allowed.headers["Allow"] == "GET, PUT"
    assert requests.delete(f"{server.url}/healthz", timeout=10).headers["Allow"] == "GET"
    unknown = requests.get(f"{server.url}/v1/accounts/nobody", headers=AUTH, timeout=10)
    assert unknown.status_code == 404 and "nobody" in unknown.json()["error"]


def test_healthz_needs_no_auth_and_says_whether_the_broker_consumer_and_the_store_answer(store: KeyStore) -> None:
    connected = [True]
    running = AccountsServer(("127.0.0.1", 0), store, CREDENTIALS, broker_ok=lambda: connected[0])
    try:
        ok = requests.get(f"{running.url}/healthz", timeout=10)
        assert ok.status_code == 200 and ok.json() == {"status": "ok", "broker": True, "store": True}
        connected[0] = False
        down = requests.get(f"{running.url}/healthz", timeout=10)
        assert down.status_code == 503 and down.json() == {"status": "unavailable", "broker": False, "store": True}
    finally:
        running.close()


class BrokenStore:
    """A store that cannot be reached: every call raises as a PostgreSQL store whose server is gone."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise KeyStoreError("keys store postgresql://oarlock:***@db/keys cannot be reached: OperationalError")

        return fail


def test_a_store_that_cannot_take_the_put_is_503_without_a_secret_and_healthz_says_so() -> None:
    running = AccountsServer(("127.0.0.1", 0), BrokenStore(), CREDENTIALS)  # type: ignore[arg-type]
    try:
        body = {"keys": {"oauth": {"access_token": "AT-planted-503"}}}
        answer = requests.put(f"{running.url}/v1/accounts/a", json=body, headers=AUTH, timeout=10)
        assert answer.status_code == 503 and "cannot be reached" in answer.json()["error"]
        assert "AT-planted-503" not in answer.text
        assert requests.get(f"{running.url}/v1/accounts/a", headers=AUTH, timeout=10).status_code == 503
        health = requests.get(f"{running.url}/healthz", timeout=10)
        assert health.status_code == 503 and health.json()["store"] is False
    finally:
        running.close()


def test_garbage_and_slow_clients_do_not_stop_the_server(
    server: AccountsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert b"Bad request" in raw_request(server, b"GARBAGE\r\n\r\n")  # an HTTP/0.9 line: a bare answer
    assert b"Invalid HTTP version" in raw_request(server, b"GET / HTTP/9.9\r\n\r\n")
    raw_request(server, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n")  # a TLS hello
    assert b" 501 " in raw_request(server, b"BREW /healthz HTTP/1.1\r\n\r\n")
    assert b" 431 " in raw_request(server, b"GET /healthz HTTP/1.1\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n")
    monkeypatch.setattr(accounts_http._Handler, "timeout", 0.3)
    with socket.create_connection((server.host, server.port), timeout=10) as slow:
        slow.sendall(b"PUT /v1/accounts/a HTTP/1.1\r\nHost: x\r\n")  # then nothing
        assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200  # served meanwhile
        assert slow.recv(100) == b""  # dropped after the timeout, no answer owed
    assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_one_log_line_per_request_without_the_authorization_or_the_body(
    server: AccountsServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="oarlock.keys.http"):
        body = {"keys": {"oauth": {"access_token": "AT-planted-log", "refresh_token": "RT-planted-log"}}}
        requests.put(f"{server.url}/v1/accounts/acct-log?x=1", json=body, headers=AUTH, timeout=10)
        requests.get(f"{server.url}/v1/accounts/acct-log", timeout=10)
    lines = [r.getMessage() for r in caplog.records if r.name == "oarlock.keys.http"]
    assert lines == ["PUT /v1/accounts/acct-log: 200", "GET /v1/accounts/acct-log: 401"]
    for secret in ("AT-planted-log", "RT-planted-log", SAILOR_KEY, AUTH["Authorization"].split()[1]):
        assert secret not in caplog.text


def test_the_state_read_back_is_the_stored_versions_and_a_keep_alive_connection_serves_several_requests(
    server: AccountsServer, store: KeyStore
) -> None:
    done = requests.put(
        f"{server.url}/v1/accounts/acct-k", json={"keys": {"oauth": {"access_token": "A"}}}, headers=AUTH
    )
    version = done.json()["version"]
    store.record_state("acct-k", NEEDS_REAUTHORIZATION, version=version, reason="invalid_grant")
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        for _ in range(3):
            connection.request("GET", "/v1/accounts/acct-k", headers=AUTH)
            answer = connection.getresponse()
            assert answer.status == 200 and json.loads(answer.read())["state"] == NEEDS_REAUTHORIZATION
    finally:
        connection.close()


def test_the_route_refuses_to_start_without_credentials_or_on_a_bad_address(store: KeyStore) -> None:
    with pytest.raises(ConfigurationError, match="OARLOCK_API_USERNAME and OARLOCK_API_KEY"):
        serve_accounts(":0", store, None)
    with pytest.raises(ConfigurationError, match="--http"):
        serve_accounts("localhost:http", store, CREDENTIALS)
    assert ApiCredentials.from_env({"OARLOCK_API_USERNAME": "u", "OARLOCK_API_KEY": ""}) is None
    assert ApiCredentials.from_env({"OARLOCK_API_USERNAME": "u", "OARLOCK_API_KEY": "k"}) == ("u", "k")


def test_an_account_id_is_one_url_decoded_path_segment() -> None:
    assert account_of("/v1/accounts/64b7f0c2a1b2c3d4e5f6acc1") == "64b7f0c2a1b2c3d4e5f6acc1"
    assert account_of("/v1/accounts/a%2Fb") == "a/b"
    assert account_of("/v1/accounts/") is None and account_of("/v1/accounts/a/b") is None
    assert account_of("/v1/accounts/" + "x" * 513) is None and account_of("/v1/accounts/a%0Ab") is None
