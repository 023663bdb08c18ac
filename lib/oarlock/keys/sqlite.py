"""SQLite keys store: the embedded default (``.oarlock/keys.sqlite``).

It implements the contract of :mod:`oarlock.keys.base`; :func:`oarlock.keys.store.open_store` opens it by URL.

At rest: the folder is made 0700 when the store creates it (an existing ``.oarlock`` folder is
tightened to 0700, any other folder open to other users is warned about once); the database
file is created 0600 before SQLite opens it, so SQLite makes its ``-wal``/``-shm``/``-journal``
files 0600 too (it copies the database file's mode), and files left looser by an earlier run are
tightened; the per-account lock files are 0600 in a 0700 ``NAME.locks`` folder. With a key the
token fields are sealed (:mod:`oarlock.keys.sealing`) before any SQL runs, so neither the
database nor its WAL ever receives them in clear; ``secure_delete`` is on, so a row that was
overwritten (a clear row re-sealed) leaves no clear bytes behind in the database pages.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from oarlock.errors import KeyStoreError
from oarlock.keys.accounts import (
    ACTIVE,
    STATE_COLUMNS,
    AccountState,
    StateChange,
    next_state,
    state_from_row,
    state_row,
)
from oarlock.keys.base import StoredCredential
from oarlock.keys.private import private_dir, private_file, tighten_fd, tighten_if_present
from oarlock.keys.sealing import Sealer

SCHEMA = """
CREATE TABLE IF NOT EXISTS credentials (
    account    TEXT PRIMARY KEY,
    version    INTEGER NOT NULL,
    oauth      TEXT NOT NULL,
    response   TEXT,
    updated_at REAL NOT NULL,
    settings   TEXT
)
"""

STATES_SCHEMA = """
CREATE TABLE IF NOT EXISTS account_states (
    account      TEXT PRIMARY KEY,
    state        TEXT NOT NULL,
    version      INTEGER NOT NULL,
    failures     INTEGER NOT NULL,
    reason       TEXT,
    since        REAL,
    last_refresh REAL,
    last_attempt REAL
)
"""

# one conditional UPSERT: the compare and the write are a single statement, so two writers in two
# processes can never leave the older version behind
UPSERT = """
INSERT INTO credentials (account, version, oauth, response, updated_at, settings) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT(account) DO UPDATE SET
    version = excluded.version, oauth = excluded.oauth, response = excluded.response,
    updated_at = excluded.updated_at, settings = COALESCE(excluded.settings, credentials.settings)
WHERE excluded.version > credentials.version
"""


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL (persistent per file); the switch does not wait on the busy handler, so retry it."""
    for attempt in range(200):
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 199:
                raise
            time.sleep(0.025)


#: files SQLite may create beside the database
SIDE_FILES = ("-wal", "-shm", "-journal")


