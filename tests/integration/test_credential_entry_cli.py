"""Where a credential enters oarlock and where it is kept, through the CLI as a user runs it.

`oarlock verify` and `oarlock service verifyCredentials` start from the keys store and store what
they refresh, like `oarlock call`; a re-authorized credential from the cfg is never shadowed by the
dead stored one; `oarlock keys put` / `delete` for operators; `dev-provider --mint-to` writes
``obtained_at``. The dev provider runs on a ManualClock (tokens expire when a test moves it); the
CLI runs on the real clock, so a cfg that must refresh first gets an ``expires_at`` in the past.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from oarlock.devprovider import DevProvider, ManualClock
from oarlock.keys.sqlite import SqliteKeyStore
from tests.support import REPO, event_lines, jsonl, provider_cfg, run_cli

ME = {"body": {"method": "GET", "path": "/api/me"}}
TTL = 60.0


def write_json(path: Path, value: Any) -> str:
    path.write_text(json.dumps(value))
    return str(path)


def expired(cfg: dict[str, Any]) -> dict[str, Any]:
    """The cfg as the CLI sees it once its access token has expired: the run refreshes before its request."""
    cfg = json.loads(json.dumps(cfg))
    cfg["oauth"]["expires_at"] = time.time() - 1
    return cfg


def call(tmp_path: Path, cfg: dict[str, Any], keys: str) -> subprocess.CompletedProcess[str]:
    cfg_path = write_json(tmp_path / "cfg.json", cfg)
    return run_cli(
        ["call", "request", "--component", str(REPO), "--cfg", cfg_path, "--keys", keys],
        stdin=jsonl([ME]),
        cwd=tmp_path,
    )


def verify(tmp_path: Path, cfg: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
    cfg_path = write_json(tmp_path / "verify-cfg.json", cfg)
    return run_cli(["verify", "--component", str(REPO), "--cfg", cfg_path, *extra], cwd=tmp_path)


def stored(keys: str, account: str = "acct-1") -> dict[str, Any]:
    shown = run_cli(["keys", "show", account, "--keys", keys, "--reveal"])
    assert shown.returncode == 0, shown.stderr
    result: dict[str, Any] = json.loads(shown.stdout)
    return result


def errors_of(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [line for line in event_lines(done.stdout) if line["event"] == "error"]


# -- 2. verify and service use the keys store -------------------------------------------------------------
def test_verify_stores_what_it_refreshes_so_the_next_call_does_not_get_invalid_grant(tmp_path: Path) -> None:
    keys, clock = str(tmp_path / ".oarlock" / "keys.sqlite"), ManualClock()  # the default of both commands
    with DevProvider(ttl=TTL, rotation="single-use", clock=clock) as provider:
        cfg = provider_cfg(provider)
        clock.advance(TTL)
        checked = verify(tmp_path, expired(cfg))
        assert checked.returncode == 0 and json.loads(checked.stdout) == {"verified": True}, checked.stderr[-2000:]
        done = call(tmp_path, expired(cfg), keys)  # the cfg file still holds the refresh token verify burnt
        stats = provider.stats()
    assert done.returncode == 0 and errors_of(done) == [], done.stdout[-2000:]
    assert stats["invalid_grant"] == 0 and stats["refresh_calls"] == 1, "call started from what verify stored"


def test_verify_after_call_rotated_the_token_starts_from_the_stored_credential_and_is_verified(tmp_path: Path) -> None:
    keys, clock = str(tmp_path / ".oarlock" / "keys.sqlite"), ManualClock()
    with DevProvider(ttl=TTL, rotation="single-use", clock=clock) as provider:
        cfg = provider_cfg(provider)
        clock.advance(TTL)
        assert call(tmp_path, expired(cfg), keys).returncode == 0
        checked = verify(tmp_path, expired(cfg))  # the default keys store, like call's
        explicit = verify(tmp_path, expired(cfg), "--keys", keys)
        stats = provider.stats()
    assert checked.returncode == 0 and json.loads(checked.stdout) == {"verified": True}, checked.stdout
    assert explicit.returncode == 0 and json.loads(explicit.stdout) == {"verified": True}
    assert "starting from the stored credential" in checked.stderr
    assert stats["invalid_grant"] == 0


def test_verify_with_no_keys_neither_reads_nor_writes_the_store(tmp_path: Path) -> None:
    keys, clock = tmp_path / ".oarlock" / "keys.sqlite", ManualClock()
    with DevProvider(ttl=TTL, rotation="single-use", clock=clock) as provider:
        cfg = provider_cfg(provider)
        clock.advance(TTL)
        checked = verify(tmp_path, expired(cfg), "--no-keys")
    assert checked.returncode == 0 and json.loads(checked.stdout) == {"verified": True}
    assert not keys.exists()


class _Collector(BaseHTTPRequestHandler):
    """The platform's result endpoint of service mode: keeps what is POSTed."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def result_url() -> Iterator[str]:
    _Collector.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/result"
    server.shutdown()
    server.server_close()


