"""Issue 3, shown through `oarlock call` as a user runs it: a real dev provider, the reference component."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from oarlock.devprovider import DevProvider
from tests.support import REPO, event_lines, jsonl, provider_cfg, run_cli

ME = {"body": {"method": "GET", "path": "/api/me"}}


def run_request(
    tmp_path: Path, cfg: dict[str, Any], messages: list[dict[str, Any]], *extra: str, keys: str | None = None
):  # type: ignore[no-untyped-def]
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    keys_args = ["--keys", keys] if keys else ["--keys", str(tmp_path / "keys.sqlite")]
    return run_cli(
        ["call", "request", "--component", str(REPO), "--cfg", str(cfg_path), *keys_args, *extra],
        stdin=jsonl(messages),
        cwd=tmp_path,
        timeout=240,
    )


def by_event(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["event"] == name]


def test_200_concurrent_messages_with_single_use_rotation_refresh_once_per_expiry(tmp_path: Path) -> None:
    with DevProvider(ttl=1, rotation="single-use", latency_ms=120) as provider:
        cfg = provider_cfg(provider)
        done = run_request(tmp_path, cfg, [ME] * 200, "--concurrency", "16")
        stats = provider.stats()
    lines = event_lines(done.stdout)
    assert done.returncode == 0, done.stderr[-2000:]
    assert by_event(lines, "error") == []
    assert len(by_event(lines, "data")) == 200
    assert stats["invalid_grant"] == 0 and stats["unauthorized"] == 0
    updates = [line["data"] for line in by_event(lines, "updateKeys")]
    assert stats["refresh_calls"] >= 2, "the run must cross several expiries"
    assert stats["refresh_calls"] == len(updates), "one token call per refresh, no refresh without updateKeys"
    versions = [u["version"] for u in updates]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    expiries = [u["oauth"]["expires_at"] for u in updates]
    assert len(set(expiries)) == len(expiries), "never two refreshes for the same expiry"


def test_on_401_mode_pays_one_token_call_per_expiry_not_one_per_concurrent_message(tmp_path: Path) -> None:
    with DevProvider(ttl=1, rotation="single-use", latency_ms=120) as provider:
        cfg = provider_cfg(provider, refresh="on_401")
        done = run_request(tmp_path, cfg, [ME] * 120, "--concurrency", "16")
        stats = provider.stats()
    lines = event_lines(done.stdout)
    assert done.returncode == 0, done.stderr[-2000:]
    assert by_event(lines, "error") == [] and stats["invalid_grant"] == 0
    refreshes = stats["refresh_calls"]
    assert refreshes >= 1 and refreshes == len(by_event(lines, "updateKeys"))
    # every refresh was triggered by a 401; requests already in flight with the old token may 401 too,
    # but they never cause a second token call
    assert refreshes <= stats["unauthorized"] <= refreshes * 16


def test_a_salesforce_like_credential_without_expires_in_works_and_keeps_instance_url(tmp_path: Path) -> None:
    keys = str(tmp_path / "keys.sqlite")
    with DevProvider(ttl=1, expires_in=False, rotation="none") as provider:
        cfg = provider_cfg(provider, provider="salesforce")
        assert "expires_in" not in cfg["oauth"] and "instance_url" in cfg["oauth"]
        first = run_request(tmp_path, cfg, [ME], keys=keys)
        time.sleep(1.3)
        second = run_request(tmp_path, cfg, [ME, ME], keys=keys)
        stats = provider.stats()
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-2000:]
    assert stats["refresh_calls"] == 1 and stats["unauthorized"] == 1
    shown = run_cli(["keys", "show", "acct-1", "--keys", keys])
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["oauth"]["instance_url"] == cfg["oauth"]["instance_url"]


def test_a_google_like_refresh_without_refresh_token_keeps_and_reuses_the_original(tmp_path: Path) -> None:
    keys = str(tmp_path / "keys.sqlite")
    with DevProvider(ttl=1, omit_refresh_token=True) as provider:
        cfg = provider_cfg(provider, provider="google")
        original = cfg["oauth"]["refresh_token"]
        for _ in range(2):
            time.sleep(1.1)
            done = run_request(tmp_path, cfg, [ME], keys=keys)
            assert done.returncode == 0, done.stderr[-2000:]
        stats = provider.stats()
    assert stats["refresh_calls"] == 2 and stats["invalid_grant"] == 0
    shown = run_cli(["keys", "show", "acct-1", "--keys", keys, "--reveal"])
    assert json.loads(shown.stdout)["oauth"]["refresh_token"] == original


def test_three_503s_then_success_still_delivers_the_message(tmp_path: Path) -> None:
    with DevProvider(ttl=1) as provider:
        cfg = provider_cfg(provider)
        provider.configure(fail_first=3)
        time.sleep(1.1)
        done = run_request(tmp_path, cfg, [ME])
        stats = provider.stats()
    assert done.returncode == 0, done.stderr[-2000:]
    assert stats["failed"] == 3 and stats["refresh_calls"] == 4
    assert [line["event"] for line in event_lines(done.stdout)] == ["updateKeys", "data"]


def test_a_429_with_retry_after_is_waited_out_and_the_message_succeeds(tmp_path: Path) -> None:
    with DevProvider(ttl=1, retry_after=2) as provider:
        cfg = provider_cfg(provider)
        provider.configure(throttle_first=1)
        time.sleep(1.1)
        started = time.monotonic()
        done = run_request(tmp_path, cfg, [ME])
        waited = time.monotonic() - started
        stats = provider.stats()
    assert done.returncode == 0, done.stderr[-2000:]
    assert stats["throttled"] == 1
    assert waited >= 2.0, "Retry-After: 2 must be honoured before the second token request"


def test_a_revoked_credential_gives_one_reauthorization_error_per_message_and_few_token_calls(tmp_path: Path) -> None:
    with DevProvider(ttl=1) as provider:
        cfg = provider_cfg(provider, account="acct-revoked")
        provider.revoke()
        time.sleep(1.1)
        done = run_request(tmp_path, cfg, [ME] * 20, "--concurrency", "4")
        stats = provider.stats()
    assert done.returncode == 1
    lines = event_lines(done.stdout)
    errors = by_event(lines, "error")
    assert len(errors) == 20 and not by_event(lines, "data")
    for error in errors:
        assert error["data"]["name"] == "CredentialNeedsReauthorization"
        assert "acct-revoked" in error["data"]["message"] and "re-authorized" in error["data"]["message"]
    assert stats["refresh_calls"] <= 2, "the cooldown stops the runtime from hammering the provider"


def test_a_second_run_starts_from_the_stored_rotated_token_not_the_stale_cfg_file(tmp_path: Path) -> None:
    keys = str(tmp_path / "keys.sqlite")
    with DevProvider(ttl=1, rotation="single-use") as provider:
        cfg = provider_cfg(provider)
        for _ in range(3):
            time.sleep(1.1)
            done = run_request(tmp_path, cfg, [ME], keys=keys)
            assert done.returncode == 0, done.stderr[-2000:]
            assert [line["event"] for line in event_lines(done.stdout)] == ["updateKeys", "data"]
        stats = provider.stats()
    assert stats["invalid_grant"] == 0 and stats["refresh_calls"] == 3
    listed = run_cli(["keys", "list", "--keys", keys])
    assert "acct-1" in listed.stdout


def test_no_planted_secret_reaches_stdout_or_stderr_on_any_error_path(tmp_path: Path) -> None:
    with DevProvider(ttl=1, rotation="single-use", client_secret="planted-client-secret-77") as provider:
        cfg = provider_cfg(provider, client_secret="planted-client-secret-77")
        secrets = [cfg["oauth"]["access_token"], cfg["oauth"]["refresh_token"], "planted-client-secret-77"]
        outputs = []
        time.sleep(1.1)
        provider.configure(fail_first=1)
        outputs.append(run_request(tmp_path, cfg, [ME, {"body": {"path": "/nope"}}], "--log-level", "debug"))
        provider.revoke()
        time.sleep(1.1)
        outputs.append(run_request(tmp_path, cfg, [ME], "--log-level", "debug", "--no-keys"))
        bad = {**cfg, "oauth2": {**cfg["oauth2"], "client_secret": "wrong-planted-secret-88"}}
        outputs.append(run_request(tmp_path, bad, [ME], "--log-level", "debug", "--no-keys"))
        secrets.append("wrong-planted-secret-88")
        keys_file = str(tmp_path / "keys.sqlite")
        keys_dump = run_cli(["keys", "show", "acct-1", "--keys", keys_file])
        revealed = json.loads(run_cli(["keys", "show", "acct-1", "--keys", keys_file, "--reveal"]).stdout)["oauth"]
        secrets += [revealed["access_token"], revealed["refresh_token"]]  # the rotated tokens oarlock saw
    assert any(done.returncode == 1 for done in outputs)
    for done in [*outputs, keys_dump]:
        for secret in secrets:
            if secret and secret != "***":
                assert secret not in done.stdout and secret not in done.stderr


def test_two_concurrent_oarlock_call_processes_sharing_a_keys_store_never_burn_a_single_use_token(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    keys = str(tmp_path / "keys.sqlite")
    with DevProvider(ttl=1, rotation="single-use", latency_ms=60) as provider:
        cfg = provider_cfg(provider)
        cfg_path = tmp_path / "cfg.json"
        cfg_path.write_text(json.dumps(cfg))
        command = [
            sys.executable,
            "-m",
            "oarlock",
            "call",
            "request",
            "--component",
            str(REPO),
            "--cfg",
            str(cfg_path),
            "--keys",
            keys,
            "--concurrency",
            "4",
        ]
        runs = [
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        results = [run.communicate(jsonl([ME] * 80), timeout=240) for run in runs]
        stats = provider.stats()
    for run, (stdout, stderr) in zip(runs, results, strict=True):
        assert run.returncode == 0, stderr[-2000:]
        assert not [line for line in event_lines(stdout) if line["event"] == "error"]
    assert stats["invalid_grant"] == 0 and stats["refresh_calls"] >= 2