class SqliteKeyStore:
    """``key``: the 32-byte sealing key, or None to store tokens in clear (``open_store`` reads OARLOCK_KEYS_KEY)."""

    def __init__(self, path: str | Path, *, key: bytes | None = None) -> None:
        self.path = Path(path)
        self._sealer = Sealer(key, str(self.path))
        self._local = threading.local()
        self._lock_dir_ready = False
        try:
            private_dir(self.path.parent)
            private_file(self.path)
            for suffix in SIDE_FILES:
                tighten_if_present(self.path.with_name(self.path.name + suffix))
            with self._transaction() as conn:
                conn.execute(SCHEMA)
                conn.execute(STATES_SCHEMA)
                columns = {row[1] for row in conn.execute("PRAGMA table_info(credentials)")}
                if "settings" not in columns:  # a store written before refresh settings were kept
                    conn.execute("ALTER TABLE credentials ADD COLUMN settings TEXT")
        except (OSError, sqlite3.Error) as exc:
            raise KeyStoreError(f"keys store {self.path} cannot be opened: {exc}") from None

    def __repr__(self) -> str:
        return f"SqliteKeyStore({str(self.path)!r})"

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA secure_delete=ON")
            _use_wal(conn)
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def save(
        self,
        account: str,
        oauth: dict[str, Any],
        version: int,
        response: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> bool:
        oauth_text, response_text = self._sealer.texts(account, oauth, response)
        settings_text = json.dumps(settings) if settings else None
        try:
            with self._transaction() as conn:
                cursor = conn.execute(
                    UPSERT, (account, int(version), oauth_text, response_text, time.time(), settings_text)
                )
                return cursor.rowcount > 0
        except sqlite3.Error as exc:
            raise KeyStoreError(f"keys store {self.path}: cannot save account {account}: {exc}") from None

    def get(self, account: str) -> StoredCredential | None:
        rows = self._select("WHERE account = ?", (account,))
        return rows[0] if rows else None

    def list(self) -> builtins.list[StoredCredential]:
        return self._select("ORDER BY account", ())

    def delete(self, account: str) -> bool:
        """Remove the account's credential and state (an operator's ``oarlock keys delete``); True if there was one."""
        try:
            with self._transaction() as conn:
                conn.execute("DELETE FROM account_states WHERE account = ?", (account,))
                return conn.execute("DELETE FROM credentials WHERE account = ?", (account,)).rowcount > 0
        except sqlite3.Error as exc:
            raise KeyStoreError(f"keys store {self.path}: cannot delete account {account}: {exc}") from None

    def _select(self, clause: str, args: tuple[Any, ...]) -> builtins.list[StoredCredential]:
        try:
            rows = (
                self._connection()
                .execute(
                    f"SELECT account, version, oauth, response, updated_at, settings FROM credentials {clause}", args
                )
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise KeyStoreError(f"keys store {self.path} cannot be read: {exc}") from None
        return [
            StoredCredential(
                account=r[0],
                version=int(r[1]),
                oauth=self._sealer.open(r[0], "oauth", json.loads(r[2])),
                response=self._sealer.open(r[0], "response", json.loads(r[3])) if r[3] else None,
                updated_at=float(r[4]),
                settings=json.loads(r[5]) if r[5] else None,
            )
            for r in rows
        ]

    # -- account states ----------------------------------------------------------------------------
    def state(self, account: str) -> AccountState | None:
        rows = self._states("WHERE account = ?", (account,))
        return rows[0] if rows else None

    def states(self) -> builtins.list[AccountState]:
        return self._states("ORDER BY account", ())

    def _states(self, clause: str, args: tuple[Any, ...]) -> builtins.list[AccountState]:
        try:
            rows = self._connection().execute(f"SELECT {STATE_COLUMNS} FROM account_states {clause}", args).fetchall()
        except sqlite3.Error as exc:
            raise KeyStoreError(f"keys store {self.path} cannot be read: {exc}") from None
        return [state_from_row(r) for r in rows]

    def record_state(
        self,
        account: str,
        state: str,
        *,
        version: int,
        reason: str | None = None,
        refreshed: bool = False,
        now: float | None = None,
    ) -> StateChange | None:
        moment = time.time() if now is None else now
        try:
            with self._transaction() as conn:  # BEGIN IMMEDIATE: one writer at a time, across processes
                row = conn.execute(
                    f"SELECT {STATE_COLUMNS} FROM account_states WHERE account = ?", (account,)
                ).fetchone()
                change = next_state(
                    state_from_row(row) if row else None,
                    account,
                    state,
                    version=int(version),
                    reason=reason,
                    now=moment,
                    refreshed=refreshed,
                )
                if change is not None:
                    conn.execute(
                        f"INSERT OR REPLACE INTO account_states ({STATE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        state_row(change.current),
                    )
                return change
        except sqlite3.Error as exc:
            raise KeyStoreError(
                f"keys store {self.path}: cannot record the state of account {account}: {exc}"
            ) from None

    def claim(self, account: str, min_interval: float, *, now: float | None = None) -> bool:
        moment = time.time() if now is None else now
        try:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT OR IGNORE INTO account_states (account, state, version, failures, since) VALUES (?, ?, 0, 0, ?)",
                    (account, ACTIVE, moment),
                )
                cursor = conn.execute(
                    "UPDATE account_states SET last_attempt = ? WHERE account = ? "
                    "AND (last_attempt IS NULL OR last_attempt <= ?)",
                    (moment, account, moment - min_interval),
                )
                return cursor.rowcount > 0
        except sqlite3.Error as exc:
            raise KeyStoreError(f"keys store {self.path}: cannot claim account {account}: {exc}") from None

    def reseal(self) -> int:
        """Seal the token fields still stored in clear (rows written before the key was set).

        Versions and ``updated_at`` stay as they are; fields sealed already are left. Afterwards the
        WAL is checkpointed and truncated, so the clear bytes are gone from the -wal file too (and
        ``secure_delete`` zeroed them in the database pages). Returns the number of rows rewritten;
        a KeyStoreError without a key.
        """
        if not self._sealer.sealing:
            raise KeyStoreError(f"keys store {self.path}: reseal needs a key (OARLOCK_KEYS_KEY)")
        count = 0
        try:
            with self._transaction() as conn:
                rows = conn.execute("SELECT account, oauth, response FROM credentials").fetchall()
                for account, oauth_text, response_text in rows:
                    oauth = json.loads(oauth_text)
                    response = json.loads(response_text) if response_text else None
                    if not (self._sealer.needs_reseal(oauth) or self._sealer.needs_reseal(response)):
                        continue
                    texts = self._sealer.texts(account, oauth, response, keep_sealed=True)
                    conn.execute("UPDATE credentials SET oauth = ?, response = ? WHERE account = ?", (*texts, account))
                    count += 1
            self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            raise KeyStoreError(f"keys store {self.path}: cannot reseal: {exc}") from None
        return count

    @contextlib.contextmanager
    def lock(self, account: str, timeout: float = 30.0) -> Iterator[None]:
        """An flock on a per-account lock file beside the database: excludes other processes and threads."""
        digest = hashlib.sha256(account.encode()).hexdigest()[:16]
        lock_dir = self.path.parent / (self.path.name + ".locks")
        try:
            if not self._lock_dir_ready:
                private_dir(lock_dir, own=True)
                self._lock_dir_ready = True
            fd = os.open(lock_dir / digest, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KeyStoreError(
                f"keys store {self.path}: cannot open the lock file of account {account}: {exc}"
            ) from None
        deadline = time.monotonic() + timeout
        try:
            tighten_fd(fd, lock_dir / digest)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise KeyStoreError(
                            f"keys store {self.path}: lock for account {account} not acquired within {timeout:g} s"
                        ) from None
                    time.sleep(0.005)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
