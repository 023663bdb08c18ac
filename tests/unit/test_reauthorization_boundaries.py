"""A re-authorization in the shared keys store against a worker whose step cfg still holds the dead credential.

The worker's cfg is static: every message offers the same dead credential again. Once the worker has
taken the operator's re-authorization from the store, that dead credential must never come back as a
"re-authorization" of its own (and be written over the live one), and during the dead credential's
cooldown the store is still asked (at most once a second) so a re-authorization ends it at once.
Real dev provider, real SQLite store, an injected clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from oarlock.credentials.auth import authorized_session
from oarlock.credentials.manager import DEAD_STORE_CHECK_SECONDS, CredentialManager, start_from_stored
from oarlock.devprovider import DevProvider, ManualClock
from oarlock.errors import CredentialNeedsReauthorization
from oarlock.keys.reauth import store_authorization
from oarlock.keys.sqlite import SqliteKeyStore
from oarlock.protocol.events import EventList


class CountingStore(SqliteKeyStore):
    gets = 0

    def get(self, account: str) -> Any:
        type(self).gets += 1
        return super().get(account)


def message(manager: CredentialManager, cfg: dict[str, Any], url: str) -> requests.Response:
    """What one input does: the static cfg prepared afresh, one API call through ctx.http."""
    return authorized_session(manager, manager.newest_cfg(cfg), sink=EventList()).get(url)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteKeyStore]:
    opened = SqliteKeyStore(tmp_path / "keys.sqlite")
    yield opened
    opened.close()


@pytest.fixture
def dead_cfg_world(tmp_path: Path) -> Any:
    with DevProvider() as provider:
        cfg = provider.cfg(account="acct-dead", subject="dead-user")
        cfg["oauth"]["expires_at"] = 0  # due: the first use refreshes
        provider.revoke("dead-user")  # its refresh token lapsed while the flow slept
        store = CountingStore(tmp_path / "keys.sqlite")
        clock = ManualClock(1_000.0)
        manager = CredentialManager(coordinator=store, clock=clock, cooldown_seconds=30)
        yield provider, cfg, store, clock, manager
        store.close()


def test_a_dead_cfg_credential_never_comes_back_over_the_re_authorization_it_was_replaced_by(
    dead_cfg_world: Any,
) -> None:
    provider, cfg, store, clock, manager = dead_cfg_world
    api = f"{provider.url}/api/me"
    with pytest.raises(CredentialNeedsReauthorization):
        message(manager, cfg, api)
    live = provider.mint("live-user")
    store_authorization(store, "acct-dead", dict(live))  # the operator: oarlock keys put
    clock.advance(31)  # past the cooldown
    for _ in range(5):  # every later message offers the dead cfg credential again
        assert message(manager, cfg, api).status_code == 200
        stored = store.get("acct-dead")
        assert stored is not None and stored.oauth["refresh_token"] != cfg["oauth"]["refresh_token"]
        assert manager.newest_cfg(cfg)["oauth"]["refresh_token"] != cfg["oauth"]["refresh_token"]
    assert provider.stats()["invalid_grant"] == 1, "the dead credential was tried once, never again"


def test_a_re_authorization_in_the_store_ends_the_cooldown_within_a_second_not_after_thirty(
    dead_cfg_world: Any,
) -> None:
    provider, cfg, store, clock, manager = dead_cfg_world
    api = f"{provider.url}/api/me"
    with pytest.raises(CredentialNeedsReauthorization):
        message(manager, cfg, api)
    store_authorization(store, "acct-dead", dict(provider.mint("live-user")))
    clock.advance(DEAD_STORE_CHECK_SECONDS + 0.1)  # well inside the 30 s cooldown
    assert message(manager, cfg, api).status_code == 200
    assert provider.stats()["invalid_grant"] == 1


def test_during_the_cooldown_the_store_is_asked_at_most_once_a_second(dead_cfg_world: Any) -> None:
    provider, cfg, _store, clock, manager = dead_cfg_world
    api = f"{provider.url}/api/me"
    with pytest.raises(CredentialNeedsReauthorization):
        message(manager, cfg, api)
    before = CountingStore.gets
    for _ in range(50):  # fifty inputs in the same instant
        with pytest.raises(CredentialNeedsReauthorization, match="must be re-authorized"):
            message(manager, cfg, api)
    assert CountingStore.gets - before <= 1
    clock.advance(DEAD_STORE_CHECK_SECONDS)
    with pytest.raises(CredentialNeedsReauthorization):
        message(manager, cfg, api)
    assert CountingStore.gets - before <= 2 and provider.stats()["invalid_grant"] == 1


def test_a_re_authorization_during_a_workers_refresh_waits_for_it_and_wins(store: SqliteKeyStore) -> None:
    with DevProvider(rotation="rotate", token_latency_ms=800) as provider:
        cfg = provider.cfg(account="acct-race", subject="old-user")
        cfg["oauth"]["expires_at"] = 0
        worker = CredentialManager(coordinator=store)
        at_endpoint = threading.Event()
        provider_calls = provider.stats()["refresh_calls"]

        def refresh() -> None:
            session = authorized_session(worker, worker.newest_cfg(cfg), sink=EventList())
            at_endpoint.set()
            assert session.get(f"{provider.url}/api/me").status_code == 200

        running = threading.Thread(target=refresh)
        running.start()
        at_endpoint.wait(10)
        deadline = time.monotonic() + 10
        while provider.stats()["refresh_calls"] == provider_calls and time.monotonic() < deadline:
            time.sleep(0.01)  # the worker holds the account's lock and waits for the token endpoint
        live = provider.mint("new-user")
        done = store_authorization(store, "acct-race", dict(live))  # the operator, meanwhile
        running.join(30)
    stored = store.get("acct-race")
    assert done.written and stored is not None and stored.version == done.version
    assert stored.oauth["refresh_token"] == live["refresh_token"], "the re-authorization is what the store holds"
    assert done.replaced_version is not None, "it was stored over the worker's refresh, not under it"


def test_a_token_set_with_its_own_history_is_stored_only_when_it_wins_under_the_lock(store: SqliteKeyStore) -> None:
    old = store_authorization(store, "acct", {"access_token": "at-0", "refresh_token": "rt-0"})
    first = store_authorization(store, "acct", {"access_token": "at-1", "refresh_token": "rt-1"})
    stale = dict(old.oauth)  # a late PUT of the credential the re-authorization superseded
    refused = store_authorization(store, "acct", stale, fresh=False, only_if_newer=True)
    assert not refused.written and refused.version == first.version
    stored = store.get("acct")
    assert stored is not None and stored.oauth["refresh_token"] == "rt-1"


def test_a_worker_restarted_from_a_cfg_with_the_dead_credential_starts_from_the_re_authorization(
    dead_cfg_world: Any,
) -> None:
    provider, cfg, store, clock, manager = dead_cfg_world
    api = f"{provider.url}/api/me"
    with pytest.raises(CredentialNeedsReauthorization):
        message(manager, cfg, api)
    kept = store.get("acct-dead")
    assert kept is not None and kept.oauth["refresh_token"] == cfg["oauth"]["refresh_token"], "the dead one is known"
    live = provider.mint("live-user")
    store_authorization(store, "acct-dead", dict(live))  # supersedes the dead one: it is in the new lineage
    restarted = CredentialManager(coordinator=store, clock=clock)
    start = start_from_stored(cfg, store)
    assert start["oauth"]["refresh_token"] == live["refresh_token"]
    assert message(restarted, start, api).status_code == 200
    stored = store.get("acct-dead")
    assert stored is not None and stored.oauth["refresh_token"] == live["refresh_token"]
    assert provider.stats()["invalid_grant"] == 1