def test_service_verify_credentials_uses_elasticio_keys_store_and_posts_no_token(
    tmp_path: Path, result_url: str
) -> None:
    keys, clock = str(tmp_path / "fleet-keys.sqlite"), ManualClock()
    with DevProvider(ttl=TTL, rotation="single-use", clock=clock) as provider:
        cfg = provider_cfg(provider)
        clock.advance(TTL)
        env = {"ELASTICIO_CFG": json.dumps(expired(cfg)), "ELASTICIO_KEYS_STORE": keys}
        done = run_cli(
            ["service", "verifyCredentials", "--component", str(REPO)],
            cwd=tmp_path,
            env={**env, "ELASTICIO_POST_RESULT_URL": result_url},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        again = run_cli(["service", "verifyCredentials", "--component", str(REPO)], cwd=tmp_path, env=env)
        stats = provider.stats()
    (posted,) = _Collector.bodies
    result = json.loads(posted)
    assert result["status"] == "success" and result["data"]["verified"] is True
    kept = stored(keys)["oauth"]
    secrets = [cfg["oauth"]["access_token"], cfg["oauth"]["refresh_token"], kept["access_token"], kept["refresh_token"]]
    for secret in secrets:
        assert secret not in posted.decode() and secret not in done.stdout + done.stderr
        assert secret not in again.stdout + again.stderr
    assert json.loads(again.stdout)["data"]["verified"] is True, "the second run started from the stored credential"
    assert stats["invalid_grant"] == 0 and stats["refresh_calls"] == 1


# -- 3. re-authorization is never shadowed ---------------------------------------------------------------
def dead_stored_credential(tmp_path: Path, provider: DevProvider, clock: ManualClock, keys: str) -> dict[str, Any]:
    """A run rotates the cfg's token and stores it; then the provider revokes it: the stored lineage is dead."""
    cfg = provider_cfg(provider)
    clock.advance(TTL)
    first = call(tmp_path, expired(cfg), keys)
    assert first.returncode == 0, first.stderr[-2000:]
    provider.revoke()
    clock.advance(TTL)
    return cfg


def test_a_re_authorized_cfg_credential_without_obtained_at_wins_over_the_dead_stored_one(tmp_path: Path) -> None:
    keys, clock = str(tmp_path / "keys.sqlite"), ManualClock()
    with DevProvider(ttl=TTL, rotation="single-use", clock=clock) as provider:
        dead_stored_credential(tmp_path, provider, clock, keys)
        dead_version = stored(keys)["version"]
        reauthorized = provider_cfg(provider)  # a fresh authorization: a raw token set, no obtained_at
        assert "obtained_at" not in reauthorized["oauth"]
        done = call(tmp_path, reauthorized, keys)
        again = call(tmp_path, reauthorized, keys)
        stats = provider.stats()
    assert done.returncode == 0 and errors_of(done) == [], done.stdout[-2000:]
    assert again.returncode == 0 and errors_of(again) == []
    kept = stored(keys)
    assert kept["version"] > dead_version and kept["oauth"]["refresh_token"] == reauthorized["oauth"]["refresh_token"]
    assert "obtained_at" in kept["oauth"]
    assert stats["invalid_grant"] == 0


def test_keys_put_stores_a_token_set_as_the_newest_version_and_the_next_call_uses_it(tmp_path: Path) -> None:
    keys, clock = str(tmp_path / "keys.sqlite"), ManualClock()
    with DevProvider(ttl=TTL, rotation="single-use", clock=clock) as provider:
        stale_cfg = dead_stored_credential(tmp_path, provider, clock, keys)
        dead_version = stored(keys)["version"]
        token = provider.mint("user-1")  # what an operator got from a fresh authorization
        put = run_cli(["keys", "put", "acct-1", "--oauth", write_json(tmp_path / "token.json", token), "--keys", keys])
        done = call(tmp_path, expired(stale_cfg), keys)  # the cfg file still holds the first, dead lineage
        stats = provider.stats()
    assert put.returncode == 0, put.stderr
    (line,) = put.stdout.splitlines()
    shown = json.loads(line)
    assert shown["account"] == "acct-1" and shown["stored"] is True and shown["version"] > dead_version
    assert shown["oauth"]["access_token"] == "***" and token["refresh_token"] not in put.stdout + put.stderr
    assert "obtained_at" in stored(keys)["oauth"]
    assert done.returncode == 0 and errors_of(done) == [], done.stdout[-2000:]
    assert stats["invalid_grant"] == 0 and stats["refresh_calls"] == 1, "the put token set was used as it is"


@pytest.mark.parametrize("content", ["{not json", json.dumps({"scope": "read"}), json.dumps([1, 2])])
def test_keys_put_with_a_file_that_holds_no_token_set_exits_2_and_stores_nothing(tmp_path: Path, content: str) -> None:
    keys = str(tmp_path / "keys.sqlite")
    (tmp_path / "bad.json").write_text(content)
    done = run_cli(["keys", "put", "acct-1", "--oauth", str(tmp_path / "bad.json"), "--keys", keys])
    assert done.returncode == 2 and done.stderr.startswith("oarlock: ") and done.stdout == ""
    assert run_cli(["keys", "show", "acct-1", "--keys", keys]).returncode == 1


@pytest.mark.skipif(not hasattr(SqliteKeyStore, "delete"), reason="the keys stores have no delete(account) yet")
def test_keys_delete_removes_the_account_and_exits_1_when_there_is_none(tmp_path: Path) -> None:
    keys = str(tmp_path / "keys.sqlite")
    token = {"access_token": "at-delete-me-1", "refresh_token": "rt-delete-me-1"}
    assert (
        run_cli(["keys", "put", "acct-1", "--oauth", write_json(tmp_path / "t.json", token), "--keys", keys]).returncode
        == 0
    )
    deleted = run_cli(["keys", "delete", "acct-1", "--keys", keys])
    assert deleted.returncode == 0 and json.loads(deleted.stdout) == {"account": "acct-1", "deleted": True}
    assert run_cli(["keys", "show", "acct-1", "--keys", keys]).returncode == 1
    missing = run_cli(["keys", "delete", "acct-1", "--keys", keys])
    assert missing.returncode == 1 and json.loads(missing.stdout) == {"account": "acct-1", "deleted": False}


def test_dev_provider_mint_to_writes_obtained_at(tmp_path: Path) -> None:
    target = tmp_path / "cfg.json"
    before = time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "oarlock", "dev-provider", "--port", "0", "--mint-to", str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once the cfg is written
        assert json.loads(line)["url"].startswith("http://127.0.0.1:")
        oauth = json.loads(target.read_text())["oauth"]
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert before <= oauth["obtained_at"] <= time.time()
