"""``oarlock keys serve --http``: sailor's account route served by the running service, and workers around it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from oarlock.devprovider import DevProvider
from tests.integration.test_keys_service import ServeProcess, crypto_env
from tests.support import TEST_COMPONENTS, provider_cfg, run_cli
from tests.unit.test_keys_http import AUTH, CAPTURE, SAILOR_KEY, SAILOR_USER, sailor_put

API_ENV = {"OARLOCK_API_USERNAME": SAILOR_USER, "OARLOCK_API_KEY": SAILOR_KEY}


def test_http_without_api_credentials_refuses_to_start_with_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {"OARLOCK_API_USERNAME": "", "OARLOCK_API_KEY": ""}
    keys = str(tmp_path / "keys" / "keys.sqlite")
    done = run_cli(["keys", "serve", "--store", keys, "--queue", "q", "--http", "127.0.0.1:0"], env=env)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert "--http needs OARLOCK_API_USERNAME and OARLOCK_API_KEY" in line
    assert not Path(keys).exists()  # refused before anything was opened


def start(tmp_path: Path, broker: Any, *extra: str) -> tuple[ServeProcess, str, str]:
    keys = str(tmp_path / "keys" / "keys.sqlite")
    args = ["--store", keys, "--queue", broker.queues["updateKeys"], "--http", ":0", *extra]
    service = ServeProcess(args, {**crypto_env(broker), **API_ENV})
    return service, service.started()["http"], keys


@pytest.mark.amqp
def test_a_sailor_style_put_to_the_running_service_without_and_with_auth_then_get_returns_it(
    tmp_path: Path, broker: Any
) -> None:
    (captured,) = CAPTURE["account_updates"]
    account = captured["account_id"]
    service, url, keys = start(tmp_path, broker)
    try:
        health = requests.get(f"{url}/healthz", timeout=10)
        assert health.status_code == 200 and health.json() == {"status": "ok", "broker": True, "store": True}
        assert sailor_put(url, auth=False).status_code == 401
        assert requests.get(f"{url}/v1/accounts/{account}", headers=AUTH, timeout=10).status_code == 404
        put = sailor_put(url)
        assert put.status_code == 200 and put.json()["stored"] is True
        got = requests.get(f"{url}/v1/accounts/{account}", headers=AUTH, timeout=10).json()
    finally:
        code, out, err = service.stop()
    assert code == 0 and json.loads(out) == {"stored": 0, "refused": 0, "rejected": 0}
    sent = captured["body"]["keys"]["oauth"]
    assert got["version"] == put.json()["version"] and got["state"] == "active"
    assert {k: got["keys"]["oauth"][k] for k in sent} == sent
    shown = json.loads(run_cli(["keys", "show", account, "--keys", keys, "--reveal"]).stdout)
    assert shown["version"] == got["version"] and shown["oauth"]["access_token"] == sent["access_token"]
    requests_logged = [line for line in service.lines if line["logger"] == "oarlock.keys.http" and "status" in line]
    assert [line["status"] for line in requests_logged] == [401, 404, 200, 200]  # /healthz 200 is at debug level
    assert SAILOR_KEY not in err and sent["access_token"] not in err


def worker(broker: Any, cfg_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    component = str(TEST_COMPONENTS / "amqp")
    return subprocess.run(
        [sys.executable, "-m", "oarlock", "run", "--component", component, "--cfg", str(cfg_path), "--burst"],
        env={**os.environ, **broker.env("api"), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.amqp
def test_a_worker_put_through_the_route_and_a_worker_started_afterwards_with_a_stale_cfg_uses_the_stored_one(
    tmp_path: Path, broker: Any
) -> None:
    with DevProvider(rotation="single-use") as provider:
        cfg = provider_cfg(provider, account="acct-put")
        cfg["oauth"]["expires_at"] = 0  # the first worker refreshes at once; single-use: the cfg's token dies
        cfg_path = tmp_path / "cfg.json"
        cfg_path.write_text(json.dumps(cfg))
        service, url, keys = start(tmp_path, broker)
        try:
            broker.publish_input({"body": {"n": 1}})
            first = worker(
                broker,
                cfg_path,
                ELASTICIO_API_URI=url,
                ELASTICIO_API_USERNAME=SAILOR_USER,
                ELASTICIO_API_KEY=SAILOR_KEY,
                ELASTICIO_UPDATE_KEYS_ROUTES="api",
            )
            assert first.returncode == 0, first.stderr[-3000:]
            (put,) = service.wait_for("PUT /v1/accounts/acct-put: 200", "the first worker's PUT")
            stored = requests.get(f"{url}/v1/accounts/acct-put", headers=AUTH, timeout=10).json()
            # the second worker: the same stale cfg, the service's store
            broker.publish_input({"body": {"n": 2}})
            second = worker(broker, cfg_path, ELASTICIO_KEYS_STORE=keys)
            assert second.returncode == 0, second.stderr[-3000:]
        finally:
            code, _out, _err = service.stop()
        stats = provider.stats()
        data = [received.decrypted()["body"] for received in broker.take("data", 2)]
        assert broker.count("error") == 0
    assert code == 0
    assert data == [{"n": 1, "me": "user-1"}, {"n": 2, "me": "user-1"}]
    assert stored["keys"]["oauth"]["refresh_token"] != cfg["oauth"]["refresh_token"]
    assert stats["refresh_calls"] == 1 and stats["invalid_grant"] == 0  # the second used the stored credential
    assert put["status"] == 200
