"""Two providers, two clients, one PostgreSQL store: `oarlock keys refresh-dormant --client-secrets` refreshes each
dormant account at its own endpoint with its own client, stores no client secret, skips an unknown client; a revoked
account ends in needs_reauthorization and is not retried."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from oarlock.devprovider import DevProvider, ManualClock
from oarlock.keys.accounts import NEEDS_REAUTHORIZATION, StateChange
from oarlock.keys.base import apply_update_keys
from oarlock.keys.keepalive import Keepalive
from oarlock.keys.postgres import PostgresKeyStore
from tests.support import run_cli

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
SECRET_A = "alpha-client-secret-never-stored"
SECRET_B = "beta-client-secret-never-stored"


@pytest.fixture
def store() -> Iterator[PostgresKeyStore]:
    opened = PostgresKeyStore(POSTGRES, table=f"oarlock_test_{uuid.uuid4().hex[:10]}")
    yield opened
    opened.drop()
    opened.close()


@pytest.fixture
def providers() -> Iterator[tuple[DevProvider, DevProvider]]:
    with (
        DevProvider(rotation="single-use", client_id="client-alpha", client_secret=SECRET_A) as alpha,
        DevProvider(rotation="rotate", client_id="client-beta", client_secret=SECRET_B, ttl=600) as beta,
    ):
        yield alpha, beta


def worker_update(dev: DevProvider, account: str, subject: str) -> dict[str, Any]:
    """An updateKeys payload as a worker's cfg would give it: the cfg's oauth2, client secret and all."""
    cfg = dev.cfg(account=account, subject=subject)
    return {"account": account, "version": 1, "oauth": cfg["oauth"], "oauth2": cfg["oauth2"]}


def raw_rows(store: PostgresKeyStore) -> str:
    """Every stored row of both tables as PostgreSQL prints it."""
    with psycopg.connect(POSTGRES) as conn:
        rows = conn.execute(f"SELECT t::text FROM {store.table} t").fetchall()
        rows += conn.execute(f"SELECT t::text FROM {store.states_table} t").fetchall()
    return "\n".join(row[0] for row in rows)


@pytest.mark.postgres
def test_each_dormant_account_is_refreshed_at_its_own_endpoint_with_its_own_client_and_no_secret_is_stored(
    store: PostgresKeyStore, providers: tuple[DevProvider, DevProvider], tmp_path: Path
) -> None:
    alpha, beta = providers
    for payload in (
        worker_update(alpha, "acct-alpha-1", "ann"),
        worker_update(alpha, "acct-alpha-2", "abe"),
        worker_update(beta, "acct-beta", "ben"),
    ):
        assert apply_update_keys(store, payload)
    stranger = worker_update(beta, "acct-stranger", "sam")
    stranger["oauth2"]["client_id"] = "client-gamma"  # a client this service has no secret of
    assert apply_update_keys(store, stranger)
    secrets = tmp_path / "client-secrets.json"
    secrets.write_text(json.dumps({"client-alpha": SECRET_A, "client-beta": SECRET_B}))
    os.chmod(secrets, 0o600)
    before = {s.account: s.oauth["refresh_token"] for s in store.list()}

    url = f"{POSTGRES}?table={store.table}"
    done = run_cli(["keys", "refresh-dormant", "--keys", url, "--client-secrets", str(secrets), "--idle", "0"])
    summary = json.loads(done.stdout)
    assert done.returncode == 1, done.stderr  # the stranger could not be tried: a human must look
    assert sorted(summary["refreshed"]) == ["acct-alpha-1", "acct-alpha-2", "acct-beta"]
    assert summary["skipped_no_secret"] == ["acct-stranger"] and "client-gamma" in summary["reasons"]["acct-stranger"]
    assert (alpha.stats()["refresh_calls"], beta.stats()["refresh_calls"]) == (2, 1)
    assert alpha.stats()["invalid_client"] == beta.stats()["invalid_client"] == 0
    after = {s.account: s for s in store.list()}
    for account in summary["refreshed"]:
        assert after[account].oauth["refresh_token"] != before[account]
        assert after[account].version == summary["versions"][account] > 1
    assert after["acct-stranger"].oauth["refresh_token"] == before["acct-stranger"]
    rows = raw_rows(store)
    assert "client-alpha" in rows and "client-beta" in rows and alpha.token_url in rows
    assert SECRET_A not in rows and SECRET_B not in rows
    assert SECRET_A not in done.stdout + done.stderr and SECRET_B not in done.stdout + done.stderr

    idle = run_cli(["keys", "refresh-dormant", "--keys", url, "--client-secrets", str(secrets)])
    assert json.loads(idle.stdout)["due"] == []  # the preset windows: nothing slept a week yet
    assert (alpha.stats()["refresh_calls"], beta.stats()["refresh_calls"]) == (2, 1)


class CountingAlerter:
    def __init__(self) -> None:
        self.alerts: list[StateChange] = []

    def notify(self, change: StateChange) -> None:
        if change.entered:
            self.alerts.append(change)


@pytest.mark.postgres
def test_a_revoked_account_needs_reauthorization_with_the_reason_over_several_cycles_and_is_tried_once(
    store: PostgresKeyStore, providers: tuple[DevProvider, DevProvider]
) -> None:
    alpha, _ = providers
    assert apply_update_keys(store, worker_update(alpha, "acct-revoked", "rex"))
    assert apply_update_keys(store, worker_update(alpha, "acct-fine", "fay"))
    answer = requests.post(f"{alpha.url}/__revoke", json={"subject": "rex"}, timeout=10)
    assert answer.status_code == 200 and answer.json() == {"revoked": 1}
    clock, alerter = ManualClock(time.time() + 8 * 86400), CountingAlerter()
    keepalive = Keepalive(store, {"client-alpha": SECRET_A}, clock=clock, alerter=alerter)
    first = keepalive.run_once()
    assert first.needs_reauthorization == ["acct-revoked"] and first.refreshed == ["acct-fine"]
    for _ in range(4):
        clock.advance(90)
        later = keepalive.run_once()
        assert later.skipped_needs_reauthorization == ["acct-revoked"] and "acct-revoked" not in later.due
    state = store.state("acct-revoked")
    assert state is not None and state.state == NEEDS_REAUTHORIZATION
    assert "invalid_grant" in (state.reason or "") and state.since is not None
    token_calls = alpha.stats()["token_calls_by_grant"]["refresh_token"]
    assert alpha.stats()["invalid_grant"] == 1 and len(alerter.alerts) == 1
    assert token_calls == 1 + 5  # the revoked one once; the fine one every cycle (idle past 7 days on this clock)
