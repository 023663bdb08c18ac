"""The keys store contract, for SQLite and PostgreSQL alike: newest wins, even across processes."""

from __future__ import annotations

import contextlib
import multiprocessing
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oarlock.errors import DecodeError, KeyStoreError
from oarlock.keys.postgres import PostgresKeyStore
from oarlock.keys.store import KeyStore, apply_update_keys, open_store
from tests.support import run_cli

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def _open(kind: str, where: str) -> KeyStore:
    if kind == "sqlite":
        return open_store(where)
    return PostgresKeyStore(POSTGRES, table=where)


@pytest.fixture(params=["sqlite", "postgres"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        yield "sqlite", str(tmp_path / "keys.sqlite")
        return
    table = f"oarlock_test_{uuid.uuid4().hex[:10]}"
    yield "postgres", table
    cleanup = PostgresKeyStore(POSTGRES, table=table)
    cleanup.drop()
    cleanup.close()


def test_save_get_and_list(store_spec: tuple[str, str]) -> None:
    store = _open(*store_spec)
    assert store.save("b", {"access_token": "x"}, 5, {"access_token": "x", "expires_in": 1})
    assert store.save("a", {"access_token": "y"}, 1)
    stored = store.get("b")
    assert stored is not None and stored.version == 5 and stored.response == {"access_token": "x", "expires_in": 1}
    assert [s.account for s in store.list()] == ["a", "b"]
    assert store.get("missing") is None
    store.close()


def test_an_older_or_equal_version_never_overwrites_a_newer_one(store_spec: tuple[str, str]) -> None:
    store = _open(*store_spec)
    assert store.save("a", {"access_token": "new"}, 10)
    assert not store.save("a", {"access_token": "old"}, 9)
    assert not store.save("a", {"access_token": "same"}, 10)
    stored = store.get("a")
    assert stored is not None and stored.oauth == {"access_token": "new"}
    store.close()


def _writer(kind: str, where: str, offset: int, count: int) -> None:
    store = _open(kind, where)
    for version in range(offset, offset + count * 2, 2):
        store.save("shared", {"v": version}, version)
    store.close()


def test_two_processes_writing_interleaved_versions_leave_the_newest(store_spec: tuple[str, str]) -> None:
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_writer, args=(*store_spec, offset, 150)) for offset in (1, 2)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    stored = _open(*store_spec).get("shared")
    assert stored is not None and stored.version == 300 and stored.oauth == {"v": 300}


def _locker(kind: str, where: str, log_path: str, refused: Any, done: Any, total: int) -> None:
    """Take the lock; while holding it, wait until another process was refused it (unless none is left)."""
    store = _open(kind, where)
    with contextlib.ExitStack() as held:
        while True:
            try:
                held.enter_context(store.lock("acct", timeout=0.05))
                break
            except KeyStoreError:
                with refused.get_lock():
                    refused.value += 1
        refused_before = refused.value
        with open(log_path, "a") as log:
            log.write("enter\n")
        deadline = time.monotonic() + 60
        while refused.value == refused_before and done.value < total - 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        with open(log_path, "a") as log:
            log.write("leave\n")
    with done.get_lock():
        done.value += 1
    store.close()


def test_the_lock_excludes_a_second_process(store_spec: tuple[str, str], tmp_path: Path) -> None:
    log_path = tmp_path / "lock.log"
    ctx = multiprocessing.get_context("spawn")
    refused, done = ctx.Value("i", 0), ctx.Value("i", 0)
    processes = [ctx.Process(target=_locker, args=(*store_spec, str(log_path), refused, done, 3)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert log_path.read_text().split() == ["enter", "leave"] * 3
    # the first two holders each left only after another process had been refused the lock
    assert refused.value >= 2


def test_a_lock_that_cannot_be_taken_in_time_is_a_keys_store_error(store_spec: tuple[str, str]) -> None:
    import threading

    store = _open(*store_spec)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.lock("busy"):
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(10)
    try:
        with (
            pytest.raises(KeyStoreError, match=r"lock for account busy not acquired within 0\.2 s"),
            store.lock("busy", timeout=0.2),
        ):
            pass
    finally:
        release.set()
        thread.join()
    store.close()


def test_update_keys_payloads_are_applied_and_persist_false_is_not_stored(store_spec: tuple[str, str]) -> None:
    store = _open(*store_spec)
    payload: dict[str, Any] = {"account": "a", "version": 3, "oauth": {"access_token": "t"}, "response": {"x": 1}}
    assert apply_update_keys(store, payload)
    assert not apply_update_keys(store, {**payload, "version": 4, "persist": False})
    # a malformed payload is the message's fault (rejected), not the store's (which would be retried)
    with pytest.raises(DecodeError, match="has no 'version'"):
        apply_update_keys(store, {"account": "a", "oauth": {}})
    stored = store.get("a")
    assert stored is not None and stored.version == 3
    store.close()


def test_the_store_module_still_exports_the_contract_that_moved_to_base() -> None:
    from oarlock.keys import base, store

    assert store.StoredCredential is base.StoredCredential
    assert store.KeyStore is base.KeyStore
    assert store.apply_update_keys is base.apply_update_keys
    assert store.safe_url is base.safe_url
    assert callable(store.open_store)
    assert set(store.__all__) >= {"StoredCredential", "KeyStore", "apply_update_keys", "open_store", "safe_url"}


def test_errors_name_the_store_without_its_password() -> None:
    with pytest.raises(KeyStoreError) as caught:
        open_store("postgresql://postgres:hunter2-secret@127.0.0.1:1/test")
    assert "hunter2-secret" not in str(caught.value) and "127.0.0.1:1" in str(caught.value)


def test_an_unwritable_sqlite_path_is_a_keys_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(KeyStoreError, match="cannot be opened"):
        open_store(str(blocker / "keys.sqlite"))


def test_keys_list_and_show_mask_secrets_unless_revealed(tmp_path: Path) -> None:
    keys = str(tmp_path / "keys.sqlite")
    open_store(keys).save(
        "acct-x",
        {
            "access_token": "AT-visible-1",
            "refresh_token": "RT-visible-2",
            "expires_at": 1_900_000_000,
            "instance_url": "https://i",
        },
        7,
    )
    listed = run_cli(["keys", "list", "--keys", keys])
    assert listed.returncode == 0 and "acct-x" in listed.stdout and "AT-visible-1" not in listed.stdout
    shown = run_cli(["keys", "show", "acct-x", "--keys", keys])
    assert "RT-visible-2" not in shown.stdout and '"instance_url": "https://i"' in shown.stdout
    revealed = run_cli(["keys", "show", "acct-x", "--keys", keys, "--reveal"])
    assert "RT-visible-2" in revealed.stdout
    missing = run_cli(["keys", "show", "nobody", "--keys", keys])
    assert missing.returncode == 1 and "no credential stored for account nobody" in missing.stderr


@pytest.mark.parametrize(
    "version", [float("inf"), float("nan"), 2**64, "12abc", True, None, [], 2.5, -1, 10**18, "1e30"]
)
def test_a_version_that_is_not_a_finite_integer_from_0_to_a_day_ahead_is_a_decode_error(version: Any) -> None:
    from oarlock.keys.base import valid_version

    with pytest.raises(DecodeError, match="version"):
        valid_version(version, now_ms=1_795_000_000_000)


@pytest.mark.parametrize(("version", "expected"), [(5, 5), ("7", 7), (7.0, 7), (1_795_000_000_000 + 3600_000, None)])
def test_a_version_that_is_an_integer_up_to_a_day_ahead_is_accepted(version: Any, expected: int | None) -> None:
    from oarlock.keys.base import valid_version

    assert valid_version(version, now_ms=1_795_000_000_000) == (version if expected is None else expected)


def test_delete_removes_an_account_and_says_whether_there_was_one(store_spec: tuple[str, str]) -> None:
    store = _open(*store_spec)
    store.save("gone", {"access_token": "t"}, 1)
    assert store.delete("gone") is True and store.get("gone") is None
    assert store.delete("gone") is False
    store.close()
