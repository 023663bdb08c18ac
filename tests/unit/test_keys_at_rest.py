"""Secrets at rest: token fields sealed with OARLOCK_KEYS_KEY (SQLite and PostgreSQL), private file modes."""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from oarlock.errors import ConfigurationError, KeyStoreError
from oarlock.keys.postgres import PostgresKeyStore
from oarlock.keys.private import write_private
from oarlock.keys.sealing import PREFIX
from oarlock.keys.sqlite import SqliteKeyStore
from oarlock.keys.store import open_store

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
OAUTH = {
    "access_token": "AT-at-rest-0001",
    "refresh_token": "RT-at-rest-0002",
    "id_token": "ID-at-rest-0003",
    "expires_at": 1_900_000_000,
    "instance_url": "https://instance.example",
}
RESPONSE = {"access_token": "AT-at-rest-0001", "id_token": "ID-at-rest-0003", "expires_in": 3600, "scope": "api"}
TOKENS = ("AT-at-rest-0001", "RT-at-rest-0002", "ID-at-rest-0003")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Backend:
    """One store location, opened with any key, plus raw access to what it holds."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind, self.where = kind, where

    def open(self, key: bytes | None) -> SqliteKeyStore | PostgresKeyStore:
        if self.kind == "sqlite":
            return SqliteKeyStore(self.where, key=key)
        return PostgresKeyStore(POSTGRES, table=self.where, key=key)

    def raw(self, account: str) -> tuple[str, str | None]:
        """The oauth and response columns as the database holds their text."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.where) as conn:
                row = conn.execute("SELECT oauth, response FROM credentials WHERE account = ?", (account,)).fetchone()
        else:
            with psycopg.connect(POSTGRES) as conn:
                row = conn.execute(
                    f"SELECT oauth::text, response::text FROM {self.where} WHERE account = %s", (account,)
                ).fetchone()
        assert row is not None
        return row[0], row[1]

    def set_raw_oauth(self, account: str, oauth_text: str) -> None:
        if self.kind == "sqlite":
            with sqlite3.connect(self.where) as conn:
                conn.execute("UPDATE credentials SET oauth = ? WHERE account = ?", (oauth_text, account))
        else:
            with psycopg.connect(POSTGRES, autocommit=True) as conn:
                conn.execute(f"UPDATE {self.where} SET oauth = %s::jsonb WHERE account = %s", (oauth_text, account))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", str(tmp_path / "keys.sqlite"))
        return
    table = f"oarlock_test_{uuid.uuid4().hex[:10]}"
    yield Backend("postgres", table)
    cleanup = PostgresKeyStore(POSTGRES, table=table)
    cleanup.drop()
    cleanup.close()


def test_tokens_are_stored_sealed_and_get_and_list_return_them_in_clear(backend: Backend) -> None:
    store = backend.open(KEY)
    assert store.save("acct", OAUTH, 1, RESPONSE)
    oauth_text, response_text = backend.raw("acct")
    assert response_text is not None
    for token in TOKENS:
        assert token not in oauth_text and token not in response_text
    raw_oauth, raw_response = json.loads(oauth_text), json.loads(response_text)
    assert all(raw_oauth[name].startswith(PREFIX) for name in ("access_token", "refresh_token", "id_token"))
    assert raw_response["access_token"].startswith(PREFIX) and raw_response["id_token"].startswith(PREFIX)
    # what is not a token stays readable without the key
    assert raw_oauth["expires_at"] == 1_900_000_000 and raw_oauth["instance_url"] == "https://instance.example"
    assert raw_response["expires_in"] == 3600
    # a fresh nonce per value: the same token sealed twice gives two different envelopes
    assert raw_oauth["access_token"] != raw_response["access_token"]
    stored = store.get("acct")
    assert stored is not None and stored.oauth == OAUTH and stored.response == RESPONSE
    assert [s.oauth for s in store.list()] == [OAUTH]
    store.close()


def test_an_older_version_never_overwrites_a_newer_sealed_one(backend: Backend) -> None:
    store = backend.open(KEY)
    assert store.save("acct", {**OAUTH, "access_token": "AT-new"}, 10)
    assert not store.save("acct", {**OAUTH, "access_token": "AT-old"}, 9)
    stored = store.get("acct")
    assert stored is not None and stored.version == 10 and stored.oauth["access_token"] == "AT-new"
    store.close()


