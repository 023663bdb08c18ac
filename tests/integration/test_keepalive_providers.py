"""Two providers, two clients, one PostgreSQL store: `oarlock keys refresh-dormant --client-secrets` refreshes each
dormant account at its own endpoint with its own client, stores no client secret, skips an unknown client; a revoked
account ends in needs_reauthorization, is not retried, and alerts once (a real webhook)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from oarlock.devprovider import DevProvider, ManualClock
from oarlock.keys.accounts import ACTIVE, NEEDS_REAUTHORIZATION
from oarlock.keys.alerts import Alerter
from oarlock.keys.base import apply_update_keys
from oarlock.keys.keepalive import Keepalive
from oarlock.keys.postgres import PostgresKeyStore
from oarlock.keys.reauth import store_authorization
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


class Webhook:
    """A real HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/oarlock"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.postgres
def test_a_revoked_account_needs_reauthorization_over_several_cycles_is_tried_once_and_alerts_once(
    store: PostgresKeyStore, providers: tuple[DevProvider, DevProvider]
) -> None:
    alpha, _ = providers
    assert apply_update_keys(store, worker_update(alpha, "acct-revoked", "rex"))
    assert apply_update_keys(store, worker_update(alpha, "acct-fine", "fay"))
    answer = requests.post(f"{alpha.url}/__revoke", json={"subject": "rex"}, timeout=10)
    assert answer.status_code == 200 and answer.json() == {"revoked": 1}
    webhook = Webhook()
    alerter = Alerter(webhook=webhook.url)
    clock = ManualClock(time.time() + 8 * 86400)
    keepalive = Keepalive(store, {"client-alpha": SECRET_A}, clock=clock, alerter=alerter)
    try:
        first = keepalive.run_once()
        assert first.needs_reauthorization == ["acct-revoked"] and first.refreshed == ["acct-fine"]
        for _ in range(4):
            clock.advance(90)
            later = keepalive.run_once()
            assert later.skipped_needs_reauthorization == ["acct-revoked"] and "acct-revoked" not in later.due
        assert alerter.wait_idle(30)
        state = store.state("acct-revoked")
        assert state is not None and state.state == NEEDS_REAUTHORIZATION
        assert "invalid_grant" in (state.reason or "") and state.since is not None
        refreshes = alpha.stats()["token_calls_by_grant"]["refresh_token"]
        assert alpha.stats()["invalid_grant"] == 1  # the dead one was tried once in five cycles
        assert refreshes == 1 + 5  # (the fine one every cycle: idle past 7 days on this clock, 90 s apart)
        assert len(webhook.received) == 1
        alert = webhook.received[0]
        assert alert["account"] == "acct-revoked" and alert["state"] == NEEDS_REAUTHORIZATION
        assert "invalid_grant" in alert["reason"] and alert["since"].endswith("Z")

        # a human re-authorizes: the account is active again and kept alive; its next death alerts once more
        store_authorization(store, "acct-revoked", alpha.mint("rex"), now=clock())
        clock.advance(8 * 86400)
        healed = keepalive.run_once()
        assert "acct-revoked" in healed.refreshed
        state = store.state("acct-revoked")
        assert state is not None and state.state == ACTIVE
        alpha.revoke("rex")
        clock.advance(8 * 86400)
        assert "acct-revoked" in keepalive.run_once().needs_reauthorization
        assert alerter.wait_idle(30) and len(webhook.received) == 2
    finally:
        alerter.close()
        webhook.close()
