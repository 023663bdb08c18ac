"""The token request is bounded in time, calls and memory, and never follows redirects.

Every test talks to small real HTTP fault servers on 127.0.0.1 written here; waits between attempts go to an
injected ``sleep``, so only the deadline tests spend real time (about a second each, which is what they test).
"""

from __future__ import annotations

import email.utils
import resource
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from oarlock.credentials.auth import authorized_session
from oarlock.credentials.endpoint import MAX_ATTEMPTS, MAX_RESPONSE_BYTES, TokenClient, backoff_floor
from oarlock.credentials.manager import CredentialManager
from oarlock.credentials.presets import RefreshSettings
from oarlock.errors import TokenEndpointError
from oarlock.protocol.events import EventList

ACCOUNT = "acct-bounds"
REFRESH_TOKEN = "refresh-token-value-4711"
CLIENT_SECRET = "client-secret-value-0815"
GOOD = b'{"access_token": "fresh-access-1", "expires_in": 3600}'


class _Handler(BaseHTTPRequestHandler):
    server: FaultServer

    def do_POST(self) -> None:
        self._record()

    def do_GET(self) -> None:
        self._record()

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.received.append((self.command, self.path, body))
        self.server.answer(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FaultServer(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 answering every request with ``answer(handler)``; it records what it got."""

    daemon_threads = True

    def __init__(self, answer: Callable[[_Handler], None]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer
        self.received: list[tuple[str, str, bytes]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hanging up on an endless or trickling answer is the point

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


def serve(answer: Callable[[_Handler], None]) -> FaultServer:
    return FaultServer(answer)


def reply(status: int, body: bytes = b"", **headers: str) -> Callable[[_Handler], None]:
    def answer(handler: _Handler) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.send_header("Content-Type", "application/json")
        if "Content_Length" not in headers:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def cfg_for(url: str) -> dict[str, Any]:
    return {
        "_account": ACCOUNT,
        "baseUrl": url.rsplit("/", 1)[0],
        "oauth": {"access_token": "old-access-1", "refresh_token": REFRESH_TOKEN, "expires_at": 0},
        "oauth2": {"token_uri": url, "client_id": "client-1", "client_secret": CLIENT_SECRET},
    }


def refresh_through_a_session(manager: CredentialManager, server: FaultServer) -> None:
    """What a component's ctx.http does: the expired credential is refreshed before the API call."""
    cfg = cfg_for(server.url)
    authorized_session(manager, manager.newest_cfg(cfg), sink=EventList()).get(f"http://127.0.0.1:{server.port}/api")


def refresh(client: TokenClient, server: FaultServer) -> dict[str, Any]:
    cfg = cfg_for(server.url)
    return client.refresh(RefreshSettings.from_cfg(cfg["oauth2"]), cfg["oauth"], account=ACCOUNT)


def assert_clean(message: str) -> None:
    assert ACCOUNT in message
    assert REFRESH_TOKEN not in message and CLIENT_SECRET not in message


@pytest.fixture
def collector() -> Iterator[FaultServer]:
    with serve(reply(200, GOOD)) as server:
        yield server


# -- 6. redirects ---------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [302, 307, 308])
def test_a_redirect_from_the_token_endpoint_is_not_followed_and_names_its_status_and_host(
    status: int, collector: FaultServer
) -> None:
    location = f"http://localhost:{collector.port}/collect?code=stolen-query-value"
    with serve(reply(status, Location=location)) as endpoint:
        with pytest.raises(TokenEndpointError) as caught:
            refresh_through_a_session(CredentialManager(sleep=lambda s: None), endpoint)
        assert endpoint.count == 1, "a redirect is not retried"
    message = str(caught.value)
    assert collector.received == [], "the refresh token and client secret went to the redirect's host"
    assert f"answered {status} redirecting to host localhost:{collector.port}" in message
    assert "stolen-query-value" not in message and "/collect" not in message
    assert caught.value.status == status and not caught.value.retryable
    assert_clean(message)


# -- 9. Retry-After: 0 and dates in the past --------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "retry_after"),
    [(503, "0"), (429, email.utils.formatdate(time.time() - 3600, usegmt=True))],
    ids=["503-retry-after-0", "429-retry-after-a-past-date"],
)
def test_a_retry_after_of_zero_or_in_the_past_cannot_shorten_the_backoff_and_attempts_stop_at_the_maximum(
    status: int, retry_after: str
) -> None:
    waits: list[float] = []
    with serve(reply(status, b'{"error": "busy"}', Retry_After=retry_after)) as endpoint:
        with pytest.raises(TokenEndpointError) as caught:
            refresh_through_a_session(CredentialManager(sleep=waits.append), endpoint)
        requests_made = endpoint.count
    assert MAX_ATTEMPTS == 6 and requests_made == MAX_ATTEMPTS
    assert len(waits) == MAX_ATTEMPTS - 1
    assert all(wait >= backoff_floor(attempt) for attempt, wait in enumerate(waits, start=1)), waits
    assert f"answered {status}" in str(caught.value) and "gave up after 6 attempts: the maximum of 6" in str(
        caught.value
    )
    assert_clean(str(caught.value))


def test_the_maximum_of_attempts_is_a_constructor_parameter_and_an_attribute() -> None:
    waits: list[float] = []
    client = TokenClient(max_attempts=2, sleep=waits.append)
    with serve(reply(503, Retry_After="0")) as endpoint:
        with pytest.raises(TokenEndpointError, match="gave up after 2 attempts"):
            refresh(client, endpoint)
        assert endpoint.count == 2 and client.max_attempts == 2
    assert waits and waits[0] >= backoff_floor(1)


def test_a_retry_after_longer_than_the_backoff_is_honoured_until_the_next_attempt_would_pass_the_deadline() -> None:
    waits: list[float] = []
    client = TokenClient(retry_budget_seconds=5, sleep=waits.append)
    with serve(reply(503, Retry_After="3")) as endpoint:
        with pytest.raises(TokenEndpointError) as caught:
            refresh(client, endpoint)
        assert endpoint.count == 2
    assert waits == [3.0]
    assert "gave up after 2 attempts: the next attempt would start past the refresh deadline of 5 s" in str(
        caught.value
    )


# -- 10. deadlines per request and per refresh ------------------------------------------------------
def trickle_body(handler: _Handler) -> None:
    """Headers at once, then a 1000-byte body one byte every 0.2 s."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    for _ in range(1000):
        if handler.server.stopping.wait(0.2):
            return
        handler.wfile.write(b" ")


def trickle_headers(handler: _Handler) -> None:
    """A status line, then a header one byte every 0.1 s."""
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    for _ in range(10_000):
        if handler.server.stopping.wait(0.1):
            return
        handler.wfile.write(b"a")


def test_a_token_answer_trickling_one_byte_every_0_2_s_fails_at_the_per_request_deadline() -> None:
    client = TokenClient(request_deadline_seconds=1, max_attempts=1, sleep=lambda s: None)
    assert client.request_deadline_seconds == 1 and client.refresh_deadline_seconds == 60
    with serve(trickle_body) as endpoint:
        started = time.monotonic()
        with pytest.raises(TokenEndpointError) as caught:
            refresh(client, endpoint)
        took = time.monotonic() - started
    assert took < 5, f"the refresh took {took:.1f} s"
    assert "did not answer within the per-request deadline of 1 s" in str(caught.value)
    assert caught.value.retryable
    assert_clean(str(caught.value))


def test_token_headers_trickling_a_byte_at_a_time_fail_at_the_per_request_deadline() -> None:
    client = TokenClient(request_deadline_seconds=0.5, max_attempts=1, sleep=lambda s: None)
    with serve(trickle_headers) as endpoint:
        started = time.monotonic()
        with pytest.raises(TokenEndpointError, match=r"did not answer within the per-request deadline of 0\.5 s"):
            refresh(client, endpoint)
        took = time.monotonic() - started
    assert took < 5, f"the refresh took {took:.1f} s"


def test_the_refresh_deadline_covers_all_attempts_and_cuts_a_trickling_attempt_short() -> None:
    waits: list[float] = []
    client = TokenClient(retry_budget_seconds=0.5, sleep=waits.append)
    assert client.refresh_deadline_seconds == 0.5 and client.request_deadline_seconds == 30
    with serve(trickle_body) as endpoint:
        started = time.monotonic()
        with pytest.raises(TokenEndpointError) as caught:
            refresh(client, endpoint)
        took = time.monotonic() - started
        attempts = endpoint.count
    assert took < 5, f"the refresh took {took:.1f} s"
    assert attempts == 1 and waits == [], "no attempt starts past the refresh deadline"
    message = str(caught.value)
    assert "did not answer within the refresh deadline of 0.5 s" in message
    assert "gave up after 1 attempt: the next attempt would start past the refresh deadline of 0.5 s" in message
    assert_clean(message)


# -- 12. bounded memory -----------------------------------------------------------------------------
def endless(chunk: bytes, *, gzip: bool = False) -> Callable[[_Handler], None]:
    """A 200 whose body ends only with the connection: ``chunk`` again and again (up to 256 MiB)."""

    def answer(handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if gzip:
            handler.send_header("Content-Encoding", "gzip")
        handler.end_headers()
        for _ in range(256 * 1024 * 1024 // len(chunk)):
            if handler.server.stopping.is_set():
                return
            handler.wfile.write(chunk)

    return answer


def _gzip_of_zeros() -> bytes:
    """The start of an endless gzip stream of zeros: 16 MiB of them in a few KiB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    return compressor.compress(b"\0" * (16 * 1024 * 1024)) + compressor.flush(zlib.Z_SYNC_FLUSH)


@pytest.mark.parametrize(
    "answer",
    [
        endless(b"x" * 65536),
        endless(b'{"access_token": "' + b"a" * 65500),
        reply(200, b"", Content_Length=str(10 * 1024**3)),
    ],
    ids=["endless-body", "endless-json", "a-10-GiB-content-length"],
)
def test_an_endless_token_answer_is_cut_at_the_1_mib_cap_and_memory_stays_bounded(
    answer: Callable[[_Handler], None],
) -> None:
    client = TokenClient(sleep=lambda s: None)  # a cap error is not retried
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    try:
        with serve(answer) as endpoint, pytest.raises(TokenEndpointError) as caught:
            refresh(client, endpoint)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    assert peak < 16 * 1024 * 1024, f"{peak / 1e6:.0f} MB allocated"
    assert rss_growth < 50 * 1024 * 1024, f"RSS grew by {rss_growth / 1e6:.0f} MB"
    assert MAX_RESPONSE_BYTES == 1024 * 1024
    assert "with more than the 1 MiB cap of a token response" in str(caught.value)
    assert not caught.value.retryable
    assert_clean(str(caught.value))


def test_the_cap_counts_the_decompressed_answer_so_a_gzip_bomb_is_cut_too() -> None:
    client = TokenClient(sleep=lambda s: None)  # a cap error is not retried
    tracemalloc.start()
    try:
        with (
            serve(endless(_gzip_of_zeros(), gzip=True)) as endpoint,
            pytest.raises(TokenEndpointError, match="with more than the 1 MiB cap"),
        ):
            refresh(client, endpoint)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 * 1024 * 1024, f"{peak / 1e6:.0f} MB allocated"


# -- what stays -------------------------------------------------------------------------------------
def test_a_good_answer_within_the_bounds_is_returned_as_before() -> None:
    client = TokenClient(sleep=lambda s: None)
    with serve(reply(200, GOOD)) as endpoint:
        assert refresh(client, endpoint)["access_token"] == "fresh-access-1"
        assert refresh(client, endpoint)["access_token"] == "fresh-access-1"
        (method, path, body), _ = endpoint.received
    assert method == "POST" and path == "/token" and b"grant_type=refresh_token" in body


def test_a_connection_refused_is_still_retried_and_named() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    waits: list[float] = []
    client = TokenClient(max_attempts=3, sleep=waits.append)
    cfg = cfg_for(f"http://127.0.0.1:{port}/token")
    with pytest.raises(TokenEndpointError, match="connection refused") as caught:
        client.refresh(RefreshSettings.from_cfg(cfg["oauth2"]), cfg["oauth"], account=ACCOUNT)
    assert len(waits) == 2 and "gave up after 3 attempts" in str(caught.value)
