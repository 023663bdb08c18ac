"""The credential's entry and persistence boundaries, on the real dev provider and a real SQLite store.

A store that cannot be written after the provider rotated the token (the credential must not be
lost), lineage (a re-authorization is never shadowed by the dead stored credential, a stale cfg
never replaces the live one), an API that rejects every token (a refresh per cooldown, not per
message), and refreshes that hang (only their own account waits). Faults are injected into real
things: a SqliteKeyStore subclass whose writes fail, small HTTP/socket servers on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from oarlock.component.model import Component
from oarlock.credentials.auth import authorized_session
from oarlock.credentials.manager import CredentialManager, start_from_stored
from oarlock.credentials.token import (
    LINEAGE_FIELD,
    LINEAGE_MAX,
    LINEAGE_UNKNOWN,
    Relation,
    TokenSet,
    lineage_hash,
    offered_wins,
    relate,
    supersede,
    version_of,
)
from oarlock.devprovider import DevProvider, ManualClock
from oarlock.errors import CredentialNeedsReauthorization, KeyStoreError, TokenRejected
from oarlock.keys.sqlite import SqliteKeyStore
from oarlock.protocol.events import EventList, EventName
from oarlock.protocol.message import Message
from oarlock.runtime.executor import FunctionRunner
from tests.support import REPO, provider_cfg

TTL = 60.0


class FaultyStore(SqliteKeyStore):
    """The real SQLite store whose next ``failing_saves`` writes (and, when asked, lock/get) raise KeyStoreError."""

    failing_saves = 0
    failing_lock = False
    failing_get = False
    lock_timeouts: list[float]

    def save(
        self,
        account: str,
        oauth: dict[str, Any],
        version: int,
        response: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> bool:
        if self.failing_saves > 0:
            self.failing_saves -= 1
            raise KeyStoreError(f"keys store {self.path}: cannot save account {account}: database is locked")
        return super().save(account, oauth, version, response, settings)

    def get(self, account: str) -> Any:
        if self.failing_get:
            raise KeyStoreError(f"keys store {self.path} cannot be read: disk I/O error")
        return super().get(account)

    def lock(self, account: str, timeout: float = 30.0) -> Any:
        self.lock_timeouts.append(timeout)
        if self.failing_lock:
            raise KeyStoreError(f"keys store {self.path}: lock for account {account} not acquired within 1 s")
        return super().lock(account, timeout)


def faulty_store(tmp_path: Path) -> FaultyStore:
    store = FaultyStore(tmp_path / "keys.sqlite")
    store.lock_timeouts = []
    return store


def get_me(manager: CredentialManager, cfg: dict[str, Any], sink: EventList | None = None) -> requests.Response:
    session = authorized_session(manager, manager.newest_cfg(cfg), sink=sink if sink is not None else EventList())
    return session.get(f"{cfg['baseUrl']}/api/me")


# -- 1. a store write that fails after the provider answered ---------------------------------------------
def test_a_store_that_cannot_be_written_after_a_refresh_loses_nothing_and_the_request_still_succeeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, sleeps, clock = faulty_store(tmp_path), list[float](), ManualClock()
    store.failing_saves = 1000
    with DevProvider(ttl=TTL, rotation="single-use", clock=clock) as provider, caplog.at_level(logging.INFO):
        cfg = provider_cfg(provider, account="acct-blip")
        cfg["oauth"]["expires_at"] = 0  # the first request refreshes: the provider rotates the single-use token
        manager = CredentialManager(coordinator=store, clock=clock, sleep=sleeps.append)
        events = EventList()
        assert get_me(manager, cfg, events).status_code == 200, "the input is not failed because the store blipped"
        (update,) = [e for e in events.events if e.name is EventName.UPDATE_KEYS]
        assert update.persisted is False, "the event must not claim a write that did not happen"
        assert sleeps == [0.2, 0.5, 1.0] and manager.store_write_failures == 1
        assert store.get("acct-blip") is None
        rotated = update.payload["oauth"]["refresh_token"]
        assert rotated != cfg["oauth"]["refresh_token"]
        clock.advance(TTL)  # the next refresh uses the rotated token kept in memory, not the burnt one
        assert get_me(manager, cfg).status_code == 200
        stats = provider.stats()
    assert stats["invalid_grant"] == 0 and stats["refresh_calls"] == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "acct-blip" in errors[0].getMessage() and str(store.path) in errors[0].getMessage()
    assert rotated not in caplog.text


def test_a_store_write_that_fails_twice_is_retried_with_backoff_and_the_update_says_it_was_persisted(
    tmp_path: Path,
) -> None:
    store, sleeps = faulty_store(tmp_path), list[float]()
    store.failing_saves = 2
    with DevProvider(rotation="single-use") as provider:
        cfg = provider_cfg(provider, account="acct-retry")
        cfg["oauth"]["expires_at"] = 0
        manager = CredentialManager(coordinator=store, sleep=sleeps.append)
        events = EventList()
        assert get_me(manager, cfg, events).status_code == 200
    (update,) = [e for e in events.events if e.name is EventName.UPDATE_KEYS]
    stored = store.get("acct-retry")
    assert update.persisted is True and sleeps == [0.2, 0.5] and manager.store_write_failures == 0
    assert stored is not None and stored.version == update.payload["version"]


def test_a_pending_write_is_written_at_the_next_use_of_the_account_once_the_store_recovers(tmp_path: Path) -> None:
    store, clock = faulty_store(tmp_path), ManualClock()
    store.failing_saves = 4  # every attempt of the refresh's write
    with DevProvider(ttl=TTL, rotation="single-use", clock=clock) as provider:
        cfg = provider_cfg(provider, account="acct-pending")
        cfg["oauth"]["expires_at"] = 0
        manager = CredentialManager(coordinator=store, clock=clock, sleep=lambda s: None)
        events = EventList()
        assert get_me(manager, cfg, events).status_code == 200
        assert store.get("acct-pending") is None
        clock.advance(6)  # past the 5 s between retries of a pending write; the token is still valid
        assert get_me(manager, cfg).status_code == 200
        stats = provider.stats()
    stored = store.get("acct-pending")
    (update,) = events.payloads(EventName.UPDATE_KEYS)
    assert stored is not None and stored.version == update["version"] and stats["refresh_calls"] == 1
    assert manager.flush() == 0


def test_flush_writes_a_pending_credential_and_counts_a_failed_retry(tmp_path: Path) -> None:
    store = faulty_store(tmp_path)
    store.failing_saves = 5  # the refresh's four attempts and the first flush
    with DevProvider(rotation="rotate") as provider:
        cfg = provider_cfg(provider, account="acct-flush")
        cfg["oauth"]["expires_at"] = 0
        manager = CredentialManager(coordinator=store, sleep=lambda s: None)
        assert get_me(manager, cfg).status_code == 200
    assert manager.flush() == 1 and manager.store_write_failures == 2
    manager.close()
    assert store.get("acct-flush") is not None


@pytest.mark.parametrize("broken", ["lock", "get"])
def test_a_key_store_error_of_lock_or_get_before_the_provider_is_called_propagates_as_it_is(
    tmp_path: Path, broken: str
) -> None:
    store = faulty_store(tmp_path)
    with DevProvider() as provider:
        cfg = provider_cfg(provider, account="acct-down")
        cfg["oauth"]["expires_at"] = 0
        setattr(store, f"failing_{broken}", True)
        manager = CredentialManager(coordinator=store)
        with pytest.raises(KeyStoreError, match="keys store"):
            get_me(manager, cfg)
        assert provider.stats()["refresh_calls"] == 0


# -- 3. lineage -----------------------------------------------------------------------------------------
def test_every_merge_records_the_rotated_refresh_token_as_a_short_hash_newest_first_at_most_20() -> None:
    token = TokenSet({"access_token": "a-0", "refresh_token": "r-0"})
    for n in range(1, 26):
        token = TokenSet.from_response({"access_token": f"a-{n}", "refresh_token": f"r-{n}"}, now=n, previous=token)
    lineage = token.data[LINEAGE_FIELD]
    assert len(lineage) == LINEAGE_MAX == 20 and all(len(h) == 16 for h in lineage)
    assert lineage[0] == lineage_hash("r-24") and lineage[-1] == lineage_hash("r-0"), "the oldest one is kept"
    same = TokenSet.from_response({"access_token": "a-x"}, now=30, previous=token)  # no rotation: nothing added
    assert same.data[LINEAGE_FIELD] == lineage and same.refresh_token == "r-25"


def test_the_root_and_a_re_authorized_credential_stay_known_as_ancestors_after_many_more_rotations() -> None:
    def rotate(token: TokenSet, prefix: str, times: int) -> TokenSet:
        for n in range(times):
            token = TokenSet.from_response(
                {"access_token": f"a-{prefix}{n}", "refresh_token": f"r-{prefix}{n}"}, now=n, previous=token
            )
        return token

    root = {"access_token": "a-root", "refresh_token": "r-root"}
    dead = rotate(TokenSet(dict(root)), "d", 5)
    reauthorized = {"access_token": "a-x", "refresh_token": "r-x"}  # raw, no obtained_at
    live = rotate(TokenSet(supersede(reauthorized, dead.data)), "x", 30)
    assert len(live.lineage) == LINEAGE_MAX
    for raw in (root, reauthorized):  # what a cfg file or a platform that never follows the rotations holds
        assert relate(raw, live.data) is Relation.OLDER
    for stale in (root, reauthorized, dead.data):  # the last dead one fell out of the lineage: its obtained_at tells
        assert not offered_wins(stale, version_of(stale), live.data, 10**13), "a stale cfg is no re-authorization"
    assert relate({"access_token": "a-new", "refresh_token": "r-new"}, live.data) is Relation.UNRELATED


def test_a_raw_cfg_credential_never_replaces_a_stored_one_whose_history_began_before_lineage_tracking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteKeyStore(tmp_path / "keys.sqlite")
    # what an oarlock without lineage stored after rotating the cfg's token a few times: obtained_at, no lineage
    untracked = {"access_token": "a-3", "refresh_token": "r-3", "obtained_at": 1_800_000_000.0}
    store.save("acct-old", untracked, 1_800_000_000_000)
    raw = {"access_token": "a-0", "refresh_token": "r-0"}  # the cfg file's credential, long rotated away
    cfg: dict[str, Any] = {"_account": "acct-old", "oauth": raw}
    with caplog.at_level(logging.WARNING):
        started = start_from_stored(cfg, store)
    assert started["oauth"] == untracked, "versions decide, as before the upgrade"
    assert "oarlock keys put acct-old" in caplog.text
    rotated = TokenSet.from_response(
        {"access_token": "a-4", "refresh_token": "r-4"}, now=1, previous=TokenSet(untracked)
    )
    assert rotated.lineage == [lineage_hash("r-3"), LINEAGE_UNKNOWN], "its successors say their history is unknown"
    assert not offered_wins(raw, 0, rotated.data, 1)


def test_obtained_at_is_stamped_on_a_credential_first_seen_without_one() -> None:
    clock = ManualClock(1_800_000_000.0)
    manager = CredentialManager(clock=clock)
    cfg = {"_account": "raw", "oauth": {"access_token": "raw-token-1", "refresh_token": "raw-refresh-1"}}
    assert manager.newest_cfg(cfg)["oauth"]["obtained_at"] == 1_800_000_000.0


def test_a_re_authorized_credential_without_obtained_at_wins_over_the_dead_stored_one(tmp_path: Path) -> None:
    store, clock = faulty_store(tmp_path), ManualClock()
    with DevProvider(ttl=TTL, rotation="single-use", clock=clock) as provider:
        cfg = provider_cfg(provider, account="acct-reauth")
        cfg["oauth"]["expires_at"] = 0
        first = CredentialManager(coordinator=store, clock=clock)
        assert get_me(first, cfg).status_code == 200  # stored: a rotated credential of the first lineage
        dead = store.get("acct-reauth")
        assert dead is not None
        provider.revoke()
        clock.advance(TTL)
        with pytest.raises(CredentialNeedsReauthorization):
            get_me(first, cfg)  # the stored lineage is dead: a human re-authorizes
        reauthorized = provider_cfg(provider, account="acct-reauth")  # what the platform's OAuth callback gives
        del reauthorized["oauth"]["expires_at"]  # a raw token response: no obtained_at, no expires_at
        worker = CredentialManager(coordinator=store, clock=clock)
        assert get_me(worker, reauthorized).status_code == 200
        assert get_me(first, reauthorized).status_code == 200, "also where the dead credential is known"
        stats = provider.stats()
    stored = store.get("acct-reauth")
    assert stored is not None and stored.version > dead.version
    assert stored.oauth["refresh_token"] == reauthorized["oauth"]["refresh_token"]
    assert stored.oauth["obtained_at"] == clock()
    assert lineage_hash(dead.oauth["refresh_token"]) in stored.oauth[LINEAGE_FIELD], "the dead one never comes back"
    assert stats["refresh_calls"] == 2, "the re-authorized credential was used as it is, not refreshed"


def test_another_worker_holding_the_dead_credential_adopts_the_re_authorization_from_the_store(tmp_path: Path) -> None:
    store, clock = faulty_store(tmp_path), ManualClock()
    with DevProvider(ttl=TTL, rotation="single-use", clock=clock) as provider:
        cfg = provider_cfg(provider, account="acct-fleet")
        cfg["oauth"]["expires_at"] = 0
        stuck = CredentialManager(coordinator=store, clock=clock, cooldown_seconds=30)
        assert get_me(stuck, cfg).status_code == 200
        provider.revoke()
        clock.advance(TTL)
        with pytest.raises(CredentialNeedsReauthorization):
            get_me(stuck, cfg)
        reauthorized = provider_cfg(provider, account="acct-fleet")
        fresh = CredentialManager(coordinator=store, clock=clock)
        assert get_me(fresh, reauthorized).status_code == 200  # its first use stores the re-authorization
        clock.advance(31)  # the stuck worker's cooldown ends; its cfg still holds the dead lineage
        assert get_me(stuck, cfg).status_code == 200
        stats = provider.stats()
    assert stats["invalid_grant"] == 1


def test_a_stale_cfg_credential_whose_token_was_rotated_away_never_replaces_the_stored_one(tmp_path: Path) -> None:
    store, clock = faulty_store(tmp_path), ManualClock()
    with DevProvider(ttl=TTL, rotation="single-use", clock=clock) as provider:
        cfg = provider_cfg(provider, account="acct-stale")
        cfg["oauth"]["expires_at"] = 0
        assert get_me(CredentialManager(coordinator=store, clock=clock), cfg).status_code == 200
        stale = json.loads(json.dumps(cfg))
        stale["oauth"]["obtained_at"] = clock() + 3600  # a later time than the store's: lineage, not time, decides
        assert get_me(CredentialManager(coordinator=store, clock=clock), stale).status_code == 200
        stats = provider.stats()
    assert stats["invalid_grant"] == 0 and stats["refresh_calls"] == 1


# -- 13. an API that answers 401 to every token ---------------------------------------------------------
class _Always401(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b'{"error": "invalid_token"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("WWW-Authenticate", 'Bearer error="invalid_token"')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def always_401() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Always401)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_api_that_always_answers_401_costs_one_token_call_per_cooldown_not_one_per_message(always_401: str) -> None:
    clock = ManualClock()
    with DevProvider(ttl=TTL, rotation="rotate", clock=clock) as provider:
        cfg = {**provider_cfg(provider, account="acct-401"), "baseUrl": always_401}
        manager = CredentialManager(clock=clock, cooldown_seconds=30)
        runner = FunctionRunner(Component.load(REPO), "request", credentials=manager)
        results = [runner.call(Message(body={"path": "/api/me"}), cfg) for _ in range(50)]
        calls_in_cooldown = provider.stats()["refresh_calls"]
        clock.advance(31)  # the cooldown ends: one more refresh is allowed, then the next cooldown
        results += [runner.call(Message(body={"path": "/api/me"}), cfg) for _ in range(10)]
        stats = provider.stats()
    names = [result.of(EventName.ERROR)[0].payload["name"] for result in results]
    assert names == ["TokenRejected"] * 60, "every message still fails clearly"
    assert calls_in_cooldown == 1 and stats["refresh_calls"] == 2, "not one token call per message"


def test_rejected_after_refresh_stops_refreshes_on_401_for_that_token_for_the_cooldown() -> None:
    clock = ManualClock()
    manager = CredentialManager(clock=clock, cooldown_seconds=30)
    hook_calls: list[int] = []

    def hook(credentials: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
        hook_calls.append(1)
        return {"access_token": f"fresh-token-{len(hook_calls)}", "expires_in": 3600}

    cfg = {"_account": "told", "oauth": {"access_token": "told-token-0"}, "oauth2": {"refresh": "on_401"}}
    bound = manager.credential(cfg, sink=EventList(), refresh_hook=hook)
    bound.rejected_after_refresh("told-token-0")
    with pytest.raises(TokenRejected, match="account told"):
        bound.refresh_after_401("told-token-0")
    assert hook_calls == []
    clock.advance(31)
    assert bound.refresh_after_401("told-token-0") == "fresh-token-1"


# -- 10. a hung refresh holds its own account only --------------------------------------------------------
def test_the_cross_process_lock_is_awaited_longer_than_the_holders_refresh_deadline(tmp_path: Path) -> None:
    store = faulty_store(tmp_path)
    with DevProvider() as provider:
        cfg = provider_cfg(provider, account="acct-wait")
        cfg["oauth"]["expires_at"] = 0
        manager = CredentialManager(coordinator=store, retry_budget_seconds=40)
        assert get_me(manager, cfg).status_code == 200
    deadline = getattr(manager.client, "refresh_deadline_seconds", 60.0)
    assert store.lock_timeouts and all(t > deadline for t in store.lock_timeouts)
    assert manager.lock_timeout_seconds == deadline + 15


class _Hang:
    """A token endpoint that accepts connections and never answers (until closed: then it refuses)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/token"
        self.accepted = threading.Event()
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.closed:
                    connection.close()
                    return
                self.connections.append(connection)
            self.accepted.set()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            connections, self.connections = self.connections, []
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the other thread
        self.listener.close()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()


