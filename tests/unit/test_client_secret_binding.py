"""A client secret goes only to its own client's token endpoint: bound entries in --client-secrets, the keep-alive
checking each account's stored token_uri against them, and a component's own updateKeys unable to choose the
refresh settings the keys service stores."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from oarlock.component.model import Component
from oarlock.credentials.manager import CredentialManager
from oarlock.credentials.presets import RefreshSettings
from oarlock.devprovider import DevProvider
from oarlock.errors import ConfigurationError
from oarlock.keys.consumer import KeysService
from oarlock.keys.keepalive import Keepalive
from oarlock.keys.secrets import ClientSecrets, load_client_secrets
from oarlock.keys.sqlite import SqliteKeyStore
from oarlock.protocol.events import EventList
from oarlock.protocol.message import Message
from oarlock.protocol.stepconfig import StepConfig
from oarlock.redact import redact_text
from oarlock.runtime.context import Context
from oarlock.runtime.executor import FunctionRunner
from oarlock.runtime.memory_transport import MemoryTransport
from oarlock.runtime.worker import Worker
from tests.unit.test_worker_rules import CIPHER, settings_for

CLIENT = "platform-shared-client"
SECRET = "PLATFORM-CLIENT-SECRET-never-elsewhere"


class ForeignTokenEndpoint(ThreadingHTTPServer):
    """A token endpoint on a host that is not the client's: records every form it receives, answers a token."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        super().__init__(("127.0.0.1", 0), _ForeignHandler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/token"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ForeignHandler(BaseHTTPRequestHandler):
    server: ForeignTokenEndpoint

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
        self.server.received.append({key: values[0] for key, values in form.items()})
        body = json.dumps({"access_token": "at-foreign", "refresh_token": "rt-foreign", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def foreign() -> Iterator[ForeignTokenEndpoint]:
    server = ForeignTokenEndpoint()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def platform() -> Iterator[DevProvider]:
    """The platform's own token endpoint, whose client the shared secret belongs to."""
    with DevProvider(rotation="rotate", client_id=CLIENT, client_secret=SECRET) as dev:
        yield dev


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteKeyStore]:
    opened = SqliteKeyStore(tmp_path / "keys.sqlite")
    yield opened
    opened.close()


def secrets_file(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "clients.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    os.chmod(path, 0o600)
    return path


def bound_to(tmp_path: Path, *token_uris: str) -> ClientSecrets:
    uris: str | list[str] = token_uris[0] if len(token_uris) == 1 else list(token_uris)
    return load_client_secrets(secrets_file(tmp_path, {CLIENT: {"secret": SECRET, "token_uri": uris}}))


def settings(token_uri: str) -> dict[str, str]:
    return {"token_uri": token_uri, "client_id": CLIENT, "client_auth": "post"}


# -- the reproduction, end to end ------------------------------------------------------------------

SNEAK = """
def process(msg, cfg, snapshot, ctx):
    # a component's own updateKeys, the sailor way, with an oauth2 block of its choosing beside the token set
    ctx.emit("updateKeys", {"oauth": dict(cfg["oauth"]),
                            "oauth2": {"token_uri": msg.body["to"], "client_id": msg.body["client_id"]}})
    return {"body": {}}
"""


def run_sneak(tmp_path: Path, cfg: dict[str, Any], body: dict[str, Any]) -> Any:
    """The component runs on a worker (amqp route); the one updateKeys message it published."""
    component = tmp_path / "comp"
    (component / "lib").mkdir(parents=True)
    (component / "lib" / "sneak.py").write_text(SNEAK)
    (component / "component.json").write_text(
        json.dumps({"title": "G", "actions": {"sneak": {"title": "S", "main": "lib/sneak.py", "metadata": {}}}})
    )
    transport = MemoryTransport()
    runner = FunctionRunner(Component.load(component), "sneak", credentials=CredentialManager())
    worker = Worker(
        settings_for("sneak", ELASTICIO_UPDATE_KEYS_ROUTING_KEY="updateKeys"),
        runner,
        StepConfig(cfg),
        transport,
        concurrency=1,
    )
    worker.start()
    try:
        transport.deliver(CIPHER.encrypt({"id": "m", "body": body}), {"messageId": "m"})
        transport.wait_for(lambda: transport.acked)
    finally:
        worker.stop()
    (message,) = transport.published_to("updateKeys")
    return message


def test_a_components_own_updatekeys_cannot_steer_the_platforms_client_secret_to_a_host_of_its_choosing(
    tmp_path: Path, store: SqliteKeyStore, platform: DevProvider, foreign: ForeignTokenEndpoint
) -> None:
    cfg = platform.cfg(account="tenant-a")
    cfg["oauth2"].pop("client_secret")  # the step's settings: the platform's client, its secret only in the file
    message = run_sneak(tmp_path, cfg, {"to": foreign.token_url, "client_id": CLIENT})
    assert CIPHER.decrypt(message.body)["oauth2"]["token_uri"] == platform.token_url  # the engine's, not the emitted
    KeysService(store, "amqp://unused", "q", CIPHER).handle(message.body, dict(message.headers))
    stored = store.get("tenant-a")
    assert stored is not None and stored.settings is not None and stored.settings["token_uri"] == platform.token_url
    summary = Keepalive(store, bound_to(tmp_path, platform.token_url), idle_override=0).run_once()
    assert summary.refreshed == ["tenant-a"] and platform.stats()["refresh_calls"] == 1
    assert foreign.received == []


def test_an_account_stored_with_a_foreign_token_uri_is_skipped_and_reported_and_that_host_receives_nothing(
    tmp_path: Path, store: SqliteKeyStore, platform: DevProvider, foreign: ForeignTokenEndpoint
) -> None:
    # however the settings got there (an older worker, a PUT, keys put): the bound secret does not follow them
    store.save("tenant-a", platform.mint("alice"), 1, None, settings(foreign.token_url))
    summary = Keepalive(store, bound_to(tmp_path, platform.token_url), idle_override=0).run_once()
    assert summary.due == ["tenant-a"] and summary.skipped_no_secret == ["tenant-a"] and summary.problems
    reason = summary.reasons["tenant-a"]
    assert CLIENT in reason and foreign.origin in reason and platform.url in reason
    assert SECRET not in json.dumps(summary.as_dict())
    assert foreign.received == [] and platform.stats()["token_calls"] == 0
    stored = store.get("tenant-a")
    assert stored is not None and stored.version == 1  # not refreshed, not touched


def test_an_account_at_one_of_its_bound_clients_token_endpoints_is_still_refreshed(
    tmp_path: Path, store: SqliteKeyStore, platform: DevProvider, foreign: ForeignTokenEndpoint
) -> None:
    # origins compare scheme, host and port (case-insensitively), not the path
    port = platform.url.rsplit(":", 1)[1]
    secrets = bound_to(tmp_path, "https://login.example/token", f"HTTP://127.0.0.1:{port}/another/path")
    store.save("tenant-own", platform.mint("alice"), 1, None, settings(platform.token_url))
    store.save("tenant-foreign", platform.mint("bob"), 1, None, settings(foreign.token_url))
    summary = Keepalive(store, secrets, idle_override=0).run_once()
    assert summary.refreshed == ["tenant-own"] and summary.skipped_no_secret == ["tenant-foreign"]
    assert platform.stats()["refresh_calls"] == 1 and platform.stats()["invalid_client"] == 0
    assert foreign.received == []


def test_an_unbound_secret_still_refreshes_with_one_warning_per_client_saying_how_to_bind_it(
    tmp_path: Path, store: SqliteKeyStore, platform: DevProvider, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = load_client_secrets(secrets_file(tmp_path, {CLIENT: SECRET}))
    assert secrets.allowed_origins(CLIENT) is None
    store.save("acct-1", platform.mint("alice"), 1, None, settings(platform.token_url))
    store.save("acct-2", platform.mint("bob"), 1, None, settings(platform.token_url))
    keepalive = Keepalive(store, secrets, idle_override=0, min_interval=0)
    assert sorted(keepalive.run_once().refreshed) == ["acct-1", "acct-2"]
    assert sorted(keepalive.run_once().refreshed) == ["acct-1", "acct-2"]
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "not bound" in r.getMessage()
    ]
    assert len(warnings) == 1 and CLIENT in warnings[0] and '"token_uri"' in warnings[0]
    assert SECRET not in warnings[0]


def test_the_legacy_default_client_secret_goes_only_to_its_own_token_uri(
    store: SqliteKeyStore, platform: DevProvider, foreign: ForeignTokenEndpoint
) -> None:
    default = {"token_uri": platform.token_url, "client_id": CLIENT, "client_secret": SECRET}
    store.save("tenant-own", platform.mint("alice"), 1, None, settings(platform.token_url))
    store.save("tenant-foreign", platform.mint("bob"), 1, None, settings(foreign.token_url))
    summary = Keepalive(store, {}, idle_override=0, default_oauth2=default).run_once()
    assert summary.refreshed == ["tenant-own"] and summary.skipped_no_secret == ["tenant-foreign"]
    assert foreign.origin in summary.reasons["tenant-foreign"] and foreign.received == []


# -- the client-secrets file's bound form ------------------------------------------------------------


def test_the_client_secrets_file_binds_a_secret_to_the_origins_of_its_token_uris(tmp_path: Path) -> None:
    path = secrets_file(
        tmp_path,
        {
            "one": {"secret": "secret-of-one-bound", "token_uri": "https://Login.Example/oauth2/token"},
            "two": {"secret": "secret-of-two-bound", "token_uri": ["https://a.example:8443/t", "http://b.example/t"]},
            "public": {"secret": "", "token_uri": "https://p.example/token"},
            "legacy": "secret-of-legacy-unbound",
        },
    )
    secrets = load_client_secrets(path)
    assert dict(secrets) == {
        "one": "secret-of-one-bound",
        "two": "secret-of-two-bound",
        "public": "",
        "legacy": "secret-of-legacy-unbound",
    }
    assert secrets.allowed_origins("one") == {"https://login.example:443"}
    assert secrets.allowed_origins("two") == {"https://a.example:8443", "http://b.example:80"}
    assert secrets.allowed_origins("public") == {"https://p.example:443"}
    assert secrets.allowed_origins("legacy") is None and secrets.allowed_origins("unknown") is None
    assert "secret-of-two-bound" not in redact_text("it is secret-of-two-bound")
    assert "secret-of-one-bound" not in repr(secrets)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"token_uri": "https://login.example/token"}, "'secret' must be a string"),
        ({"secret": 42, "token_uri": "https://login.example/token"}, "'secret' must be a string"),
        ({"secret": "a-bound-secret-value"}, "'token_uri' must be an absolute http(s) URL or a non-empty list"),
        ({"secret": "a-bound-secret-value", "token_uri": []}, "'token_uri' must be an absolute http(s) URL"),
        ({"secret": "a-bound-secret-value", "token_uri": "/token"}, "'token_uri' is not an absolute http(s) URL"),
        ({"secret": "a-bound-secret-value", "token_uri": "ftp://x.example/t"}, "is not an absolute http(s) URL"),
        (
            {"secret": "a-bound-secret-value", "token_uri": ["https://ok.example/t", 7]},
            "'token_uri' entry 1 is not an absolute http(s) URL",
        ),
        (
            {"secret": "a-bound-secret-value", "token_url": "https://login.example/token"},
            "unknown key(s) 'token_url'",
        ),
    ],
)
def test_a_bad_bound_entry_is_refused_naming_its_client_id_and_what_is_wrong_never_the_secret(
    tmp_path: Path, entry: dict[str, Any], expected: str
) -> None:
    path = secrets_file(tmp_path, {"good": "a-good-secret-value", "my-app": entry})
    with pytest.raises(ConfigurationError) as raised:
        load_client_secrets(path)
    message = str(raised.value)
    assert expected in message and "client_id 'my-app'" in message and str(path) in message
    assert "a-bound-secret-value" not in message and "a-good-secret-value" not in message


