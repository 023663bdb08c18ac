"""An account's state beside its credential: the transition rule, and both stores applying it atomically."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from oarlock.keys.accounts import (
    ACTIVE,
    NEEDS_REAUTHORIZATION,
    REFRESH_FAILING,
    AccountState,
    next_state,
    refresh_settings,
)
from oarlock.keys.base import apply_update_keys
from oarlock.keys.postgres import PostgresKeyStore
from oarlock.keys.sqlite import SqliteKeyStore
from oarlock.keys.store import KeyStore

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    if request.param == "sqlite":
        sqlite = SqliteKeyStore(tmp_path / "keys.sqlite")
        yield sqlite
        sqlite.close()
        return
    pg = PostgresKeyStore(POSTGRES, table=f"oarlock_test_{uuid.uuid4().hex[:10]}")
    yield pg
    pg.drop()
    pg.close()


def test_a_first_failure_enters_its_state_and_a_repeat_does_not() -> None:
    first = next_state(None, "a", NEEDS_REAUTHORIZATION, version=5, reason="invalid_grant", now=100.0)
    assert first is not None and first.entered and first.current.since == 100.0
    again = next_state(first.current, "a", NEEDS_REAUTHORIZATION, version=5, reason="invalid_grant", now=200.0)
    assert again is not None and not again.entered and again.current.since == 100.0


def test_transient_failures_are_counted_with_the_last_reason() -> None:
    state = None
    for n, reason in enumerate(["timeout", "503", "reset"], start=1):
        change = next_state(state, "a", REFRESH_FAILING, version=1, reason=reason, now=float(n))
        assert change is not None
        state = change.current
        assert state.failures == n and state.reason == reason
    assert state is not None and state.since == 1.0


def test_a_report_about_an_older_version_is_ignored() -> None:
    dead = AccountState("a", NEEDS_REAUTHORIZATION, version=9, reason="invalid_grant", since=1.0)
    assert next_state(dead, "a", REFRESH_FAILING, version=8, reason="late", now=5.0) is None


def test_a_newer_credential_is_active_and_its_own_failure_enters_again() -> None:
    dead = AccountState("a", NEEDS_REAUTHORIZATION, version=9, reason="invalid_grant", since=1.0)
    assert dead.effective(stored_version=10) == ACTIVE
    assert dead.effective(stored_version=9) == NEEDS_REAUTHORIZATION
    change = next_state(dead, "a", NEEDS_REAUTHORIZATION, version=10, reason="invalid_grant", now=7.0)
    assert change is not None and change.entered and change.current.since == 7.0


def test_a_success_returns_to_active_and_records_the_refresh() -> None:
    failing = AccountState("a", REFRESH_FAILING, version=3, failures=4, reason="503", since=1.0)
    change = next_state(failing, "a", ACTIVE, version=4, reason=None, now=9.0, refreshed=True)
    assert change is not None
    assert (change.current.state, change.current.failures, change.current.reason) == (ACTIVE, 0, None)
    assert change.current.last_refresh == 9.0


def test_reasons_are_redacted_and_bounded() -> None:
    change = next_state(None, "a", REFRESH_FAILING, version=1, reason="Bearer abc.def.ghi " + "x" * 1000, now=1.0)
    assert change is not None and change.current.reason is not None
    assert "abc.def.ghi" not in change.current.reason and len(change.current.reason) <= 300


def test_refresh_settings_never_keep_a_client_secret_or_unknown_keys() -> None:
    kept = refresh_settings(
        {
            "token_uri": "https://p/token",
            "client_id": "cid",
            "client_secret": "s3cret",
            "scope": ["a", "b"],
            "provider": "microsoft",
            "password": "x",
        }
    )
    assert kept == {"token_uri": "https://p/token", "client_id": "cid", "scope": "a b", "provider": "microsoft"}
    assert refresh_settings({"client_secret": "only"}) is None
    assert refresh_settings("garbage") is None


def test_both_stores_record_states_and_report_one_entry(store: KeyStore) -> None:
    assert store.state("a") is None
    first = store.record_state("a", NEEDS_REAUTHORIZATION, version=2, reason="invalid_grant", now=10.0)
    second = store.record_state("a", NEEDS_REAUTHORIZATION, version=2, reason="invalid_grant", now=20.0)
    assert first is not None and first.entered
    assert second is not None and not second.entered
    stored = store.state("a")
    assert stored is not None and stored.state == NEEDS_REAUTHORIZATION and stored.since == 10.0
    assert store.record_state("a", ACTIVE, version=1, now=30.0) is None  # older: ignored
    assert [s.account for s in store.states()] == ["a"]


def test_concurrent_reports_of_one_failure_enter_the_state_exactly_once(store: KeyStore) -> None:
    entered: list[bool] = []
    lock = threading.Lock()

    def report() -> None:
        change = store.record_state("a", NEEDS_REAUTHORIZATION, version=7, reason="invalid_grant")
        with lock:
            entered.append(bool(change and change.entered))

    threads = [threading.Thread(target=report) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert entered.count(True) == 1


def test_a_keep_alive_claim_is_taken_once_per_interval(store: KeyStore) -> None:
    assert store.claim("a", 60, now=1000.0)
    assert not store.claim("a", 60, now=1030.0)
    assert store.claim("a", 60, now=1061.0)


def test_refresh_settings_travel_with_an_update_and_stay_when_a_later_one_has_none(store: KeyStore) -> None:
    oauth2 = {"token_uri": "http://127.0.0.1:1/token", "client_id": "c1", "client_secret": "never-stored"}
    apply_update_keys(store, {"account": "a", "version": 1, "oauth": {"access_token": "t1"}, "oauth2": oauth2})
    apply_update_keys(store, {"account": "a", "version": 2, "oauth": {"access_token": "t2"}})
    stored = store.get("a")
    assert stored is not None and stored.version == 2
    assert stored.settings == {"token_uri": "http://127.0.0.1:1/token", "client_id": "c1"}


def test_delete_removes_the_state_too(store: KeyStore) -> None:
    store.save("a", {"access_token": "t"}, 1)
    store.record_state("a", REFRESH_FAILING, version=1, reason="503")
    assert store.delete("a")
    assert store.state("a") is None


def test_a_store_written_before_settings_existed_is_migrated_in_place(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE credentials (account TEXT PRIMARY KEY, version INTEGER NOT NULL, oauth TEXT NOT NULL, "
        "response TEXT, updated_at REAL NOT NULL)"
    )
    conn.execute("INSERT INTO credentials VALUES ('a', 1, '{\"access_token\": \"t\"}', NULL, 1.0)")
    conn.commit()
    conn.close()
    store = SqliteKeyStore(path)
    stored = store.get("a")
    assert stored is not None and stored.oauth == {"access_token": "t"} and stored.settings is None
    assert store.save("a", {"access_token": "t2"}, 2, None, {"client_id": "c"})
    assert store.get("a").settings == {"client_id": "c"}  # type: ignore[union-attr]
    assert b"never" not in path.read_bytes()
