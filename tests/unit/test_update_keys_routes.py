"""updateKeys reaches every route the deployment has before the input is acked: sailor's PUT, AMQP, or both."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from oarlock.devprovider import DevProvider
from oarlock.errors import EnvironmentConfigError
from oarlock.keys.platform_api import AccountsApi
from tests.unit.test_worker_rules import KEYS, Rig, settings_for


class StubPlatform(ThreadingHTTPServer):
    """The account route of a sailor platform: records each PUT, answers the statuses it is given."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.puts: list[tuple[str, Any, str]] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StubPlatform
    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.puts.append((self.path, body, self.headers.get("Authorization", "")))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        answer = b"{}"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def platform(request: pytest.FixtureRequest) -> Iterator[StubPlatform]:
    server = StubPlatform(getattr(request, "param", None))
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def provider() -> Iterator[DevProvider]:
    with DevProvider() as dev:
        yield dev


def refreshing_rig(provider: DevProvider, platform: StubPlatform, **options: Any) -> Rig:
    cfg = provider.cfg(account=options.pop("account", "acct-put"))
    if options.pop("no_account", False):
        cfg.pop("_account")
    cfg["oauth"]["expires_at"] = 1.0  # expired: the first request refreshes
    api = AccountsApi(platform.url, "user", "api-key", pause_seconds=0.0)
    return Rig(
        "api", cfg, accounts_api=api, ELASTICIO_API_URI=platform.url, ELASTICIO_UPDATE_KEYS_ROUTING_KEY="k", **options
    )


def run_one(rig: Rig) -> None:
    rig.worker.start()
    try:
        rig.send({"n": 1})
        rig.settled()
    finally:
        rig.worker.stop()


def test_with_the_step_cfg_from_the_platform_api_a_refresh_is_put_to_the_account_and_nothing_else_published(
    provider: DevProvider, platform: StubPlatform
) -> None:
    rig = refreshing_rig(provider, platform, step_from_api=True)
    assert rig.worker.update_keys_routes == {"api"}
    run_one(rig)
    ((path, body, auth),) = platform.puts
    assert path == "/v1/accounts/acct-put" and auth.startswith("Basic ")
    assert list(body) == ["keys"] and list(body["keys"]) == ["oauth"]
    assert body["keys"]["oauth"]["access_token"] and body["keys"]["oauth"]["refresh_token"]
    assert [m.routing_key for m in rig.transport.published] == [KEYS["data"]]
    assert len(rig.transport.acked) == 1 and rig.errors() == []


@pytest.mark.parametrize("platform", [[500, 500, 500]], indirect=True)
def test_a_put_answered_500_three_times_is_tried_three_times_then_an_error_and_a_reject(
    provider: DevProvider, platform: StubPlatform
) -> None:
    rig = refreshing_rig(provider, platform, step_from_api=True)
    run_one(rig)
    assert len(platform.puts) == 3
    (error,) = rig.errors()
    assert "acct-put" in error["message"] and "HTTP 500 after 3 attempts" in error["message"]
    assert len(rig.transport.rejected) == 1 and rig.transport.acked == []


@pytest.mark.parametrize("platform", [[500, 200]], indirect=True)
def test_a_put_that_succeeds_on_its_second_attempt_lets_the_input_be_acked(
    provider: DevProvider, platform: StubPlatform
) -> None:
    rig = refreshing_rig(provider, platform, step_from_api=True)
    run_one(rig)
    assert len(platform.puts) == 2 and len(rig.transport.acked) == 1 and rig.errors() == []


@pytest.mark.parametrize("platform", [[404]], indirect=True)
def test_a_put_answered_404_is_not_retried_and_is_an_error_and_a_reject(
    provider: DevProvider, platform: StubPlatform
) -> None:
    rig = refreshing_rig(provider, platform, step_from_api=True)
    run_one(rig)
    assert len(platform.puts) == 1
    assert "HTTP 404 after 1 attempt" in rig.errors()[0]["message"] and len(rig.transport.rejected) == 1