def test_a_sealed_value_moved_to_another_account_or_field_does_not_open(backend: Backend) -> None:
    store = backend.open(KEY)
    store.save("alice", OAUTH, 1)
    store.save("bob", {**OAUTH, "access_token": "AT-bob", "refresh_token": "RT-bob"}, 1)
    alice_text, _ = backend.raw("alice")
    backend.set_raw_oauth("bob", alice_text)  # alice's sealed tokens copied into bob's row
    with pytest.raises(KeyStoreError, match="does not open the encrypted credentials of account bob"):
        store.get("bob")
    swapped = json.loads(alice_text)
    swapped["access_token"], swapped["refresh_token"] = swapped["refresh_token"], swapped["access_token"]
    backend.set_raw_oauth("alice", json.dumps(swapped))
    with pytest.raises(KeyStoreError, match="does not open the encrypted credentials of account alice"):
        store.get("alice")
    store.close()


def test_reading_sealed_rows_without_a_key_says_the_store_is_encrypted_and_the_key_is_not_set(
    backend: Backend,
) -> None:
    backend.open(KEY).save("acct", OAUTH, 1, RESPONSE)
    oauth_text, _ = backend.raw("acct")
    store = backend.open(None)
    for read in (lambda: store.get("acct"), store.list):
        with pytest.raises(KeyStoreError) as caught:
            read()
        message = str(caught.value)
        assert "holds encrypted credentials (account acct) and OARLOCK_KEYS_KEY is not set" in message
        assert PREFIX not in message and json.loads(oauth_text)["refresh_token"][len(PREFIX) :] not in message
        assert caught.value.__cause__ is None and caught.value.__context__ is None
    store.close()


def test_reading_sealed_rows_with_a_wrong_key_says_the_key_does_not_open_them(backend: Backend) -> None:
    backend.open(KEY).save("acct", OAUTH, 1)
    store = backend.open(OTHER_KEY)
    with pytest.raises(KeyStoreError) as caught:
        store.get("acct")
    message = str(caught.value)
    assert "OARLOCK_KEYS_KEY does not open the encrypted credentials of account acct" in message
    assert PREFIX not in message and not any(token in message for token in TOKENS)
    assert caught.value.__suppress_context__  # the GCM tag failure is translated, not chained
    store.close()


def test_without_a_key_tokens_are_stored_in_clear_and_one_warning_per_store_says_so(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="oarlock.keys"):
        store = backend.open(None)
        store.save("a", OAUTH, 1)
        store.save("a", OAUTH, 2)
        again = backend.open(None)  # a second handle on the same store: still one warning
        again.save("b", OAUTH, 1)
    oauth_text, _ = backend.raw("a")
    assert json.loads(oauth_text) == OAUTH
    warnings = [r.getMessage() for r in caplog.records if "stores tokens in clear" in r.getMessage()]
    assert len(warnings) == 1 and "set OARLOCK_KEYS_KEY" in warnings[0]
    assert not any(token in warnings[0] for token in TOKENS)
    stored = store.get("b")
    assert stored is not None and stored.oauth == OAUTH
    store.close()
    again.close()


def test_rows_written_in_clear_stay_readable_with_a_key_and_are_sealed_at_their_next_write(backend: Backend) -> None:
    backend.open(None).save("old", OAUTH, 1, RESPONSE)
    store = backend.open(KEY)
    stored = store.get("old")
    assert stored is not None and stored.oauth == OAUTH and stored.response == RESPONSE
    store.save("new", OAUTH, 1)
    assert sorted(s.account for s in store.list()) == ["new", "old"]  # a mixed store lists fine
    assert store.save("old", {**OAUTH, "refresh_token": "RT-at-rest-rotated"}, 2, RESPONSE)
    oauth_text, response_text = backend.raw("old")
    assert not any(token in oauth_text + str(response_text) for token in (*TOKENS, "RT-at-rest-rotated"))
    stored = store.get("old")
    assert stored is not None and stored.oauth["refresh_token"] == "RT-at-rest-rotated"
    store.close()


