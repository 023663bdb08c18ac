"""Issue 3, shown through `oarlock call` as a user runs it: a real dev provider, the reference component.

Nothing here waits for a token to expire. The provider runs on a ManualClock: advancing it by
the ttl expires its tokens at once. `oarlock call` runs on the real clock, so a run that must
refresh before its first request gets a cfg whose ``oauth.expires_at`` is already past; a run
that starts from a stored, still unexpired credential learns of the expiry from the API's 401.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from oarlock.devprovider import DevProvider, ManualClock
from tests.support import REPO, event_lines, jsonl, provider_cfg, run_cli

ME = {"body": {"method": "GET", "path": "/api/me"}}
TTL = 60.0  # on the provider's manual clock: tokens expire only when a test moves it
STARTS_FROM_STORED = "starting from the stored credential"


def let_expire(clock: ManualClock, cfg: dict[str, Any] | None = None) -> None:
    """The access token expires now: at the provider (its clock moves on by the ttl) and, when a cfg is given,
    for the `oarlock call` it is handed to (its ``expires_at`` is in the past, so the run refreshes first)."""
    clock.advance(TTL)
    if cfg is not None:
        cfg["oauth"]["expires_at"] = time.time() - 1


def run_request(
    tmp_path: Path, cfg: dict[str, Any], messages: list[dict[str, Any]], *extra: str, keys: str | None = None
) -> subprocess.CompletedProcess[str]:
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
    clock = ManualClock()
    with DevProvider(ttl=TTL, expires_in=False, rotation="none", clock=clock) as provider:
        cfg = provider_cfg(provider, provider="salesforce")
        assert "expires_in" not in cfg["oauth"] and "instance_url" in cfg["oauth"]
        first = run_request(tmp_path, cfg, [ME], keys=keys)
        let_expire(clock)  # without expires_in the client cannot know: the API's 401 tells it
        second = run_request(tmp_path, cfg, [ME, ME], keys=keys)
        stats = provider.stats()
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-2000:]
    assert stats["refresh_calls"] == 1 and stats["unauthorized"] == 1
    shown = run_cli(["keys", "show", "acct-1", "--keys", keys])
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["oauth"]["instance_url"] == cfg["oauth"]["instance_url"]


def test_a_google_like_refresh_without_refresh_token_keeps_and_reuses_the_original(tmp_path: Path) -> None:
    keys = str(tmp_path / "keys.sqlite")
    clock = ManualClock()
    with DevProvider(ttl=TTL, omit_refresh_token=True, clock=clock) as provider:
        cfg = provider_cfg(provider, provider="google")
        original = cfg["oauth"]["refresh_token"]
        let_expire(clock, cfg)  # the first run refreshes before its request
        first = run_request(tmp_path, cfg, [ME], keys=keys)
        assert first.returncode == 0, first.stderr[-2000:]
        let_expire(clock)  # the stored token expires: the second run refreshes it with the stored refresh token
        second = run_request(tmp_path, cfg, [ME], keys=keys)
        assert second.returncode == 0, second.stderr[-2000:]
        stats = provider.stats()
    assert STARTS_FROM_STORED in second.stderr
    assert stats["refresh_calls"] == 2 and stats["invalid_grant"] == 0 and stats["unauthorized"] == 1
    shown = run_cli(["keys", "show", "acct-1", "--keys", keys, "--reveal"])
    assert json.loads(shown.stdout)["oauth"]["refresh_token"] == original


def test_three_503s_then_success_still_delivers_the_message(tmp_path: Path) -> None:
    clock = ManualClock()
    with DevProvider(ttl=TTL, clock=clock) as provider:
        cfg = provider_cfg(provider)
        provider.configure(fail_first=3)
        let_expire(clock, cfg)
        done = run_request(tmp_path, cfg, [ME])
        stats = provider.stats()
    assert done.returncode == 0, done.stderr[-2000:]
    assert stats["failed"] == 3 and stats["refresh_calls"] == 4
    assert [line["event"] for line in event_lines(done.stdout)] == ["updateKeys", "data"]


def test_a_429_with_retry_after_is_waited_out_and_the_message_succeeds(tmp_path: Path) -> None:
    clock = ManualClock()
    with DevProvider(ttl=TTL, retry_after=2, clock=clock) as provider:
        cfg = provider_cfg(provider)
        provider.configure(throttle_first=1)
        let_expire(clock, cfg)
        done = run_request(tmp_path, cfg, [ME])
        stats = provider.stats()
    assert done.returncode == 0, done.stderr[-2000:]
    assert stats["throttled"] == 1 and stats["refresh_calls"] == 2
    # the first backoff wait is below 1 s: a 2.0 s wait is the Retry-After, honoured before the second token request
    assert "answered 429 for account acct-1), retrying in 2.0 s" in done.stderr, done.stderr[-2000:]


def test_a_revoked_credential_gives_one_reauthorization_error_per_message_and_few_token_calls(tmp_path: Path) -> None:
    clock = ManualClock()
    with DevProvider(ttl=TTL, clock=clock) as provider:
        cfg = provider_cfg(provider, account="acct-revoked")
        provider.revoke()
        let_expire(clock, cfg)
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
    clock = ManualClock()
    with DevProvider(ttl=TTL, rotation="single-use", clock=clock) as provider:
        cfg = provider_cfg(provider)
        let_expire(clock, cfg)  # the first run refreshes before its request; the cfg file then holds a burnt token
        for run in range(3):
            if run:
                let_expire(clock)  # the stored token expires (a 401 says so): it is refreshed with the stored one
            done = run_request(tmp_path, cfg, [ME], keys=keys)
            assert done.returncode == 0, done.stderr[-2000:]
            assert [line["event"] for line in event_lines(done.stdout)] == ["updateKeys", "data"]
            assert (STARTS_FROM_STORED in done.stderr) == (run > 0)
        stats = provider.stats()
    assert stats["invalid_grant"] == 0 and stats["refresh_calls"] == 3 and stats["unauthorized"] == 2
    listed = run_cli(["keys", "list", "--keys", keys])
    assert "acct-1" in listed.stdout


def test_no_planted_secret_reaches_stdout_or_stderr_on_any_error_path(tmp_path: Path) -> None:
    clock = ManualClock()
    with DevProvider(ttl=TTL, rotation="single-use", client_secret="planted-client-secret-77", clock=clock) as provider:
        cfg = provider_cfg(provider, client_secret="planted-client-secret-77")
        secrets = [cfg["oauth"]["access_token"], cfg["oauth"]["refresh_token"], "planted-client-secret-77"]
        outputs = []
        let_expire(clock, cfg)
        provider.configure(fail_first=1)
        outputs.append(run_request(tmp_path, cfg, [ME, {"body": {"path": "/nope"}}], "--log-level", "debug"))
        provider.revoke()
        let_expire(clock)  # the cfg still says expired: the next runs refresh with its used, revoked refresh token
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
