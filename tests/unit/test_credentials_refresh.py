"""The refresh engine against the real dev provider: single-flight, modes, failures, fleet, hooks."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from oarlock.credentials.auth import authorized_session, oauth2_flow
from oarlock.credentials.manager import CredentialManager
from oarlock.credentials.reports import fingerprint_of
from oarlock.devprovider import DevProvider, ManualClock
from oarlock.errors import CredentialNeedsReauthorization, TokenEndpointError, TokenRejected
from oarlock.keys.sqlite import SqliteKeyStore
from oarlock.protocol.events import Event, EventList, EventName
from tests.support import provider_cfg


class UpdateList:
    """A sink keeping the payloads of the updateKeys events it is given (and the dead-credential reports apart)."""

    def __init__(self, updates: list[dict[str, Any]], reports: list[dict[str, Any]] | None = None) -> None:
        self.updates = updates
        self.reports = reports if reports is not None else []

    def emit(self, event: Event) -> None:
        if event.name is EventName.CREDENTIAL_INVALID:
            self.reports.append(event.payload)
            return
        assert event.name is EventName.UPDATE_KEYS
        self.updates.append(event.payload)


def session_for(
    manager: CredentialManager,
    cfg: dict[str, Any],
    updates: list[dict[str, Any]],
    reports: list[dict[str, Any]] | None = None,
) -> requests.Session:
    return authorized_session(manager, manager.newest_cfg(cfg), sink=UpdateList(updates, reports))


def hammer(threads: int, calls: int, fn: Callable[[], object]) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work() -> None:
        barrier.wait()
        for _ in range(calls):
            try:
                fn()
            except BaseException as exc:  # collected and asserted on
                errors.append(exc)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return errors


def test_64_threads_finding_one_expired_credential_make_exactly_one_token_request() -> None:
    with DevProvider(rotation="single-use", token_latency_ms=100) as provider:
        cfg = provider_cfg(provider)
        cfg["oauth"]["expires_at"] = 0
        manager = CredentialManager()
        updates: list[dict[str, Any]] = []

        def call() -> None:
            answer = session_for(manager, cfg, updates).get(f"{provider.url}/api/me")
            assert answer.status_code == 200

        errors = hammer(64, 1, call)
        stats = provider.stats()
    assert errors == []
    assert stats["refresh_calls"] == 1 and stats["max_concurrent_token_calls"] == 1
    assert len(updates) == 1, "only the call that refreshed emits updateKeys"


def test_on_401_threads_that_got_401_with_the_old_token_do_not_refresh_again() -> None:
    clock = ManualClock()
    with DevProvider(ttl=60, rotation="single-use", latency_ms=50, clock=clock) as provider:
        cfg = provider_cfg(provider, refresh="on_401")
        manager = CredentialManager(clock=clock)
        updates: list[dict[str, Any]] = []
        clock.advance(60)  # the token has expired on both sides; on_401 does not look at expires_at

        def call() -> None:
            assert session_for(manager, cfg, updates).get(f"{provider.url}/api/me").status_code == 200

        errors = hammer(16, 1, call)
        stats = provider.stats()
    assert errors == []
    assert stats["refresh_calls"] == 1 and stats["invalid_grant"] == 0
    assert 1 <= stats["unauthorized"] <= 16


def test_always_mode_refreshes_before_every_request_but_coalesces_concurrent_ones() -> None:
    with DevProvider(rotation="rotate", token_latency_ms=50) as provider:
        cfg = provider_cfg(provider, refresh="always")
        manager = CredentialManager()
        updates: list[dict[str, Any]] = []
        session = session_for(manager, cfg, updates)
        for _ in range(3):
            assert session.get(f"{provider.url}/api/me").status_code == 200
        assert provider.stats()["refresh_calls"] == 3
        errors = hammer(8, 1, lambda: session_for(manager, cfg, updates).get(f"{provider.url}/api/me"))
        stats = provider.stats()
    assert errors == []
    assert 4 <= stats["refresh_calls"] <= 3 + 8
    assert stats["max_concurrent_token_calls"] == 1


def test_three_503s_are_retried_with_backoff_and_the_call_succeeds() -> None:
    sleeps: list[float] = []
    with DevProvider(fail_first=3) as provider:
        cfg = provider_cfg(provider)
        cfg["oauth"]["expires_at"] = 0
        manager = CredentialManager(sleep=sleeps.append)
        assert session_for(manager, cfg, []).get(f"{provider.url}/api/me").status_code == 200
        stats = provider.stats()
    assert stats["failed"] == 3 and stats["refresh_calls"] == 4
    assert len(sleeps) == 3 and all(0 <= s <= 10 for s in sleeps)


def test_a_429_retry_after_is_honoured_exactly() -> None:
    sleeps: list[float] = []
    with DevProvider(throttle_first=1, retry_after=7) as provider:
        cfg = provider_cfg(provider)
        cfg["oauth"]["expires_at"] = 0
        manager = CredentialManager(sleep=sleeps.append)
        assert session_for(manager, cfg, []).get(f"{provider.url}/api/me").status_code == 200
    assert sleeps == [7.0]


def test_retries_stop_at_the_budget_with_a_clear_error() -> None:
    clock = [1_000.0]
    with DevProvider(fail_first=1000) as provider:
        cfg = provider_cfg(provider)
        cfg["oauth"]["expires_at"] = 0
        manager = CredentialManager(retry_budget_seconds=5, sleep=lambda s: clock.__setitem__(0, clock[0] + s))
        with pytest.raises(TokenEndpointError) as caught:
            session_for(manager, cfg, []).get(f"{provider.url}/api/me")
        assert f"{provider.token_url} answered 503" in str(caught.value)
        attempts = provider.stats()["failed"]
    assert clock[0] - 1_000.0 <= 5 and 2 <= attempts < 50


def test_a_revoked_credential_fails_fast_during_the_cooldown_and_other_accounts_keep_working() -> None:
    now = [time.time()]
    with DevProvider() as provider:
        dead = provider_cfg(provider, account="acct-dead", subject="dead")
        alive = provider_cfg(provider, account="acct-alive", subject="alive")
        dead["oauth"]["expires_at"] = alive["oauth"]["expires_at"] = 0
        provider.revoke("dead")
        manager = CredentialManager(clock=lambda: now[0], cooldown_seconds=30)
        reports: list[dict[str, Any]] = []
        for _ in range(5):
            with pytest.raises(CredentialNeedsReauthorization, match="account acct-dead must be re-authorized"):
                session_for(manager, dead, [], reports).get(f"{provider.url}/api/me")
            assert session_for(manager, alive, [], reports).get(f"{provider.url}/api/me").status_code == 200
        assert provider.stats()["invalid_grant"] == 1, "no token request for the dead credential in the cooldown"
        assert len(reports) == 1, "the keys service hears of a dead credential once per cooldown, not per message"
        assert reports[0]["type"] == "credentialInvalid" and reports[0]["account"] == "acct-dead"
        assert reports[0]["state"] == "needs_reauthorization" and "invalid_grant" in reports[0]["reason"]
        # the report names the dead credential by a one-way fingerprint, never by a token
        assert reports[0]["fingerprint"] == fingerprint_of(dead["oauth"]) and len(reports[0]["fingerprint"]) == 16
        assert dead["oauth"]["refresh_token"] not in json.dumps(reports[0])
        assert dead["oauth"]["access_token"] not in json.dumps(reports[0])
        now[0] += 31
        with pytest.raises(CredentialNeedsReauthorization):
            session_for(manager, dead, [], reports).get(f"{provider.url}/api/me")
        assert provider.stats()["invalid_grant"] == 2 and len(reports) == 2


def test_a_new_credential_from_the_platform_ends_the_cooldown() -> None:
    with DevProvider() as provider:
        cfg = provider_cfg(provider, account="acct-r")
        cfg["oauth"]["expires_at"] = 0
        provider.revoke()
        manager = CredentialManager()
        with pytest.raises(CredentialNeedsReauthorization):
            session_for(manager, cfg, []).get(f"{provider.url}/api/me")
        reauthorized = provider_cfg(provider, account="acct-r")
        reauthorized["oauth"]["obtained_at"] = time.time()
        assert session_for(manager, reauthorized, []).get(f"{provider.url}/api/me").status_code == 200


def test_client_secret_basic_works_and_a_wrong_secret_asks_for_re_authorization() -> None:
    with DevProvider(client_secret="s3cr:t/+") as provider:
        cfg = provider_cfg(provider, client_auth="basic", client_secret="s3cr:t/+")
        cfg["oauth"]["expires_at"] = 0
        assert session_for(CredentialManager(), cfg, []).get(f"{provider.url}/api/me").status_code == 200
        wrong = provider_cfg(provider, client_auth="basic", client_secret="nope")
        wrong["oauth"]["expires_at"] = 0
        with pytest.raises(CredentialNeedsReauthorization, match="invalid_client"):
            session_for(CredentialManager(), wrong, []).get(f"{provider.url}/api/me")


def test_salesforce_like_credentials_refresh_on_401_and_keep_alive_once_a_day() -> None:
    now = [time.time()]
    with DevProvider(expires_in=False) as provider:
        cfg = provider_cfg(provider, provider="salesforce")
        manager = CredentialManager(clock=lambda: now[0])
        updates: list[dict[str, Any]] = []
        assert session_for(manager, cfg, updates).get(f"{provider.url}/api/me").status_code == 200
        assert updates == []
        now[0] += 86_401
        assert session_for(manager, cfg, updates).get(f"{provider.url}/api/me").status_code == 200
        assert len(updates) == 1 and updates[0]["oauth"]["instance_url"] == cfg["oauth"]["instance_url"]
        now[0] += 30
        assert session_for(manager, cfg, updates).get(f"{provider.url}/api/me").status_code == 200
        assert len(updates) == 1, "never more than once a minute"


def test_a_custom_refresh_hook_replaces_the_token_request_and_its_fields_are_merged_and_emitted() -> None:
    with DevProvider() as provider:
        cfg = provider_cfg(provider)
        cfg["oauth"]["expires_at"] = 0
        fresh = provider.mint("user-1")
        seen: list[tuple[dict[str, Any], dict[str, Any]]] = []

        def hook(credentials: dict[str, Any], hook_cfg: dict[str, Any]) -> dict[str, Any]:
            seen.append((credentials, hook_cfg))
            return {"accessToken": fresh["access_token"], "expiresIn": 3600, "session": "s-1"}

        updates: list[dict[str, Any]] = []
        manager = CredentialManager()
        session = authorized_session(manager, manager.newest_cfg(cfg), sink=UpdateList(updates), refresh_hook=hook)
        assert session.get(f"{provider.url}/api/me").status_code == 200
        assert provider.stats()["refresh_calls"] == 0
    assert seen[0][0]["refresh_token"] == cfg["oauth"]["refresh_token"] and seen[0][1]["_account"] == "acct-1"
    (update,) = updates
    assert update["oauth"]["session"] == "s-1" and update["oauth"]["refresh_token"] == cfg["oauth"]["refresh_token"]
    assert update["response"] == {"accessToken": fresh["access_token"], "expiresIn": 3600, "session": "s-1"}


def test_an_immutable_credential_is_refreshed_in_memory_and_the_runtime_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    with DevProvider(ttl=60, clock=clock) as provider, caplog.at_level(logging.INFO):
        cfg = provider_cfg(provider, persist=False)
        cfg["oauth"]["expires_at"] = 0
        manager = CredentialManager(clock=clock)
        updates: list[dict[str, Any]] = []
        for _ in range(2):
            assert session_for(manager, cfg, updates).get(f"{provider.url}/api/me").status_code == 200
            clock.advance(60)  # the refreshed token expires for the provider and the manager alike
    assert len(updates) == 2 and all(u["persist"] is False for u in updates)
    assert caplog.text.count("is immutable (persist: false)") == 1


def test_two_managers_sharing_a_keys_store_never_burn_a_single_use_refresh_token(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / "keys.sqlite")
    clock, expiries = ManualClock(), 4
    with DevProvider(ttl=60, rotation="single-use", latency_ms=20, clock=clock) as provider:
        cfg = provider_cfg(provider)
        workers = [CredentialManager(coordinator=store, clock=clock), CredentialManager(coordinator=store, clock=clock)]

        def call(manager: CredentialManager) -> Callable[[], None]:
            def run() -> None:
                answer = session_for(manager, cfg, []).get(f"{provider.url}/api/me")
                assert answer.status_code == 200, answer.text

            return run

        errors: list[BaseException] = []
        for _ in range(expiries):
            clock.advance(60)  # the token expires for the whole fleet; then 2 x 4 threads find it expired at once
            threads = [threading.Thread(target=lambda m=m: errors.extend(hammer(4, 3, call(m)))) for m in workers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        stats = provider.stats()
    assert errors == [] and stats["invalid_grant"] == 0
    assert stats["refresh_calls"] == expiries, "one refresh per expiry for the whole fleet, not one per worker"


class _Response(requests.Response):
    def __init__(self, status: int) -> None:
        super().__init__()
        self.status_code = status
        self._content = b"{}"
        self.headers["Content-Type"] = "application/json"


def test_the_auth_flow_refreshes_once_on_401_and_resends_without_a_network() -> None:
    manager = CredentialManager()
    cfg = {"_account": "flow", "oauth": {"access_token": "old-token-1"}, "oauth2": {"refresh": "on_401"}}
    bound = manager.credential(
        cfg, sink=EventList(), refresh_hook=lambda c, k: {"access_token": "new-token-2", "expires_in": 60}
    )
    request = requests.Request("POST", "https://api.example/items", json={"a": 1}).prepare()
    flow = oauth2_flow(request, bound, time.time())
    first = next(flow)
    assert first.headers["Authorization"] == "Bearer old-token-1"
    retry = flow.send(_Response(401))
    assert retry.headers["Authorization"] == "Bearer new-token-2" and retry.body == first.body
    with pytest.raises(StopIteration):
        flow.send(_Response(200))


def test_a_second_401_after_a_fresh_token_is_token_rejected_not_a_loop() -> None:
    manager = CredentialManager()
    cfg = {"_account": "loop", "oauth": {"access_token": "old-token-3"}, "oauth2": {"refresh": "on_401"}}
    bound = manager.credential(
        cfg, sink=EventList(), refresh_hook=lambda c, k: {"access_token": "new-token-4", "expires_in": 60}
    )
    flow = oauth2_flow(requests.Request("GET", "https://api.example/me").prepare(), bound, time.time())
    next(flow)
    flow.send(_Response(401))
    with pytest.raises(TokenRejected, match="rejects a freshly refreshed token for account loop"):
        flow.send(_Response(401))


def test_a_403_with_an_invalid_token_body_counts_as_unauthorized() -> None:
    from oarlock.credentials.auth import is_unauthorized

    response = _Response(403)
    response._content = b'{"error": "invalid_token"}'
    assert is_unauthorized(response)
    assert not is_unauthorized(_Response(403))