def test_reseal_seals_the_clear_rows_in_place_and_keeps_their_versions_and_update_times(backend: Backend) -> None:
    clear = backend.open(None)
    clear.save("a", OAUTH, 7, RESPONSE)
    clear.save("b", OAUTH, 3)
    before = {s.account: (s.version, s.updated_at) for s in clear.list()}
    with pytest.raises(KeyStoreError, match="reseal needs a key"):
        clear.reseal()
    clear.close()
    store = backend.open(KEY)
    store.save("c", OAUTH, 1)  # sealed already: left as it is
    sealed_c = backend.raw("c")
    assert store.reseal() == 2
    assert store.reseal() == 0
    assert backend.raw("c") == sealed_c
    for account in ("a", "b"):
        oauth_text, response_text = backend.raw(account)
        assert not any(token in oauth_text + str(response_text) for token in TOKENS)
    listed = store.list()
    assert {s.account: (s.version, s.updated_at) for s in listed if s.account != "c"} == before
    assert all(s.oauth == OAUTH for s in listed) and listed[0].response == RESPONSE
    store.close()


def test_open_store_reads_the_key_from_the_environment_in_either_base64_alphabet_with_or_without_padding(
    tmp_path: Path,
) -> None:
    key = b"\xfb\xef\xff" * 10 + b"\x00\x01"  # its base64 has '+' and '/' (standard) or '-' and '_' (URL-safe)
    standard = base64.b64encode(key).decode()
    url_safe = base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert "+" in standard and "/" in standard and standard.endswith("=")
    path = str(tmp_path / "keys.sqlite")
    writer = open_store(path, environ={"OARLOCK_KEYS_KEY": standard})
    writer.save("acct", OAUTH, 1)
    writer.close()
    assert "RT-at-rest-0002" not in Backend("sqlite", path).raw("acct")[0]
    reader = open_store(path, environ={"OARLOCK_KEYS_KEY": f"  {url_safe}\n"})
    stored = reader.get("acct")
    assert stored is not None and stored.oauth == OAUTH
    reader.close()
    with pytest.raises(KeyStoreError, match="OARLOCK_KEYS_KEY is not set"):
        open_store(path, environ={"OARLOCK_KEYS_KEY": ""}).get("acct")


