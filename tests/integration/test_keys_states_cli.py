"""`oarlock keys list` / `show`: each account's state, version, expiry, last refresh, last failure, secret known."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from oarlock.keys.accounts import NEEDS_REAUTHORIZATION, REFRESH_FAILING
from oarlock.keys.postgres import PostgresKeyStore
from oarlock.keys.store import open_store
from tests.support import run_cli

SETTINGS = {"token_uri": "http://127.0.0.1:9/token", "client_id": "client-a", "provider": "microsoft"}


def seeded(path: Path) -> str:
    keys = str(path / "keys.sqlite")
    store = open_store(keys)
    token = {"access_token": "AT-never-shown", "refresh_token": "RT-never-shown", "expires_at": 1_900_000_000}
    store.save("acct-ok", {**token, "obtained_at": 1_800_000_000}, 5, None, SETTINGS)
    store.save("acct-dead", dict(token), 9, None, {**SETTINGS, "client_id": "client-b"})
    store.save("acct-flaky", dict(token), 3)
    store.record_state("acct-dead", NEEDS_REAUTHORIZATION, version=9, reason="invalid_grant: token revoked", now=1.7e9)
    store.record_state("acct-flaky", REFRESH_FAILING, version=3, reason="503 from the token endpoint")
    store.record_state("acct-flaky", REFRESH_FAILING, version=3, reason="timed out")
    store.close()
    return keys


def test_show_prints_one_object_with_the_state_and_the_reason_of_the_last_failure(tmp_path: Path) -> None:
    keys = seeded(tmp_path)
    shown = run_cli(["keys", "show", "acct-dead", "--keys", keys])
    assert shown.returncode == 0, shown.stderr
    line = json.loads(shown.stdout)
    assert line["account"] == "acct-dead" and line["state"] == "needs_reauthorization" and line["version"] == 9
    assert line["reason"] == "invalid_grant: token revoked" and line["since"] == "2023-11-14T22:13:20Z"
    assert line["expires_at"] == "2030-03-17T17:46:40Z" and "last_refresh" in line
    assert "RT-never-shown" not in shown.stdout and "AT-never-shown" not in shown.stdout


def test_list_gives_each_account_its_state_and_whether_its_client_secret_is_known(tmp_path: Path) -> None:
    keys = seeded(tmp_path)
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"client-a": "secret-a-never-shown"}))
    os.chmod(secrets, 0o600)
    listed = run_cli(["keys", "list", "--keys", keys, "--client-secrets", str(secrets)])
    assert listed.returncode == 0, listed.stderr
    rows = {row["account"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert rows["acct-ok"]["state"] == "active" and rows["acct-ok"]["client_secret_known"] is True
    assert rows["acct-ok"]["last_refresh"] == "2027-01-15T08:00:00Z"
    assert rows["acct-dead"]["client_secret_known"] is False
    assert rows["acct-flaky"]["state"] == "refresh_failing" and rows["acct-flaky"]["failures"] == 2
    assert rows["acct-flaky"]["reason"] == "timed out" and rows["acct-flaky"]["client_secret_known"] is False
    assert "never-shown" not in listed.stdout + listed.stderr
    without = json.loads(run_cli(["keys", "list", "--keys", keys]).stdout.splitlines()[0])
    assert without["client_secret_known"] is None  # not asked


def test_a_newer_credential_after_a_failure_is_listed_active(tmp_path: Path) -> None:
    keys = seeded(tmp_path)
    store = open_store(keys)
    store.save("acct-dead", {"access_token": "re-authorized"}, 10)
    store.close()
    line = json.loads(run_cli(["keys", "show", "acct-dead", "--keys", keys]).stdout)
    assert line["state"] == "active" and line["reason"] is None and line["version"] == 10


def test_keys_list_on_a_path_that_does_not_exist_says_so_and_creates_nothing(tmp_path: Path) -> None:
    where = tmp_path / "nowhere" / "keys.sqlite"
    for args, code in ((["keys", "list"], 2), (["keys", "show", "acct"], 1)):
        result = run_cli([*args, "--keys", str(where)])
        assert result.returncode == code and f"no keys store at {where}" in result.stderr
    assert not where.exists() and not where.parent.exists()


@pytest.mark.postgres
def test_show_reads_states_from_postgresql_too() -> None:
    table = f"oarlock_test_{uuid.uuid4().hex[:10]}"
    url = "postgresql://postgres@127.0.0.1:5432/test"
    store = PostgresKeyStore(url, table=table)
    try:
        store.save("acct-pg", {"access_token": "x"}, 2)
        store.record_state("acct-pg", NEEDS_REAUTHORIZATION, version=2, reason="invalid_client")
        result = run_cli(["keys", "show", "acct-pg", "--keys", f"{url}?table={table}"])
        assert result.returncode == 0, result.stderr
        line = json.loads(result.stdout)
        assert line["state"] == "needs_reauthorization" and line["reason"] == "invalid_client"
    finally:
        store.drop()
        store.close()


def test_a_secret_bound_to_another_token_endpoint_is_listed_as_not_known_for_the_account(tmp_path: Path) -> None:
    keys = seeded(tmp_path)
    secrets = tmp_path / "secrets.json"
    bound = {
        "client-a": {"secret": "secret-a-never-shown", "token_uri": "https://login.example.com/token"},
        "client-b": {"secret": "secret-b-never-shown", "token_uri": "http://127.0.0.1:9/other/path"},
    }
    secrets.write_text(json.dumps(bound))
    os.chmod(secrets, 0o600)
    listed = run_cli(["keys", "list", "--keys", keys, "--client-secrets", str(secrets)])
    assert listed.returncode == 0, listed.stderr
    rows = {row["account"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert rows["acct-ok"]["client_secret_known"] is False, "client-a's secret may not go to 127.0.0.1:9"
    assert rows["acct-dead"]["client_secret_known"] is True, "the same origin, another path: usable"
    assert "never-shown" not in listed.stdout + listed.stderr
