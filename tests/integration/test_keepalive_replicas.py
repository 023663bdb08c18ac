"""Several keep-alive replicas on one PostgreSQL store refresh each due account once; a worker refreshing the same
account at the same moment is never disturbed (single-use refresh tokens, no invalid_grant)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from oarlock.credentials.manager import CredentialManager
from oarlock.devprovider import DevProvider
from oarlock.errors import OarlockError
from oarlock.keys.keepalive import Keepalive, KeepaliveSummary
from oarlock.keys.postgres import PostgresKeyStore
from oarlock.protocol.events import EventList
from tests.support import REPO, run_cli

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
SECRET = "replica-test-client-secret"
ACCOUNTS = 24

#: one replica: waits for the start file, then one keep-alive cycle; prints its summary
REPLICA = """
import json, os, sys, time
from oarlock.keys.keepalive import Keepalive
from oarlock.keys.secrets import load_client_secrets
from oarlock.keys.store import open_store
store = open_store(sys.argv[1])
keepalive = Keepalive(store, load_client_secrets(sys.argv[2]), idle_override=0)
store.list()  # connected before the start
open(sys.argv[3] + ".ready-" + str(os.getpid()), "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.005)
print(json.dumps(keepalive.run_once().as_dict()))
store.close()
"""


@pytest.fixture
def table() -> Iterator[str]:
    name = f"oarlock_test_{uuid.uuid4().hex[:10]}"
    yield name
    store = PostgresKeyStore(POSTGRES, table=name)
    store.drop()
    store.close()


def secrets_file(tmp_path: Path, client_id: str) -> str:
    path = tmp_path / "client-secrets.json"
    path.write_text(json.dumps({client_id: SECRET}))
    os.chmod(path, 0o600)
    return str(path)


def seed(provider: DevProvider, table: str, count: int) -> list[str]:
    store = PostgresKeyStore(POSTGRES, table=table)
    settings = {"token_uri": provider.token_url, "client_id": provider.settings.client_id}
    accounts = [f"acct-{n:02d}" for n in range(count)]
    for account in accounts:
        store.save(account, provider.mint(account), 1, None, settings)
    store.close()
    return accounts


@pytest.mark.postgres
def test_two_replica_processes_on_one_postgresql_store_refresh_each_due_account_exactly_once(
    tmp_path: Path, table: str
) -> None:
    with DevProvider(rotation="single-use", client_secret=SECRET, token_latency_ms=15) as provider:
        accounts = seed(provider, table, ACCOUNTS)
        url, start = f"{POSTGRES}?table={table}", str(tmp_path / "go")
        env = {**os.environ, "PYTHONPATH": str(REPO / "lib")}
        command = [sys.executable, "-c", REPLICA, url, secrets_file(tmp_path, "oarlock-dev"), start]
        replicas = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)]
        replicas.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("go.ready-*"))) < 2 and time.monotonic() < deadline:
            assert all(replica.poll() is None for replica in replicas), "a replica ended before the start"
            time.sleep(0.01)
        Path(start).touch()  # both start their cycle at the same moment
        outputs = [replica.communicate(timeout=120) for replica in replicas]
        stats = provider.stats()
    assert all(replica.returncode == 0 for replica in replicas), [err for _, err in outputs]
    summaries = [json.loads(out) for out, _ in outputs]
    refreshed = [set(summary["refreshed"]) for summary in summaries]
    assert refreshed[0].isdisjoint(refreshed[1]) and refreshed[0] | refreshed[1] == set(accounts)
    assert stats["refresh_calls"] == ACCOUNTS and stats["invalid_grant"] == 0
    assert stats["active_refresh_tokens"] == ACCOUNTS  # every account's newest refresh token alive: none burnt
    for summary, mine in zip(summaries, refreshed, strict=True):  # what one did not refresh, the other had
        assert set(summary["skipped_elsewhere"]) == set(accounts) - mine and not summary["failed"]
    print(f"split between the replicas: {sorted(len(r) for r in refreshed)}")


@pytest.mark.postgres
def test_refresh_dormant_run_twice_at_once_on_postgresql_refreshes_each_account_once(
    tmp_path: Path, table: str
) -> None:
    with DevProvider(rotation="single-use", client_secret=SECRET, token_latency_ms=10) as provider:
        accounts = seed(provider, table, 12)
        args = ["keys", "refresh-dormant", "--keys", f"{POSTGRES}?table={table}", "--idle", "0"]
        args += ["--client-secrets", secrets_file(tmp_path, "oarlock-dev")]
        results: list[subprocess.CompletedProcess[str]] = []
        runs = [threading.Thread(target=lambda: results.append(run_cli(args))) for _ in range(2)]
        for run in runs:
            run.start()
        for run in runs:
            run.join(timeout=120)
        stats = provider.stats()
    assert len(results) == 2 and all(result.returncode == 0 for result in results), [r.stderr for r in results]
    summaries = [json.loads(result.stdout) for result in results]
    assert sorted(a for summary in summaries for a in summary["refreshed"]) == accounts
    assert stats["refresh_calls"] == 12 and stats["invalid_grant"] == 0 and SECRET not in results[0].stderr


@pytest.mark.postgres
def test_a_worker_refreshing_the_same_account_at_the_same_moment_is_never_disturbed(table: str) -> None:
    with DevProvider(rotation="single-use", client_secret=SECRET, token_latency_ms=20) as provider:
        cfg = provider.cfg(account="acct-shared")
        cfg["oauth2"]["client_secret"] = SECRET
        service_store, worker_store = (PostgresKeyStore(POSTGRES, table=table) for _ in range(2))
        service_store.save(
            "acct-shared", cfg["oauth"], 1, None, {"token_uri": provider.token_url, "client_id": "oarlock-dev"}
        )
        keepalive = Keepalive(service_store, {"oarlock-dev": SECRET}, idle_override=0, min_interval=0)
        worker = CredentialManager(coordinator=worker_store)
        errors: list[OarlockError] = []
        summaries: list[KeepaliveSummary] = []
        go = threading.Barrier(2)

        def work() -> None:
            for cycle in range(15):
                calls = provider.stats()["token_calls"]
                go.wait(timeout=30)
                if cycle % 2:  # odd cycles: refresh while the keep-alive's own refresh is at the provider
                    deadline = time.monotonic() + 10
                    while provider.stats()["token_calls"] == calls and time.monotonic() < deadline:
                        time.sleep(0.001)
                try:
                    worker.credential(worker.newest_cfg(cfg), sink=EventList()).refresh()
                except OarlockError as exc:
                    errors.append(exc)

        def keep_alive() -> None:
            for _ in range(15):
                go.wait(timeout=30)
                summaries.append(keepalive.run_once())

        threads = [threading.Thread(target=work), threading.Thread(target=keep_alive)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        stats = provider.stats()
        stored = service_store.get("acct-shared")
        assert stored is not None
        # the stored credential is the live one: a process starting from the store refreshes it fine
        fresh = CredentialManager(coordinator=service_store)
        fresh.credential({**cfg, "oauth": stored.oauth}, sink=EventList()).refresh()
        service_store.close()
        worker_store.close()
    assert not errors and stats["invalid_grant"] == 0 and stats["active_refresh_tokens"] == 1
    assert not any(s.failed or s.needs_reauthorization for s in summaries)
    refreshed_here = sum(len(s.refreshed) for s in summaries)
    # the keep-alive refreshed in every odd cycle (the worker waited on the lock, then used the new token); in the
    # others it either went first or saw the worker's refresh under the lock and left it: no refresh wasted or failed
    assert refreshed_here >= 7 and stats["refresh_calls"] == 15 + refreshed_here
    print(f"keep-alive refreshes between the worker's: {refreshed_here} of 15 cycles")
