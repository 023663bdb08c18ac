"""Two ``oarlock keys serve --keepalive`` replicas on one PostgreSQL store: each due account refreshed once, the
refreshes published as updateKeys on --exchange, no client secret stored."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from oarlock.devprovider import DevProvider
from oarlock.keys.postgres import PostgresKeyStore
from tests.integration.test_keys_service import POSTGRES, ServeProcess, crypto_env, pg_table, wait_until

__all__ = ["pg_table"]  # the fixture, used below
SECRET = "replicas-serve-client-secret"
ACCOUNTS = 12


def consumed(replicas: list[ServeProcess]) -> list[str]:
    """The updateKeys lines: the keep-alive's publishes, consumed back (same version: refused as older)."""
    return [line for r in replicas for line in r.messages() if line.startswith("updateKeys of account")]


@pytest.mark.amqp
@pytest.mark.postgres
def test_two_keys_serve_replicas_with_keepalive_refresh_each_due_account_once_and_publish_it(
    tmp_path: Path, broker: Any, pg_table: str
) -> None:
    secrets = tmp_path / "client-secrets.json"
    secrets.write_text(json.dumps({"oarlock-dev": SECRET}))
    os.chmod(secrets, 0o600)
    url = f"{POSTGRES}?table={pg_table}"
    with DevProvider(rotation="single-use", client_secret=SECRET, token_latency_ms=10) as provider:
        store = PostgresKeyStore(POSTGRES, table=pg_table)
        settings = {"token_uri": provider.token_url, "client_id": "oarlock-dev"}
        for n in range(ACCOUNTS):
            store.save(f"acct-{n:02d}", provider.mint(f"user-{n}"), 1, None, settings)
        args = ["--store", url, "--queue", broker.queues["updateKeys"], "--keepalive", "--keepalive-idle", "0"]
        args += ["--keepalive-period", "1", "--client-secrets", str(secrets), "--exchange", broker.exchange]
        args += ["--update-keys-routing-key", broker.routing_keys["updateKeys"]]
        replicas = [ServeProcess(args, crypto_env(broker)) for _ in range(2)]
        try:
            for replica in replicas:
                assert replica.started()["keepalive"] is True
            for replica in replicas:  # every account refreshed by then, and two more cycles each that refresh none
                replica.wait_for("keep-alive cycle 4:", "four keep-alive cycles", timeout=90)
            wait_until(lambda: len(consumed(replicas)) >= ACCOUNTS, "the published refreshes are consumed back")
        finally:
            results = [replica.stop() for replica in replicas]
        stats = provider.stats()
        rows = store.list()
        store.close()
    assert all(code == 0 for code, _, _ in results), [err[-2000:] for _, _, err in results]
    assert stats["refresh_calls"] == ACCOUNTS and stats["invalid_grant"] == 0
    assert sorted(row.account for row in rows if row.version > 1) == [f"acct-{n:02d}" for n in range(ACCOUNTS)]
    assert all(SECRET not in json.dumps(row.settings) for row in rows)
    refreshed = [line for r in replicas for line in r.messages() if line.startswith("keep-alive: account ")]
    refreshed = [line for line in refreshed if " refreshed after " in line]
    assert len(refreshed) == ACCOUNTS  # once each, split between the replicas
    assert len(consumed(replicas)) == ACCOUNTS and all(line.endswith("refused as older") for line in consumed(replicas))
    for _, _, err in results:
        assert SECRET not in err
