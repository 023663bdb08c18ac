"""ctx.http's boundaries: the token goes only to the credential's origins, and no request waits forever.

Real servers only: the dev provider is the credential's API and token endpoint; ``Recorder`` is a
small HTTP server on 127.0.0.1 standing for a foreign host (or a scripted API) that records the
headers it receives; ``hanging_port`` accepts and never answers; ``unreachable_port`` has a full
accept queue, so connecting to it never completes.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from oarlock.credentials.auth import authorized_session, http_timeout, origin_of, static_session
from oarlock.credentials.manager import CredentialManager
from oarlock.devprovider import DevProvider
from oarlock.errors import ConfigurationError
from oarlock.protocol.events import Event, EventList, EventName
from oarlock.protocol.message import Message
from oarlock.runtime.context import Context
from tests.support import REPO, event_lines, jsonl, provider_cfg, run_cli

Reply = tuple[int, dict[str, str], bytes]
OK: Reply = (200, {"Content-Type": "application/json"}, b'{"ok": true}')
INVALID_TOKEN: Reply = (
    401,
    {"Content-Type": "application/json", "WWW-Authenticate": 'Bearer error="invalid_token"'},
    b'{"error": "invalid_token"}',
)
NO_ENV: dict[str, str] = {}


def redirect(to: str) -> Reply:
    return 302, {"Location": to, "Content-Type": "text/plain"}, b""


class Recorder:
    """An HTTP server that answers each path from a script (the last reply repeats) and records every request."""

    def __init__(self, script: dict[str, list[Reply]] | None = None) -> None:
        self.script = {path: list(replies) for path, replies in (script or {}).items()}
        self.seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                with recorder.lock:
                    recorder.seen.append(
                        {"method": self.command, "path": path, "authorization": self.headers.get("Authorization")}
                    )
                    replies = recorder.script.get(path) or [OK]
                    status, headers, body = replies.pop(0) if len(replies) > 1 else replies[0]
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def authorizations(self, path: str | None = None) -> list[str | None]:
        with self.lock:
            return [seen["authorization"] for seen in self.seen if path is None or seen["path"] == path]


@contextmanager
def hanging_port() -> Iterator[int]:
    """A port that accepts connections and never answers; closing it ends every held connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        for connection in held:
            connection.close()
        listener.close()


@contextmanager
def unreachable_port() -> Iterator[int]:
    """A listening port whose accept queue (backlog 0) is already full: a new connection never completes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    filler = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        yield port
    finally:
        filler.close()
        listener.close()


def finishes_within(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """Run ``call`` in a thread; fail the test if it is still running after ``seconds``; return what it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed back to the test
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    return raised[0] if raised else None


class UpdateList:
    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []

    def emit(self, event: Event) -> None:
        assert event.name is EventName.UPDATE_KEYS
        self.updates.append(event.payload)


def session(cfg: dict[str, Any], sink: UpdateList | None = None, environ: dict[str, str] | None = None) -> Any:
    manager = CredentialManager()
    return authorized_session(manager, manager.newest_cfg(cfg), sink=sink or UpdateList(), environ=environ or NO_ENV)


def context(cfg: dict[str, Any]) -> Context:
    return Context(
        sink=EventList(), message=Message(), cfg=cfg, snapshot={}, logger=logging.getLogger("test.http_boundaries")
    )


def offline_cfg(account: str) -> dict[str, Any]:
    """A cfg whose session is built without any network (the checks of its settings happen first)."""
    return {
        "_account": account,
        "baseUrl": "https://api.example",
        "oauth": {"access_token": "offline-token", "refresh_token": "offline-refresh"},
        "oauth2": {"token_uri": "https://login.example/token", "client_id": "c"},
    }


def withheld_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "oarlock.credentials" and record.levelno == logging.WARNING
    ]


