"""PostgreSQL keys store: one store for a fleet of workers (advisory locks per account).

It implements the contract of :mod:`oarlock.keys.base`; :func:`oarlock.keys.store.open_store` opens it by URL.

With a key the token fields are sealed (:mod:`oarlock.keys.sealing`) before they are sent, so
the server (its table, its WAL, its logs) only ever receives them sealed. Rows written in clear
before the key was set stay readable and are sealed at their next write or by :meth:`reseal`;
their old clear tuples stay in the table's files until PostgreSQL reuses the space (``VACUUM
FULL`` rewrites the table at once).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator
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
from oarlock.keys.base import StoredCredential, safe_url
from oarlock.keys.sealing import Sealer
from oarlock.redact import redact_text

DEFAULT_TABLE = "oarlock_credentials"


class PostgresKeyStore:
    """``key``: the 32-byte sealing key, or None to store tokens in clear (``open_store`` reads OARLOCK_KEYS_KEY)."""

    def __init__(self, url: str, *, table: str = DEFAULT_TABLE, key: bytes | None = None) -> None:
        try:
            import psycopg
            import psycopg.errors
        except ImportError:
            raise KeyStoreError("the PostgreSQL keys store needs psycopg: pip install 'oarlock[postgres]'") from None
        if not table.replace("_", "").isalnum():
            raise KeyStoreError(f"invalid table name {table!r}")
        self._psycopg = psycopg
        self.url = url
        self.table = table
        self._sealer = Sealer(key, f"{safe_url(url)} (table {table})")
        self._local = threading.local()
        self.states_table = f"{table}_states"
        creates = (
            f"CREATE TABLE IF NOT EXISTS {table} (account TEXT PRIMARY KEY, version BIGINT NOT NULL, "
            "oauth JSONB NOT NULL, response JSONB, updated_at DOUBLE PRECISION NOT NULL, settings JSONB)",
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS settings JSONB",
            f"CREATE TABLE IF NOT EXISTS {self.states_table} (account TEXT PRIMARY KEY, state TEXT NOT NULL, "
            "version BIGINT NOT NULL, failures INTEGER NOT NULL, reason TEXT, since DOUBLE PRECISION, "
            "last_refresh DOUBLE PRECISION, last_attempt DOUBLE PRECISION)",
        )
        try:
            for create in creates:
                self._create(create)
        except psycopg.Error as exc:
            raise KeyStoreError(f"keys store {safe_url(url)}: {type(exc).__name__}: {_reason(exc)}") from None

    def _create(self, sql: str) -> None:
        errors = self._psycopg.errors
        # another process created it at the same moment (IF NOT EXISTS is not race-free)
        with contextlib.suppress(errors.UniqueViolation, errors.DuplicateTable, errors.DuplicateColumn):
            self._connection().execute(sql)

    def __repr__(self) -> str:
        return f"PostgresKeyStore({safe_url(self.url)!r})"

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            except self._psycopg.Error as exc:
                raise KeyStoreError(
                    f"keys store {safe_url(self.url)} cannot be reached: {type(exc).__name__}: {_reason(exc)}"
                ) from None
            self._local.conn = conn
        return conn

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        try:
            return self._connection().execute(sql, args)
        except self._psycopg.Error as exc:
            raise KeyStoreError(f"keys store {safe_url(self.url)}: {type(exc).__name__}: {_reason(exc)}") from None

    def save(
        self,
        account: str,
        oauth: dict[str, Any],
        version: int,
        response: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> bool:
        cursor = self._execute(
            f"INSERT INTO {self.table} AS c (account, version, oauth, response, updated_at, settings) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (account) DO UPDATE SET version = excluded.version, "
            "oauth = excluded.oauth, response = excluded.response, updated_at = excluded.updated_at, "
            "settings = COALESCE(excluded.settings, c.settings) WHERE excluded.version > c.version",
            (
                account,
                int(version),
                *self._sealer.texts(account, oauth, response),
                time.time(),
                json.dumps(settings) if settings else None,
            ),
        )
        return bool(cursor.rowcount)

    def reseal(self) -> int:
        """Seal the token fields still stored in clear (rows written before the key was set).

        One transaction, rows locked (``FOR UPDATE``); versions and ``updated_at`` stay as they are,
        fields sealed already are left. Returns the number of rows rewritten; a KeyStoreError
        without a key.
        """
        if not self._sealer.sealing:
            raise KeyStoreError(f"keys store {safe_url(self.url)}: reseal needs a key (OARLOCK_KEYS_KEY)")
        count = 0
        conn = self._connection()
        try:
            with conn.transaction():
                rows = conn.execute(f"SELECT account, oauth, response FROM {self.table} FOR UPDATE").fetchall()
                for account, oauth, response in rows:
                    if not (self._sealer.needs_reseal(oauth) or self._sealer.needs_reseal(response)):
                        continue
                    conn.execute(
                        f"UPDATE {self.table} SET oauth = %s, response = %s WHERE account = %s",
                        (*self._sealer.texts(account, oauth, response, keep_sealed=True), account),
                    )
                    count += 1
        except self._psycopg.Error as exc:
            raise KeyStoreError(
                f"keys store {safe_url(self.url)}: cannot reseal: {type(exc).__name__}: {_reason(exc)}"
            ) from None
        return count

    def get(self, account: str) -> StoredCredential | None:
        rows = self._select("WHERE account = %s", (account,))
        return rows[0] if rows else None

    def list(self) -> builtins.list[StoredCredential]:
        return self._select("ORDER BY account", ())

    def delete(self, account: str) -> bool:
        """Remove the account's credential (an operator's ``oarlock keys delete``); True if there was one."""
        self._execute(f"DELETE FROM {self.states_table} WHERE account = %s", (account,))
        return int(self._execute(f"DELETE FROM {self.table} WHERE account = %s", (account,)).rowcount) > 0

    def _select(self, clause: str, args: tuple[Any, ...]) -> builtins.list[StoredCredential]:
        rows = self._execute(
            f"SELECT account, version, oauth, response, updated_at, settings FROM {self.table} {clause}", args
        ).fetchall()
        return [
            StoredCredential(
                account=r[0],
                version=int(r[1]),
                oauth=self._sealer.open(r[0], "oauth", r[2]),
                response=self._sealer.open(r[0], "response", r[3]),
                updated_at=float(r[4]),
                settings=r[5] if isinstance(r[5], dict) else None,
            )
            for r in rows
        ]

    # -- account states ----------------------------------------------------------------------------
    def state(self, account: str) -> AccountState | None:
        rows = self._states("WHERE account = %s", (account,))
        return rows[0] if rows else None

    def states(self) -> builtins.list[AccountState]:
        return self._states("ORDER BY account", ())

    def _states(self, clause: str, args: tuple[Any, ...]) -> builtins.list[AccountState]:
        rows = self._execute(f"SELECT {STATE_COLUMNS} FROM {self.states_table} {clause}", args).fetchall()
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
        conn = self._connection()
        try:
            with conn.transaction():  # the row locked: two replicas recording at once see one transition
                conn.execute(
                    f"INSERT INTO {self.states_table} (account, state, version, failures, since) "
                    "VALUES (%s, %s, -1, 0, %s) ON CONFLICT (account) DO NOTHING",
                    (account, ACTIVE, moment),
                )
                row = conn.execute(
                    f"SELECT {STATE_COLUMNS} FROM {self.states_table} WHERE account = %s FOR UPDATE", (account,)
                ).fetchone()
                old = state_from_row(row)
                change = next_state(
                    None if old.version < 0 else old,
                    account,
                    state,
                    version=int(version),
                    reason=reason,
                    now=moment,
                    refreshed=refreshed,
                )
                if change is not None:
                    conn.execute(
                        f"UPDATE {self.states_table} SET state = %s, version = %s, failures = %s, reason = %s, "
                        "since = %s, last_refresh = %s, last_attempt = %s WHERE account = %s",
                        (*state_row(change.current)[1:], account),
                    )
                return change
        except self._psycopg.Error as exc:
            raise KeyStoreError(
                f"keys store {safe_url(self.url)}: cannot record the state of account {account}: "
                f"{type(exc).__name__}: {_reason(exc)}"
            ) from None

    def claim(self, account: str, min_interval: float, *, now: float | None = None) -> bool:
        moment = time.time() if now is None else now
        self._execute(
            f"INSERT INTO {self.states_table} (account, state, version, failures, since) "
            "VALUES (%s, %s, 0, 0, %s) ON CONFLICT (account) DO NOTHING",
            (account, ACTIVE, moment),
        )
        cursor = self._execute(
            f"UPDATE {self.states_table} SET last_attempt = %s WHERE account = %s "
            "AND (last_attempt IS NULL OR last_attempt <= %s)",
            (moment, account, moment - min_interval),
        )
        return bool(cursor.rowcount)

    @contextlib.contextmanager
    def lock(self, account: str, timeout: float = 30.0) -> Iterator[None]:
        """pg_try_advisory_lock on a hash of the account, on a connection of this thread."""
        key = int.from_bytes(hashlib.sha256(account.encode()).digest()[:8], "big", signed=True)
        deadline = time.monotonic() + timeout
        while not self._execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
            if time.monotonic() >= deadline:
                raise KeyStoreError(f"keys store: lock for account {account} not acquired within {timeout:g} s")
            time.sleep(0.01)
        try:
            yield
        finally:
            self._execute("SELECT pg_advisory_unlock(%s)", (key,))

    def drop(self) -> None:
        """Remove the table (tests)."""
        self._execute(f"DROP TABLE IF EXISTS {self.table}")
        self._execute(f"DROP TABLE IF EXISTS {self.states_table}")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _reason(exc: Exception) -> str:
    """The driver's reason in one line: the server's primary message, else the client's own (e.g. connection refused)."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        return str(primary)
    text = " ".join(str(exc).split())
    return redact_text(text)[:300] if text else "no reason given"
