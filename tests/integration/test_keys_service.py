"""The platform side as processes: ``oarlock keys serve`` on a real broker, ``keys refresh-dormant`` on the dev provider."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oarlock.keys.store import open_store
from tests.support import run_cli


@pytest.mark.amqp
def test_keys_serve_stores_the_newest_and_rejects_garbage(tmp_path: Path) -> None:
    from oarlock.testing import BrokerSandbox

    keys = str(tmp_path / "keys.sqlite")
    with BrokerSandbox() as broker:
        publish = broker.channel.basic_publish
        key = broker.routing_keys["updateKeys"]
        publish(broker.exchange, key, broker.cipher.encrypt({"account": "a", "version": 5, "oauth": {"t": 5}}))
        publish(broker.exchange, key, broker.cipher.encrypt({"account": "a", "version": 4, "oauth": {"t": 4}}))
        publish(broker.exchange, key, b"garbage that is not encrypted")
        env = {
            "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": broker.password or "",
            "ELASTICIO_MESSAGE_CRYPTO_IV": broker.iv or "",
        }
        done = run_cli(["keys", "serve", "--store", keys, "--queue", broker.queues["updateKeys"], "--burst"], env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"stored": 1, "refused": 1, "rejected": 1}
        assert broker.count("updateKeys") == 0
    assert "updateKeys message rejected" in done.stderr
    stored = open_store(keys).get("a")
    assert stored is not None and stored.oauth == {"t": 5}


def test_refresh_dormant_refreshes_sleeping_credentials_and_reports_dead_ones(tmp_path: Path) -> None:
    from oarlock.devprovider import DevProvider

    keys = str(tmp_path / "keys.sqlite")
    with DevProvider(rotation="single-use") as provider:
        store = open_store(keys)
        alive, dead = provider.mint("alive"), provider.mint("dead")
        store.save("acct-alive", alive, 1)
        store.save("acct-dead", dead, 1)
        provider.revoke("dead")
        done = run_cli(
            [
                "keys",
                "refresh-dormant",
                "--keys",
                keys,
                "--idle-days",
                "0",
                "--token-uri",
                provider.token_url,
                "--client-id",
                "oarlock-dev",
            ],
            env={"OARLOCK_CLIENT_SECRET": "oarlock-dev-secret"},
        )
        results = {r["account"]: r for r in map(json.loads, done.stdout.splitlines())}
        stats = provider.stats()
    assert done.returncode == 1
    assert results["acct-alive"]["refreshed"] is True and results["acct-alive"]["version"] > 1
    assert results["acct-dead"]["refreshed"] is False and "must be re-authorized" in results["acct-dead"]["error"]
    stored = store.get("acct-alive")
    assert stored is not None and stored.oauth["refresh_token"] != alive["refresh_token"]
    assert stats["refresh_calls"] == 2 and dead["refresh_token"] not in done.stdout + done.stderr
    untouched = run_cli(
        [
            "keys",
            "refresh-dormant",
            "--keys",
            keys,
            "--idle-days",
            "30",
            "--token-uri",
            "http://127.0.0.1:9/token",
            "--client-id",
            "x",
        ]
    )
    assert untouched.returncode == 0 and untouched.stdout == ""