def test_a_hung_refresh_of_one_account_never_blocks_the_refresh_of_another(tmp_path: Path) -> None:
    store, hang = faulty_store(tmp_path), _Hang()
    with DevProvider() as provider:
        hung = provider_cfg(provider, account="acct-hung", token_uri=hang.url)
        other = provider_cfg(provider, account="acct-other")
        hung["oauth"]["expires_at"] = other["oauth"]["expires_at"] = 0
        manager = CredentialManager(coordinator=store, sleep=lambda s: None)
        outcome: dict[str, Any] = {}

        def refresh_hung() -> None:
            try:
                get_me(manager, hung)
            except Exception as exc:  # it fails once the endpoint is closed
                outcome["hung"] = exc

        first = threading.Thread(target=refresh_hung, daemon=True)
        first.start()
        try:
            assert hang.accepted.wait(10), "the hung refresh reached its token endpoint"
            newer = {**hung, "oauth": {**hung["oauth"], "obtained_at": 4_000_000_000.0}}
            entered = threading.Event()

            def offer_newer() -> None:  # a newer credential for the hung account: it waits for that account only
                entered.set()
                manager.newest_cfg(newer)

            threading.Thread(target=offer_newer, daemon=True).start()
            assert entered.wait(10)
            done = threading.Thread(target=lambda: outcome.setdefault("other", get_me(manager, other)), daemon=True)
            done.start()
            done.join(10)
            assert not done.is_alive(), "the other account was blocked by the hung refresh"
            assert outcome["other"].status_code == 200
        finally:
            hang.close()
            first.join(30)
        stats = provider.stats()
    assert stats["refresh_calls"] == 1 and not first.is_alive()


def test_always_mode_still_refreshes_before_the_first_request_of_a_credential_oarlock_stamped() -> None:
    clock = ManualClock()
    with DevProvider(ttl=TTL, clock=clock) as provider:
        cfg = provider_cfg(provider, refresh="always")  # a raw token set: oarlock stamps obtained_at = now
        manager = CredentialManager(clock=clock)
        assert get_me(manager, cfg).status_code == 200
        stats = provider.stats()
    assert stats["refresh_calls"] == 1
