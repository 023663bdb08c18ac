"""The updateKeys PUT to a sailor platform follows no redirect, uses no proxy of the environment, and is bounded
in time (per attempt and overall) and in the answer it reads.

Real HTTP servers on 127.0.0.1: the platform, told how to answer, and a second one standing for any foreign host
(another port is another origin) that records whatever reaches it. Pauses between attempts go to an injected
``sleep``; only the deadline tests spend real time (about a second each, which is what they test).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from oarlock.errors import KeyStoreError
from oarlock.keys.platform_api import AccountsApi
from oarlock.serving import ServerThread

ACCOUNT = "acct-1"
KEYS = {"oauth": {"access_token": "at-SECRET-ACCESS", "refresh_token": "rt-SECRET-REFRESH"}}
HUGE = 64 * 1024 * 1024


class Recorder(ThreadingHTTPServer):
    """Answers every request as ``mode`` says and records it: (method, path, client port, body)."""

    daemon_threads = True

    def __init__(self) -> None:
        self.mode = "ok"
        self.location = ""
        self.redirect_status = 307
        self.seen: list[tuple[str, str, int, str]] = []
        self.sent = 0  # body bytes of a huge answer the socket took
        self.finished = threading.Event()  # a huge or trickling answer's handler returned
        self.stop = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: Recorder
    protocol_version = "HTTP/1.1"

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.seen.append((self.command, self.path, self.client_address[1], self.rfile.read(length).decode()))
        mode = self.server.mode
        if mode == "redirect":
            self._answer(self.server.redirect_status, b"", location=self.server.location)
        elif mode.startswith("status-"):
            self._answer(int(mode.removeprefix("status-")), b"{}")
        elif mode == "trickle-headers":
            self._trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        elif mode == "trickle-body":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self._trickle(b" " * 100000)
        elif mode == "huge":
            self._huge()
        else:
            self._answer(200, b'{"stored": true}')

    do_PUT = do_GET = do_POST = _any

    def _answer(self, status: int, body: bytes, location: str = "") -> None:
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self, data: bytes) -> None:
        try:
            for index in range(len(data)):
                if self.server.stop.wait(0.2):
                    return
                self.wfile.write(data[index : index + 1])
                self.wfile.flush()
        except OSError:
            pass
        finally:
            self.close_connection = True
            self.server.finished.set()

    def _huge(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # no autotuned send buffer
        self.send_response(200)
        self.send_header("Content-Length", str(HUGE))
        self.end_headers()
        chunk = b"x" * (64 * 1024)
        try:
            while self.server.sent < HUGE:
                self.wfile.write(chunk)
                self.server.sent += len(chunk)
        except OSError:
            pass
        finally:
            self.close_connection = True
            self.server.finished.set()

    def log_message(self, format: str, *args: Any) -> None:
        return


def _serve() -> tuple[Recorder, ServerThread]:
    server = Recorder()
    return server, ServerThread(server, name="platform-api-test")


@pytest.fixture
def platform() -> Iterator[Recorder]:
    server, thread = _serve()
    yield server
    server.stop.set()
    thread.close()


@pytest.fixture
def foreign() -> Iterator[Recorder]:
    server, thread = _serve()
    yield server
    server.stop.set()
    thread.close()


def _url(server: Recorder) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def _api(platform: Recorder, **options: Any) -> AccountsApi:
    pauses: list[float] = []
    return AccountsApi(_url(platform), "platform-user", "platform-api-key", sleep=pauses.append, **options)


def _failure(api: AccountsApi) -> str:
    with pytest.raises(KeyStoreError) as caught:
        api.put_keys(ACCOUNT, KEYS)
    return str(caught.value)


@pytest.mark.parametrize("status", [307, 302, 301, 308, 303])
def test_a_redirect_is_a_final_failure_and_the_host_it_names_receives_nothing(
    platform: Recorder, foreign: Recorder, status: int
) -> None:
    platform.mode = "redirect"
    platform.redirect_status = status
    platform.location = f"http://localhost:{foreign.server_address[1]}/collect"
    message = _failure(_api(platform))
    assert foreign.seen == []  # neither a re-PUT of the token set (307/308) nor a GET counted as stored (302/303)
    assert len(platform.seen) == 1  # final: not retried
    assert f"answered {status} (a redirect to http://localhost:{foreign.server_address[1]})" in message
    assert "not followed, the credential was not stored" in message and ACCOUNT in message


@pytest.mark.parametrize(
    ("location", "named"),
    [
        ("http://user:pass-SECRET@localhost:{port}/collect?refresh=rt-SECRET-REFRESH#frag", "http://localhost:{port}"),
        ("https://elsewhere.example/steal/at-SECRET-ACCESS", "https://elsewhere.example"),
        ("/v2/accounts/acct-1?token=rt-SECRET-REFRESH", "http://127.0.0.1:{platform}"),
        ("http://[::1]:8443/x?y=z", "http://[::1]:8443"),
        ("http://bad host\x1b[31m/x", "an unreadable Location"),
        ("", "a redirect without a Location"),
    ],
)
def test_the_error_of_a_redirect_names_only_the_scheme_host_and_port_of_its_location_and_no_token(
    platform: Recorder, foreign: Recorder, location: str, named: str
) -> None:
    ports = {"port": foreign.server_address[1], "platform": platform.server_address[1]}
    platform.mode = "redirect"
    platform.location = location.format(**ports)
    message = _failure(_api(platform))
    assert named.format(**ports) in message
    for secret in ("SECRET", "collect", "steal", "/v2/", "?", "#", "pass", "\x1b"):
        assert secret not in message
    assert foreign.seen == []


def test_a_200_succeeds_on_a_reused_connection_and_no_proxy_of_the_environment_is_used(
    platform: Recorder, foreign: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, _url(foreign))  # the foreign host as a proxy: it would see the token set
    api = _api(platform)
    api.put_keys(ACCOUNT, KEYS)
    api.put_keys(ACCOUNT, KEYS)
    assert foreign.seen == []
    (first, second) = platform.seen
    assert first[:2] == ("PUT", "/v1/accounts/acct-1") and json.loads(first[3]) == {"keys": KEYS}
    assert first[2] == second[2]  # the same client port: the answer was read to its end, the connection pooled


@pytest.mark.parametrize("mode", ["trickle-headers", "trickle-body"])
def test_a_trickling_answer_fails_within_the_per_attempt_deadline_naming_it(platform: Recorder, mode: str) -> None:
    platform.mode = mode
    started = time.monotonic()
    message = _failure(_api(platform, attempts=1, attempt_deadline_seconds=1.0))
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3.0
    assert "did not answer within the per-attempt deadline of 1 s after 1 attempt" in message
    assert "SECRET" not in message
    assert platform.finished.wait(5)  # the watchdog's shutdown ended the answer: the server saw the connection go


def test_the_attempts_share_an_overall_deadline(platform: Recorder) -> None:
    platform.mode = "trickle-body"
    started = time.monotonic()
    message = _failure(_api(platform, attempts=5, pause_seconds=0.0, attempt_deadline_seconds=1.0, budget_seconds=1.5))
    elapsed = time.monotonic() - started
    assert elapsed < 3.0 and len(platform.seen) == 2
    assert "did not answer within the overall deadline of 1.5 s after 2 attempts" in message


def test_the_pauses_count_against_the_overall_deadline(platform: Recorder) -> None:
    platform.mode = "status-503"
    message = _failure(_api(platform, attempts=10, pause_seconds=20.0, budget_seconds=50.0))
    assert len(platform.seen) == 3  # 2 pauses of 20 s fit into 50 s, a third would not
    assert "answered HTTP 503 after 3 attempts" in message
    assert "gave up: the next attempt would start past the overall deadline of 50 s" in message


def test_a_huge_answer_is_not_read_beyond_the_cap_and_its_status_still_counts(platform: Recorder) -> None:
    platform.mode = "huge"
    started = time.monotonic()
    _api(platform).put_keys(ACCOUNT, KEYS)  # 200: stored; the body is not needed
    assert platform.finished.wait(10)  # the connection was closed: the server's writes failed
    assert time.monotonic() - started < 5.0
    assert platform.sent < HUGE // 4  # the cap (64 KiB) and the socket buffers between the two, not the 64 MiB