def test_a_secret_that_is_neither_a_string_nor_an_object_is_refused_with_both_forms_named(tmp_path: Path) -> None:
    path = secrets_file(tmp_path, {"my-app": ["a-listed-secret-value"]})
    with pytest.raises(ConfigurationError) as raised:
        load_client_secrets(path)
    assert "not so for 'my-app'" in str(raised.value) and '"token_uri"' in str(raised.value)
    assert "a-listed-secret-value" not in str(raised.value)


# -- a component's own updateKeys ----------------------------------------------------------------------


def emit_own_update(cfg: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    sink = EventList()
    ctx = Context(
        sink=sink,
        message=Message(),
        cfg=cfg,
        snapshot={},
        logger=logging.getLogger("t"),
        credentials=CredentialManager(),
    )
    ctx.emit("updateKeys", payload)
    (event,) = sink.events
    return dict(event.payload)


OWN_TOKEN = {"access_token": "at-own", "refresh_token": "rt-own", "expires_in": 60}


def test_a_components_own_updatekeys_carries_the_engines_oauth2_not_the_one_it_emitted() -> None:
    step = {"token_uri": "https://login.example/token", "client_id": CLIENT, "client_secret": SECRET, "scope": "a b"}
    cfg = {"_account": "acct-own", "oauth": dict(OWN_TOKEN), "oauth2": step}
    emitted = {
        "oauth": {"access_token": "at-new", "refresh_token": "rt-new"},
        "oauth2": {"token_uri": "https://attacker.example/t", "client_id": CLIENT, "client_secret": "x-leaked"},
        "tenant": "t1",
    }
    payload = emit_own_update(cfg, emitted)
    assert payload["oauth2"] == RefreshSettings.from_cfg(step).public()
    assert payload["oauth2"]["token_uri"] == "https://login.example/token" and "client_secret" not in payload["oauth2"]
    assert (
        payload["tenant"] == "t1" and payload["account"] == "acct-own" and payload["oauth"]["access_token"] == "at-new"
    )


@pytest.mark.parametrize("oauth2", [None, {"client_id": CLIENT}, {"token_uri": "https://l.example/t", "provider": "?"}])
def test_a_components_own_oauth2_is_dropped_when_the_cfg_has_no_refresh_settings_of_its_own(
    oauth2: dict[str, Any] | None,
) -> None:
    cfg: dict[str, Any] = {"_account": "acct-own", "oauth": dict(OWN_TOKEN)}
    if oauth2 is not None:
        cfg["oauth2"] = oauth2
    emitted = {"oauth": {"access_token": "at-new"}, "oauth2": {"token_uri": "https://attacker.example/t"}, "k": 1}
    payload = emit_own_update(cfg, emitted)
    assert "oauth2" not in payload and payload["k"] == 1 and payload["oauth"]["access_token"] == "at-new"
    # an update that emits no oauth2 is sent as before: none is added
    assert "oauth2" not in emit_own_update(cfg, {"oauth": {"access_token": "at-newer"}})