def test_a_step_cfg_without_an_account_is_a_clear_error_when_a_refresh_must_be_put(
    provider: DevProvider, platform: StubPlatform
) -> None:
    rig = refreshing_rig(provider, platform, step_from_api=True, no_account=True)
    run_one(rig)
    assert platform.puts == []
    assert "the step cfg has no _account" in rig.errors()[0]["message"] and len(rig.transport.rejected) == 1


def test_with_a_cfg_from_elsewhere_the_update_goes_over_amqp_only(
    provider: DevProvider, platform: StubPlatform
) -> None:
    rig = refreshing_rig(provider, platform, step_from_api=False)
    assert rig.worker.update_keys_routes == {"amqp"}
    run_one(rig)
    assert platform.puts == [] and len(rig.transport.published_to("k")) == 1 and len(rig.transport.acked) == 1


def test_both_routes_can_be_asked_for_and_an_unroutable_amqp_update_is_an_error_even_when_the_put_worked(
    provider: DevProvider, platform: StubPlatform
) -> None:
    rig = refreshing_rig(provider, platform, step_from_api=True, ELASTICIO_UPDATE_KEYS_ROUTES="api,amqp")
    assert rig.worker.update_keys_routes == {"api", "amqp"}
    rig.transport.make_unroutable("k")
    run_one(rig)
    assert len(platform.puts) == 1
    assert "unroutable" in rig.errors()[0]["message"] and len(rig.transport.rejected) == 1


def test_update_keys_via_api_means_both_routes_and_a_bad_routes_value_is_named() -> None:
    assert settings_for("api", ELASTICIO_UPDATE_KEYS_VIA_API="true").routes_for(cfg_from_api=False) == {"api", "amqp"}
    assert settings_for("api", ELASTICIO_UPDATE_KEYS_ROUTES="amqp").routes_for(cfg_from_api=True) == {"amqp"}
    with pytest.raises(EnvironmentConfigError, match="ELASTICIO_UPDATE_KEYS_ROUTES must name api, amqp or both"):
        settings_for("api", ELASTICIO_UPDATE_KEYS_ROUTES="kafka")


def test_an_update_keys_a_component_emits_the_sailor_way_is_merged_versioned_stored_and_put(
    tmp_path: Any, platform: StubPlatform
) -> None:
    from oarlock.credentials.manager import CredentialManager
    from oarlock.keys.sqlite import SqliteKeyStore
    from oarlock.protocol.events import EventList
    from oarlock.protocol.message import Message
    from oarlock.runtime.context import Context

    store = SqliteKeyStore(tmp_path / "keys.sqlite")
    manager = CredentialManager(coordinator=store)
    cfg = {"_account": "acct-hand", "oauth": {"access_token": "old-a", "refresh_token": "old-r", "expires_in": 60}}
    prepared = manager.newest_cfg(cfg)
    sink = EventList()
    ctx = Context(
        sink=sink,
        message=Message(),
        cfg=prepared,
        snapshot={},
        logger=__import__("logging").getLogger("t"),
        credentials=manager,
    )
    ctx.emit(
        "updateKeys", {"oauth": {"access_token": "new-a", "refresh_token": "new-r", "expires_in": 60}, "tenant": "t1"}
    )
    (event,) = sink.events
    assert event.persisted and event.payload["account"] == "acct-hand" and event.payload["version"] > 0
    assert event.payload["oauth"]["access_token"] == "new-a" and event.payload["tenant"] == "t1"
    assert manager.newest_cfg(cfg)["oauth"]["access_token"] == "new-a"  # the next messages use it
    stored = store.get("acct-hand")
    assert stored is not None and stored.oauth["refresh_token"] == "new-r"
    api = AccountsApi(platform.url, "u", "k")
    from oarlock.keys.platform_api import platform_keys

    api.put_keys("acct-hand", platform_keys(event.payload))
    ((path, body, _auth),) = platform.puts
    assert path == "/v1/accounts/acct-hand" and set(body["keys"]) == {"oauth", "tenant"}
    store.close()
