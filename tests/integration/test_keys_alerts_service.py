"""``oarlock keys serve``: a revoked account alerts once (message and webhook) however many reports and keep-alive
cycles see it dead; a re-authorization returns it to active; the new credential's death alerts once more."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from oarlock.devprovider import DevProvider
from oarlock.keys.store import open_store
from tests.integration.test_keys_service import ServeProcess, crypto_env, publish_update, wait_until
from tests.support import TEST_COMPONENTS
from tests.unit.test_keys_alerts import Hook
from tests.unit.test_keys_http import AUTH, SAILOR_KEY, SAILOR_USER

SECRET = "alerts-test-client-secret"


@pytest.fixture
def hook() -> Iterator[tuple[str, type[Hook]]]:
    handler = type("AlertHook", (Hook,), {"posts": [], "statuses": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", handler
    server.shutdown()
    server.server_close()


def run_worker(broker: Any, cfg_path: Path, keys: str, inputs: int) -> subprocess.CompletedProcess[str]:
    """A real worker whose credential is dead: it reports it to the service's queue (once per cooldown)."""
    for n in range(inputs):
        broker.publish_input({"body": {"n": n}})
    env = {
        **os.environ,
        **broker.env("api"),
        "ELASTICIO_KEYS_STORE": keys,
        "ELASTICIO_CREDENTIAL_INVALID_ROUTING_KEY": broker.routing_keys["updateKeys"],
    }
    component = str(TEST_COMPONENTS / "amqp")
    return subprocess.run(
        [sys.executable, "-m", "oarlock", "run", "--component", component, "--cfg", str(cfg_path), "--burst"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.amqp
def test_a_revoked_account_alerts_once_over_keepalive_cycles_and_worker_reports_and_again_after_reauthorization(
    tmp_path: Path, broker: Any, hook: tuple[str, type[Hook]]
) -> None:
    webhook, posts = hook
    alerts_queue, alert_key = f"{broker.exchange}-alerts", f"{broker.id}.credentialAlert"
    broker.channel.queue_declare(alerts_queue)
    broker.channel.queue_bind(alerts_queue, broker.exchange, routing_key=alert_key)
    secrets = tmp_path / "client-secrets.json"
    secrets.write_text(json.dumps({"oarlock-dev": SECRET}))
    os.chmod(secrets, 0o600)
    keys = str(tmp_path / "keys" / "keys.sqlite")
    args = ["--store", keys, "--queue", broker.queues["updateKeys"], "--http", ":0", "--exchange", broker.exchange]
    args += ["--alert-routing-key", alert_key, "--webhook", webhook, "--keepalive", "--keepalive-idle", "0"]
    args += ["--keepalive-period", "1", "--client-secrets", str(secrets)]
    env = {**crypto_env(broker), "OARLOCK_API_USERNAME": SAILOR_USER, "OARLOCK_API_KEY": SAILOR_KEY}
    try:
        with DevProvider(rotation="single-use", client_secret=SECRET) as provider:
            service = ServeProcess(args, env)
            try:
                url = service.started()["http"]
                cfg = provider.cfg(account="acct-dead", subject="user-dead")
                provider.revoke("user-dead")
                # the platform stores it (with its refresh settings; the client secret is dropped)
                body = {"keys": {"oauth": cfg["oauth"], "oauth2": cfg["oauth2"]}}
                put = requests.put(f"{url}/v1/accounts/acct-dead", json=body, headers=AUTH, timeout=10).json()
                dead_version = put["version"]
                # the keep-alive finds it dead: needs_reauthorization, one alert
                wait_until(lambda: len(posts.posts) == 1, "the webhook got the alert")
                account = requests.get(f"{url}/v1/accounts/acct-dead", headers=AUTH, timeout=10).json()
                assert account["state"] == "needs_reauthorization"
                # a real worker with the dead credential reports it, and so do ten more reports
                cfg["oauth"]["expires_at"] = 0
                cfg_path = tmp_path / "cfg.json"
                cfg_path.write_text(json.dumps(cfg))
                done = run_worker(broker, cfg_path, keys, inputs=5)
                assert done.returncode == 0, done.stderr[-3000:]
                report = {
                    "type": "credentialInvalid",
                    "account": "acct-dead",
                    "version": dead_version,
                    "state": "needs_reauthorization",
                    "reason": "invalid_grant",
                }
                for _ in range(10):
                    publish_update(broker, report)
                service.wait_for("credentialInvalid report of account acct-dead", "the reports", count=11)
                seen = service.wait_for("keep-alive cycle", "3 keep-alive cycles after the alert", count=5)
                assert len(seen) >= 5
                # a re-authorization returns it to active
                fresh = provider.cfg(account="acct-dead", subject="user-new")["oauth"]
                again = {"keys": {"oauth": fresh}}
                new = requests.put(f"{url}/v1/accounts/acct-dead", json=again, headers=AUTH, timeout=10).json()
                active = requests.get(f"{url}/v1/accounts/acct-dead", headers=AUTH, timeout=10).json()
                assert new["stored"] and active["state"] == "active" and active["version"] == new["version"]
                # the new credential dies too (a worker reports it): one more alert
                for _ in range(3):
                    publish_update(broker, {**report, "version": new["version"], "reason": "invalid_grant: again"})
                wait_until(lambda: len(posts.posts) == 2, "the webhook got the second alert")
            finally:
                code, _out, err = service.stop()
        messages = []
        while True:
            method, properties, body = broker.channel.basic_get(alerts_queue, auto_ack=True)
            if method is None:
                break
            messages.append((properties.headers or {}, broker.cipher.decrypt(body, 1)))
    finally:
        broker.channel.queue_delete(alerts_queue)
    assert code == 0, err[-3000:]
    assert len(messages) == 2 and len(posts.posts) == 2  # exactly one per entry into needs_reauthorization
    first, second = (alert for _, alert in messages)
    assert set(first) == {"account", "state", "reason", "since"} and first["account"] == "acct-dead"
    assert first["state"] == second["state"] == "needs_reauthorization"
    assert "re-authorized" in first["reason"] or "invalid_grant" in first["reason"]
    assert second["reason"] == "invalid_grant: again"
    assert [body for _, _, body in posts.posts] == [first, second]
    assert all(headers.get("protocolVersion") == 1 for headers, _ in messages)
    stored = open_store(keys).get("acct-dead")
    assert stored is not None and stored.settings is not None and SECRET not in json.dumps(stored.settings)
    assert SECRET not in err and cfg["oauth"]["refresh_token"] not in err