# -- item 5: the token goes only where it belongs ------------------------------------------------------
def test_ctx_http_sends_the_token_to_the_credentials_api_and_not_to_a_foreign_host(
    dev_provider: DevProvider,
) -> None:
    cfg = provider_cfg(dev_provider, account="acct-foreign-1")
    with Recorder() as foreign:
        http = session(cfg)
        assert http.get(f"{dev_provider.url}/api/me").status_code == 200
        answer = http.get(f"{foreign.url}/steal?x=1")
    assert answer.status_code == 200 and answer.json() == {"ok": True}
    assert foreign.authorizations() == [None]


def test_a_401_from_a_foreign_host_neither_refreshes_the_credential_nor_resends_anything(
    dev_provider: DevProvider,
) -> None:
    cfg = provider_cfg(dev_provider, account="acct-foreign-401")
    sink = UpdateList()
    with Recorder({"/private": [INVALID_TOKEN]}) as foreign:
        answer = session(cfg, sink).get(f"{foreign.url}/private")
    assert answer.status_code == 401, "the foreign host's answer is the function's to handle"
    assert foreign.authorizations() == [None]
    assert dev_provider.stats()["refresh_calls"] == 0 and sink.updates == []


def test_the_token_withheld_from_a_foreign_host_is_logged_once_as_a_warning_naming_the_host(
    dev_provider: DevProvider, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = provider_cfg(dev_provider, account="acct-warn-once")
    caplog.set_level(logging.WARNING, logger="oarlock.credentials")
    with Recorder() as foreign:
        http = session(cfg)
        for _ in range(3):
            http.get(f"{foreign.url}/a")
        session(cfg).get(f"{foreign.url}/b?token=query-secret")
    (warning,) = withheld_warnings(caplog)
    assert foreign.url in warning and "acct-warn-once" in warning and dev_provider.url in warning
    assert cfg["oauth"]["access_token"] not in warning and "query-secret" not in warning and "/b" not in warning


def test_origins_listed_in_api_origins_get_the_token_and_other_hosts_still_do_not(
    dev_provider: DevProvider,
) -> None:
    with Recorder() as partner, Recorder() as foreign:
        cfg = provider_cfg(dev_provider, account="acct-listed", api_origins=[partner.url.upper() + "/"])
        http = session(cfg)
        http.get(f"{partner.url}/x")
        http.get(f"{foreign.url}/x")
    assert partner.authorizations() == [f"Bearer {cfg['oauth']['access_token']}"]
    assert foreign.authorizations() == [None]


def test_the_instance_url_of_the_credential_and_of_a_refresh_answer_are_origins_of_the_credential() -> None:
    with Recorder() as instance, Recorder() as foreign:
        with DevProvider(expires_in=False) as provider:  # Salesforce-like: the token set names instance_url
            cfg = provider_cfg(provider, account="acct-instance")
            del cfg["baseUrl"]
            assert origin_of(cfg["oauth"]["instance_url"]) == origin_of(provider.url)
            assert session(cfg).get(f"{provider.url}/api/me").status_code == 200
        with DevProvider(extra_fields={"instance_url": instance.url}) as provider:
            cfg = provider_cfg(provider, account="acct-instance-refreshed")
            del cfg["oauth"]["instance_url"]
            cfg["oauth"]["expires_at"] = 0  # the first request refreshes; the answer names the instance
            http = session(cfg)
            assert http.get(f"{provider.url}/api/me").status_code == 200
            http.get(f"{instance.url}/data")
            http.get(f"{foreign.url}/data")
            refreshed = provider.stats()["refresh_calls"]
    assert refreshed == 1
    (sent,) = instance.authorizations()
    assert sent is not None and sent.startswith("Bearer ") and sent != f"Bearer {cfg['oauth']['access_token']}"
    assert foreign.authorizations() == [None]


def test_an_origin_is_scheme_host_and_port_with_default_ports_filled_in_and_hosts_compared_case_insensitively() -> None:
    assert origin_of("https://API.Example.com") == origin_of("https://api.example.com:443/v2?q=1") is not None
    assert origin_of("http://a.example") == origin_of("HTTP://a.example:80/")
    assert origin_of("http://a.example") != origin_of("https://a.example")
    assert origin_of("https://a.example") != origin_of("https://a.example:8443")
    assert origin_of("https://a.example") != origin_of("https://b.a.example")
    assert origin_of("api.example.com") is None and origin_of("ftp://a.example") is None and origin_of(None) is None


def test_the_host_of_an_origin_is_compared_case_insensitively_and_by_name_not_by_address(
    dev_provider: DevProvider,
) -> None:
    port = dev_provider.url.rsplit(":", 1)[1]
    cfg = {**provider_cfg(dev_provider, account="acct-by-name"), "baseUrl": f"http://LOCALHOST:{port}/"}
    http = session(cfg)
    assert http.get(f"http://localhost:{port}/api/me").status_code == 200
    assert http.get(f"http://127.0.0.1:{port}/api/me").status_code == 401, "same server, another origin: no token"
    assert dev_provider.stats()["refresh_calls"] == 0


def test_a_cfg_naming_no_origin_sends_its_token_nowhere_and_the_warning_says_why(
    dev_provider: DevProvider, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = provider_cfg(dev_provider, account="acct-no-origin")
    del cfg["baseUrl"]
    assert "instance_url" not in cfg["oauth"]
    caplog.set_level(logging.WARNING, logger="oarlock.credentials")
    assert session(cfg).get(f"{dev_provider.url}/api/me").status_code == 401
    assert dev_provider.stats()["refresh_calls"] == 0
    (warning,) = withheld_warnings(caplog)
    assert "names no origin" in warning and "cfg.baseUrl" in warning and "cfg.oauth2.api_origins" in warning


def test_a_redirect_from_the_api_to_a_foreign_host_does_not_carry_the_token(dev_provider: DevProvider) -> None:
    with Recorder({"/landing": [INVALID_TOKEN]}) as foreign, Recorder() as api:
        api.script["/moved"] = [redirect(f"{foreign.url}/landing")]
        cfg = provider_cfg(dev_provider, account="acct-redirect", api_origins=[api.url])
        answer = session(cfg).get(f"{api.url}/moved")
    assert answer.status_code == 401 and [r.status_code for r in answer.history] == [302]
    assert api.authorizations() == [f"Bearer {cfg['oauth']['access_token']}"]
    assert foreign.authorizations() == [None], "requests strips Authorization when a redirect leaves the host"
    assert dev_provider.stats()["refresh_calls"] == 0, "the foreign 401 after the redirect refreshes nothing"


def test_after_a_401_the_resend_redirected_to_a_foreign_host_does_not_carry_the_token(
    dev_provider: DevProvider,
) -> None:
    with Recorder() as foreign, Recorder() as api:
        api.script["/thing"] = [INVALID_TOKEN, redirect(f"{foreign.url}/landing")]
        sink = UpdateList()
        cfg = provider_cfg(dev_provider, account="acct-401-redirect", api_origins=[api.url])
        answer = session(cfg, sink).get(f"{api.url}/thing")
    assert answer.status_code == 200 and foreign.authorizations() == [None]
    (update,) = sink.updates
    assert api.authorizations() == [
        f"Bearer {cfg['oauth']['access_token']}",
        f"Bearer {update['oauth']['access_token']}",
    ]


def test_after_a_401_a_same_origin_redirect_of_the_resend_carries_the_fresh_token(dev_provider: DevProvider) -> None:
    with Recorder() as api:
        api.script["/thing"] = [INVALID_TOKEN, redirect("/final")]
        sink = UpdateList()
        cfg = provider_cfg(dev_provider, account="acct-401-same-origin", api_origins=[api.url])
        answer = session(cfg, sink).get(f"{api.url}/thing")
    (update,) = sink.updates
    assert answer.status_code == 200
    assert api.authorizations("/final") == [f"Bearer {update['oauth']['access_token']}"]


def test_authorization_never_follows_a_redirect_to_another_origin_even_from_http_to_https_on_the_same_host() -> None:
    # requests keeps Authorization on an http -> https upgrade of the same host; another scheme is another origin
    http = static_session({"baseUrl": "http://api.example"}, account="acct-upgrade", environ=NO_ENV)
    first = requests.Request("GET", "http://api.example/x").prepare()
    answer = requests.Response()
    answer.request = first
    hop = first.copy()
    hop.url = "https://api.example/x"
    hop.headers["Authorization"] = "Bearer upgrade-token"
    kept = hop.copy()
    requests.Session().rebuild_auth(kept, answer)  # type: ignore[no-untyped-call]
    assert kept.headers["Authorization"] == "Bearer upgrade-token", "requests alone keeps it"
    http.rebuild_auth(hop, answer)
    assert "Authorization" not in hop.headers
    same = first.copy()
    same.headers["Authorization"] = "Bearer same-origin-token"
    http.rebuild_auth(same, answer)
    assert same.headers["Authorization"] == "Bearer same-origin-token"


def test_the_static_session_sends_its_token_to_the_cfgs_origins_only(dev_provider: DevProvider) -> None:
    token = dev_provider.mint()["access_token"]
    cfg = {"_account": "acct-static", "baseUrl": dev_provider.url, "oauth": {"access_token": token}}
    ctx = context(cfg)
    with Recorder() as foreign:
        assert ctx.http.get(f"{dev_provider.url}/api/me").status_code == 200
        ctx.http.get(f"{foreign.url}/x")
        ctx.close()
    assert foreign.authorizations() == [None]


def test_the_reference_request_action_sends_no_token_to_an_absolute_url_on_a_foreign_host(
    tmp_path: Path, dev_provider: DevProvider
) -> None:
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(provider_cfg(dev_provider, account="acct-cli-foreign")))
    with Recorder() as foreign:
        done = run_cli(
            ["call", "request", "--component", str(REPO), "--cfg", str(cfg_path)],
            stdin=jsonl([{"body": {"path": f"{foreign.url}/collect"}}]),
            cwd=tmp_path,
        )
    assert done.returncode == 0, done.stderr
    (event,) = event_lines(done.stdout)
    assert event["event"] == "data" and event["data"]["body"]["status"] == 200
    assert event["data"]["body"]["body"] == {"ok": True}
    assert foreign.authorizations() == [None]
    assert done.stderr.count(foreign.url) == 1, done.stderr


# -- item 11: no request waits forever -----------------------------------------------------------------
def test_a_request_without_timeout_to_a_hanging_api_fails_with_a_read_timeout_after_the_configured_read_timeout(
    dev_provider: DevProvider,
) -> None:
    with hanging_port() as port:
        cfg = provider_cfg(dev_provider, account="acct-hang", http_timeout=[5, 0.5])
        cfg["baseUrl"] = f"http://127.0.0.1:{port}"
        http = session(cfg)
        raised = finishes_within(10, lambda: http.get(f"http://127.0.0.1:{port}/api/slow"))
    assert isinstance(raised, requests.ReadTimeout)


def test_the_static_session_times_out_too_with_the_read_timeout_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OARLOCK_HTTP_READ_TIMEOUT", "0.25")
    with hanging_port() as port:
        ctx = context({"baseUrl": f"http://127.0.0.1:{port}", "oauth": {"access_token": "static-token"}})
        raised = finishes_within(10, lambda: ctx.http.post(f"http://127.0.0.1:{port}/x", json={"a": 1}))
        ctx.close()
    assert isinstance(raised, requests.ReadTimeout)


@pytest.mark.skipif(sys.platform != "linux", reason="a full accept queue drops new connections on Linux")
def test_a_request_without_timeout_to_a_host_that_never_accepts_fails_with_a_connect_timeout(
    dev_provider: DevProvider,
) -> None:
    with unreachable_port() as port:
        http = session(provider_cfg(dev_provider, account="acct-connect", http_timeout=[0.25, 30]))
        raised = finishes_within(10, lambda: http.get(f"http://127.0.0.1:{port}/"))
    assert isinstance(raised, requests.ConnectTimeout)


def test_an_explicit_timeout_wins_over_the_default(dev_provider: DevProvider) -> None:
    with hanging_port() as port:
        http = session(provider_cfg(dev_provider, account="acct-explicit", http_timeout=600))
        raised = finishes_within(10, lambda: http.get(f"http://127.0.0.1:{port}/", timeout=0.1))
    assert isinstance(raised, requests.ReadTimeout)
    never = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            never.wait(0.25)  # a slow answer: longer than the default read timeout below, within the explicit one
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        http = session(provider_cfg(dev_provider, account="acct-explicit-2", http_timeout=0.05))
        assert http.get(f"http://127.0.0.1:{server.server_address[1]}/", timeout=10).status_code == 200
    finally:
        server.shutdown()
        server.server_close()


def test_the_default_timeout_is_10_s_connect_60_s_read_the_environment_overrides_it_and_cfg_overrides_both(
    dev_provider: DevProvider,
) -> None:
    cfg = provider_cfg(dev_provider, account="acct-precedence")
    env = {"OARLOCK_HTTP_CONNECT_TIMEOUT": "3", "OARLOCK_HTTP_READ_TIMEOUT": " 45.5 "}
    assert session(cfg, environ=NO_ENV).default_timeout == (10.0, 60.0)
    assert session(cfg, environ={"OARLOCK_HTTP_CONNECT_TIMEOUT": "3"}).default_timeout == (3.0, 60.0)
    assert session(cfg, environ=env).default_timeout == (3.0, 45.5)
    assert session({**cfg, "oauth2": {**cfg["oauth2"], "http_timeout": 7}}, environ=env).default_timeout == (7, 7)
    with_pair = {**cfg, "oauth2": {**cfg["oauth2"], "http_timeout": [2, "0.5"]}}
    assert session(with_pair, environ=env).default_timeout == (2.0, 0.5)
    assert static_session({"baseUrl": dev_provider.url}, account="acct-static-env", environ=env).default_timeout == (
        3.0,
        45.5,
    )
    assert http_timeout({"oauth2": {"http_timeout": [1, 2]}}, env) == (1.0, 2.0)


@pytest.mark.parametrize(
    ("http_timeout_value", "environ", "named"),
    [
        ("soon", NO_ENV, "cfg.oauth2.http_timeout"),
        (-1, NO_ENV, "cfg.oauth2.http_timeout"),
        (True, NO_ENV, "cfg.oauth2.http_timeout"),
        ([1], NO_ENV, "cfg.oauth2.http_timeout"),
        ([1, "nan"], NO_ENV, "cfg.oauth2.http_timeout[1]"),
        ({"read": 1}, NO_ENV, "cfg.oauth2.http_timeout"),
        (None, {"OARLOCK_HTTP_READ_TIMEOUT": "a minute"}, "OARLOCK_HTTP_READ_TIMEOUT"),
        (None, {"OARLOCK_HTTP_CONNECT_TIMEOUT": "0"}, "OARLOCK_HTTP_CONNECT_TIMEOUT"),
    ],
)
def test_a_bad_timeout_is_a_configuration_error_naming_the_field(
    http_timeout_value: Any, environ: dict[str, str], named: str
) -> None:
    cfg = offline_cfg("acct-bad-timeout")
    if http_timeout_value is not None:
        cfg["oauth2"]["http_timeout"] = http_timeout_value
    with pytest.raises(ConfigurationError, match=named.replace("[", r"\[").replace("]", r"\]")):
        session(cfg, environ=environ)


@pytest.mark.parametrize(
    ("api_origins", "named"),
    [
        ({"a": "https://a.example"}, "cfg.oauth2.api_origins"),
        (["https://a.example/v1"], r"cfg.oauth2.api_origins\[0\]"),
        (["https://a.example", "a.example"], r"cfg.oauth2.api_origins\[1\]"),
        (["https://user:pw@a.example"], r"cfg.oauth2.api_origins\[0\]"),
        ([42], r"cfg.oauth2.api_origins\[0\]"),
    ],
)
def test_malformed_api_origins_are_a_configuration_error_naming_the_field(api_origins: Any, named: str) -> None:
    cfg = offline_cfg("acct-bad-origins")
    cfg["oauth2"]["api_origins"] = api_origins
    with pytest.raises(ConfigurationError, match=named) as raised:
        session(cfg)
    assert "pw" not in str(raised.value)
