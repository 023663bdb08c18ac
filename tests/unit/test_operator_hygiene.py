"""Operator-facing hygiene: every stderr line the runtime controls is a redacted log record; a keys-store URL
with a scheme oarlock does not know is a configuration error, never a SQLite file named after it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from oarlock.errors import ConfigurationError
from oarlock.keys.sqlite import SqliteKeyStore
from oarlock.keys.store import open_store

SCRIPT = """
import threading, warnings
from oarlock.logs import configure
from oarlock.redact import register_secret
configure("info")
register_secret("AT-SECRET-1234567890")
warnings.warn("request to https://api.example/x?access_token=AT-SECRET-1234567890 is unverified")
def boom():
    raise RuntimeError("token AT-SECRET-1234567890 in a thread's exception")
thread = threading.Thread(target=boom, name="component-thread")
thread.start()
thread.join()
"""


def test_warnings_and_uncaught_thread_exceptions_are_json_log_records_with_secrets_masked() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON: nothing raw
    assert "AT-SECRET-1234567890" not in done.stderr
    assert any("is unverified" in record["message"] for record in records)
    assert any("uncaught RuntimeError in thread component-thread" in record["message"] for record in records)


@pytest.mark.parametrize(
    ("url", "scheme"),
    [("mysql://db/keys", "mysql"), ("redis://127.0.0.1:6379/0", "redis"), ("file:///tmp/keys.sqlite", "file")],
)
def test_a_keys_store_url_with_an_unknown_scheme_is_a_configuration_error_naming_it(
    url: str, scheme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=f"unknown scheme '{scheme}'"):
        open_store(url)
    assert list(tmp_path.iterdir()) == [], "no file or folder named after the URL"


def test_sqlite_urls_in_any_case_and_sqlalchemy_postgres_spellings_are_understood(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(f"SQLite:///{tmp_path}/keys.sqlite")
    assert isinstance(store, SqliteKeyStore) and store.path == tmp_path / "keys.sqlite"
    store.close()
    from oarlock.keys.postgres import PostgresKeyStore

    for url in ("postgresql+psycopg://127.0.0.1:1/test", "PostgreSQL://127.0.0.1:1/test"):
        try:
            opened = open_store(url)
        except Exception as exc:  # nothing listens on port 1: what matters is which store tried
            assert "PostgreSQL" in str(exc) or "postgresql" in str(exc), exc
        else:
            assert isinstance(opened, PostgresKeyStore)
            opened.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.sqlite", "keys.sqlite.locks"] or not any(
        ":" in p.name for p in tmp_path.iterdir()
    ), "no SQLite file named after a PostgreSQL URL"
