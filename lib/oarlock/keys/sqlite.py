"""SQLite keys store: the embedded default (``.oarlock/keys.sqlite``).

It implements the contract of :mod:`oarlock.keys.base`; :func:`oarlock.keys.store.open_store` opens it by URL.
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
from oarlock.keys.base import StoredCredential

SCHEMA = """
CREATE TABLE IF NOT EXISTS credentials (
    account    TEXT PRIMARY KEY,
    version    INTEGER NOT NULL,
    oauth      TEXT NOT NULL,
    response   TEXT,
    updated_at REAL NOT NULL
)
"""

# one conditional UPSERT: the compare and the write are a single statement, so two writers in two
# processes can never leave the older version behind
UPSERT = """
INSERT INTO credentials (account, version, oauth, response, updated_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT(account) DO UPDATE SET
    version = excluded.version, oauth = excluded.oauth, response = excluded.response,
    updated_at = excluded.updated_at
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


class SqliteKeyStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._lock_files: dict[str, int] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._transaction() as conn:
                conn.execute(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise KeyStoreError(f"keys store {self.path} cannot be opened: {exc}") from None

    def __repr__(self) -> str:
        return f"SqliteKeyStore({str(self.path)!r})"

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=30000")
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

    def save(self, account: str, oauth: dict[str, Any], version: int, response: dict[str, Any] | None = None) -> bool:
        try:
            with self._transaction() as conn:
                cursor = conn.execute(
                    UPSERT,
                    (account, int(version), json.dumps(oauth), json.dumps(response) if response else None, time.time()),
                )
                return cursor.rowcount > 0
        except sqlite3.Error as exc:
            raise KeyStoreError(f"keys store {self.path}: cannot save account {account}: {exc}") from None

    def get(self, account: str) -> StoredCredential | None:
        rows = self._select("WHERE account = ?", (account,))
        return rows[0] if rows else None

    def list(self) -> builtins.list[StoredCredential]:
        return self._select("ORDER BY account", ())

    def _select(self, clause: str, args: tuple[Any, ...]) -> builtins.list[StoredCredential]:
        try:
            rows = (
                self._connection()
                .execute(f"SELECT account, version, oauth, response, updated_at FROM credentials {clause}", args)
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise KeyStoreError(f"keys store {self.path} cannot be read: {exc}") from None
        return [
            StoredCredential(
                account=r[0],
                version=int(r[1]),
                oauth=json.loads(r[2]),
                response=json.loads(r[3]) if r[3] else None,
                updated_at=float(r[4]),
            )
            for r in rows
        ]

    @contextlib.contextmanager
    def lock(self, account: str, timeout: float = 30.0) -> Iterator[None]:
        """An flock on a per-account lock file beside the database: excludes other processes and threads."""
        digest = hashlib.sha256(account.encode()).hexdigest()[:16]
        lock_dir = self.path.parent / (self.path.name + ".locks")
        lock_dir.mkdir(exist_ok=True)
        fd = os.open(lock_dir / digest, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        try:
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