@pytest.mark.parametrize(
    "value",
    [
        "not base64 at all!",
        base64.b64encode(b"k" * 16).decode(),
        base64.b64encode(b"k" * 33).decode(),
        "QUJD=x",
    ],
)
def test_a_key_that_does_not_decode_to_32_bytes_is_a_configuration_error_that_never_echoes_it(
    tmp_path: Path, value: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_store(str(tmp_path / "keys.sqlite"), environ={"OARLOCK_KEYS_KEY": value})
    message = str(caught.value)
    assert message.startswith("OARLOCK_KEYS_KEY must be 32 random bytes in base64") and value not in message
    with pytest.raises(ConfigurationError, match="OARLOCK_KEYS_KEY"):
        SqliteKeyStore(tmp_path / "direct.sqlite", key=b"short")


def test_a_new_sqlite_store_makes_its_folders_0700_and_every_file_it_creates_0600_whatever_the_umask(
    tmp_path: Path,
) -> None:
    previous = os.umask(0)
    try:
        store = SqliteKeyStore(tmp_path / "made" / "here" / "keys.sqlite", key=KEY)
        store.save("acct", OAUTH, 1)
        with store.lock("acct"):
            pass
        files = [p for p in (tmp_path / "made").rglob("*") if p.is_file()]
        folders = [tmp_path / "made", *(p for p in (tmp_path / "made").rglob("*") if p.is_dir())]
        names = {p.name for p in files}
        assert {"keys.sqlite", "keys.sqlite-wal", "keys.sqlite-shm"} <= names and len(files) == 4  # + 1 lock file
        assert {str(p.relative_to(tmp_path)): mode(p) for p in files} == {
            str(p.relative_to(tmp_path)): 0o600 for p in files
        }
        assert {p.name: mode(p) for p in folders} == {p.name: 0o700 for p in folders}
        store.close()
    finally:
        os.umask(previous)


def test_an_existing_oarlock_folder_and_store_files_left_open_by_an_earlier_run_are_made_private(
    tmp_path: Path,
) -> None:
    folder = tmp_path / ".oarlock" / "demo"
    folder.mkdir(parents=True, mode=0o755)
    os.chmod(tmp_path / ".oarlock", 0o755)
    os.chmod(folder, 0o755)
    path = folder / "keys.sqlite"
    earlier = sqlite3.connect(path)  # as the store used to make them: 0644, WAL files beside
    earlier.execute("PRAGMA journal_mode=WAL")
    earlier.execute("CREATE TABLE t (x)")
    side = [path, path.with_name("keys.sqlite-wal"), path.with_name("keys.sqlite-shm")]
    for file in side:
        os.chmod(file, 0o644)
    (folder / "keys.sqlite.locks").mkdir(mode=0o755)
    os.chmod(folder / "keys.sqlite.locks", 0o755)
    store = SqliteKeyStore(path, key=KEY)
    with store.lock("acct"):
        pass
    assert {f.name: mode(f) for f in side} == {f.name: 0o600 for f in side}
    assert (mode(tmp_path / ".oarlock"), mode(folder), mode(folder / "keys.sqlite.locks")) == (0o700, 0o700, 0o700)
    store.close()
    earlier.close()


def test_a_folder_open_to_others_that_is_not_the_stores_own_is_left_as_it_is_and_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "project"
    shared.mkdir()
    os.chmod(shared, 0o755)
    with caplog.at_level(logging.WARNING, logger="oarlock.keys"):
        SqliteKeyStore(shared / "keys.sqlite", key=KEY).close()
        SqliteKeyStore(shared / "keys.sqlite", key=KEY).close()
    assert mode(shared) == 0o755 and mode(shared / "keys.sqlite") == 0o600
    warnings = [r.getMessage() for r in caplog.records if "is open to other users" in r.getMessage()]
    assert warnings == [
        f"keys store folder {shared} is open to other users (mode 0755); the store's files are 0600, "
        "but better keep them in a 0700 folder"
    ]


def _all_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_with_a_key_neither_the_sqlite_file_nor_its_wal_or_journal_ever_holds_a_token_in_clear(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store" / "keys.sqlite"
    store = SqliteKeyStore(path, key=KEY)
    for version in range(1, 6):
        store.save("acct", OAUTH, version, RESPONSE)
    while_open = _all_bytes(path.parent)  # the WAL still holds every frame written
    assert len(while_open["keys.sqlite-wal"]) > 0
    store.close()
    after = _all_bytes(path.parent)
    # every file of the folder: the database, its -wal and -shm (and a -journal, were there one)
    for where, content in [*while_open.items(), *after.items()]:
        for token in TOKENS:
            assert token.encode() not in content, f"{token} in clear in {where}"


def test_after_reseal_no_clear_token_is_left_in_the_sqlite_file_or_its_wal(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite"
    clear = SqliteKeyStore(path)
    for account in ("a", "b", "c"):
        clear.save(account, OAUTH, 1, RESPONSE)
    clear.close()
    assert any(b"RT-at-rest-0002" in content for content in _all_bytes(tmp_path).values())
    store = SqliteKeyStore(path, key=KEY)
    assert store.reseal() == 3
    for where, content in _all_bytes(tmp_path).items():
        for token in TOKENS:
            assert token.encode() not in content, f"{token} left in clear in {where}"
    store.close()


def test_write_private_writes_a_0600_file_whatever_the_umask_even_over_an_existing_0644_one(tmp_path: Path) -> None:
    target = tmp_path / "cfg.json"
    target.write_text("old")
    os.chmod(target, 0o644)
    previous = os.umask(0)
    try:
        write_private(target, '{"oauth": {"refresh_token": "RT"}}\n')
        write_private(tmp_path / "new.json", "x")
    finally:
        os.umask(previous)
    assert target.read_text() == '{"oauth": {"refresh_token": "RT"}}\n'
    assert (mode(target), mode(tmp_path / "new.json")) == (0o600, 0o600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "new.json"]  # no temporary left


def test_a_clear_row_overwritten_once_a_key_is_set_leaves_no_clear_bytes_in_the_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite"
    clear = SqliteKeyStore(path)
    for account in ("a", "b", "d"):
        clear.save(account, {**OAUTH, "padding": "p" * 300}, 1)
    clear.save("c", {"access_token": "AT-c-old-clear", "refresh_token": "RT-c-old-clear", "padding": "p" * 300}, 1)
    clear.close()
    assert b"RT-c-old-clear" in path.read_bytes()
    store = SqliteKeyStore(path, key=KEY)
    store.save("c", {"access_token": "AT-c-new", "refresh_token": "RT-c-new"}, 2)
    store.close()  # the last connection checkpoints the WAL into the file
    content = path.read_bytes()
    assert b"AT-c-old-clear" not in content and b"RT-c-old-clear" not in content
    assert b"RT-c-new" not in content


def test_both_stores_offer_reseal_to_a_caller_holding_a_plain_key_store(backend: Backend) -> None:
    from oarlock.keys.base import ResealableStore

    store = backend.open(KEY)
    assert isinstance(store, ResealableStore)
    store.close()
