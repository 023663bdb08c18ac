"""The dev provider is a real OAuth2 server: grants, client auth, rotation, failure injection, stats, CLI."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import requests

from oarlock.devprovider import DevProvider, ManualClock

CLIENT = {"client_id": "oarlock-dev", "client_secret": "oarlock-dev-secret"}


def refresh(provider: DevProvider, token: str, **extra: Any) -> requests.Response:
    return requests.post(
        provider.token_url, data={"grant_type": "refresh_token", "refresh_token": token, **CLIENT, **extra}, timeout=10
    )


def me(provider: DevProvider, token: str) -> requests.Response:
    return requests.get(f"{provider.url}/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_refresh_with_client_secret_post_and_basic(dev_provider: DevProvider) -> None:
    token = dev_provider.mint()
    assert refresh(dev_provider, token["refresh_token"]).json()["refresh_token"] == token["refresh_token"]
    basic = requests.post(
        dev_provider.token_url,
        data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
        auth=("oarlock-dev", "oarlock-dev-secret"),
        timeout=10,
    )
    assert basic.status_code == 200 and me(dev_provider, basic.json()["access_token"]).status_code == 200


def test_a_wrong_client_is_invalid_client(dev_provider: DevProvider) -> None:
    answer = requests.post(
        dev_provider.token_url,
        data={"grant_type": "client_credentials", "client_id": "x", "client_secret": "y"},
        timeout=10,
    )
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
    assert dev_provider.stats()["invalid_client"] == 1


def test_client_credentials_and_authorization_code_grants(dev_provider: DevProvider) -> None:
    cc = requests.post(dev_provider.token_url, data={"grant_type": "client_credentials", **CLIENT}, timeout=10)
    assert cc.status_code == 200 and "refresh_token" not in cc.json()
    redirect = requests.get(
        f"{dev_provider.url}/authorize",
        params={
            "response_type": "code",
            "client_id": "oarlock-dev",
            "redirect_uri": "http://127.0.0.1:1/cb",
            "state": "s1",
        },
        allow_redirects=False,
        timeout=10,
    )
    assert redirect.status_code == 302
    location = redirect.headers["Location"]
    assert "state=s1" in location
    code = location.split("code=")[1].split("&")[0]
    granted = requests.post(
        dev_provider.token_url,
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": "http://127.0.0.1:1/cb", **CLIENT},
        timeout=10,
    )
    assert granted.status_code == 200 and granted.json()["refresh_token"].startswith("rt-")
    again = requests.post(
        dev_provider.token_url,
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": "http://127.0.0.1:1/cb", **CLIENT},
        timeout=10,
    )
    assert again.json()["error"] == "invalid_grant"


def test_an_unsupported_grant_type_is_rejected(dev_provider: DevProvider) -> None:
    answer = requests.post(dev_provider.token_url, data={"grant_type": "password", **CLIENT}, timeout=10)
    assert answer.status_code == 400 and answer.json()["error"] == "unsupported_grant_type"


def test_single_use_rotation_kills_a_used_refresh_token() -> None:
    with DevProvider(rotation="single-use") as provider:
        token = provider.mint()
        first = refresh(provider, token["refresh_token"])
        assert first.json()["refresh_token"] != token["refresh_token"]
        reused = refresh(provider, token["refresh_token"])
        assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
        assert refresh(provider, first.json()["refresh_token"]).status_code == 200
        assert provider.stats()["invalid_grant"] == 1


def test_rotate_issues_a_new_refresh_token_and_keeps_the_old_one_valid() -> None:
    with DevProvider(rotation="rotate") as provider:
        token = provider.mint()
        assert refresh(provider, token["refresh_token"]).json()["refresh_token"] != token["refresh_token"]
        assert refresh(provider, token["refresh_token"]).status_code == 200


def test_an_expired_access_token_gets_401_with_a_bearer_challenge() -> None:
    clock = ManualClock()
    with DevProvider(ttl=60, clock=clock) as provider:
        token = provider.mint()
        assert me(provider, token["access_token"]).status_code == 200
        clock.advance(59.5)
        assert me(provider, token["access_token"]).status_code == 200, "still valid just before its expiry"
        clock.advance(0.5)
        answer = me(provider, token["access_token"])
    assert answer.status_code == 401 and answer.json() == {
        "error": "invalid_token",
        "error_description": "access token expired",
    }
    assert answer.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


def test_a_missing_or_unknown_token_is_401_with_the_challenge_and_counted(dev_provider: DevProvider) -> None:
    missing = requests.get(f"{dev_provider.url}/api/me", timeout=10)
    unknown = me(dev_provider, "at-never-issued")
    for answer in (missing, unknown):
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_token"
        assert answer.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token", error_description="')
        assert answer.headers["Content-Type"] == "application/json"
    assert dev_provider.stats()["unauthorized"] == 2 and dev_provider.stats()["api_calls"] == 2


def test_me_names_the_subject_the_client_and_the_scope(dev_provider: DevProvider) -> None:
    token = dev_provider.mint("alice", scope="a b")
    assert me(dev_provider, token["access_token"]).json() == {
        "subject": "alice",
        "client_id": "oarlock-dev",
        "scope": "a b",
    }
    assert token["access_token"].startswith("at-") and token["refresh_token"].startswith("rt-")


def test_the_mint_endpoint_issues_live_tokens_like_the_python_api(dev_provider: DevProvider) -> None:
    minted = requests.post(f"{dev_provider.url}/__mint", json={"subject": "carol"}, timeout=10).json()
    assert set(minted) >= {"access_token", "refresh_token", "token_type", "expires_in"}
    assert me(dev_provider, minted["access_token"]).json()["subject"] == "carol"
    assert refresh(dev_provider, minted["refresh_token"]).status_code == 200


def test_salesforce_mode_sends_no_expires_in_but_its_tokens_still_expire() -> None:
    clock = ManualClock()
    with DevProvider(expires_in=False, ttl=60, clock=clock) as provider:
        token = provider.mint()
        refreshed = refresh(provider, token["refresh_token"]).json()
        assert me(provider, token["access_token"]).status_code == 200
        clock.advance(60)
        expired = me(provider, token["access_token"])
    for answer in (token, refreshed):
        assert "expires_in" not in answer and answer["instance_url"] == provider.url
        assert answer["issued_at"].isdigit() and abs(int(answer["issued_at"]) / 1000 - time.time()) < 60
        assert answer["id"].startswith(provider.url) and answer["signature"]
    assert expired.status_code == 401 and expired.json()["error_description"] == "access token expired"


def test_the_injected_clock_decides_expiry_issued_at_mint_and_the_cfg_expires_at() -> None:
    clock = ManualClock(1_800_000_000.0)
    with DevProvider(ttl=120, clock=clock) as provider:
        cfg = provider.cfg()
        minted = requests.post(f"{provider.url}/__mint", json={"subject": "dave"}, timeout=10).json()
        assert minted["expires_in"] == 120 and cfg["oauth"]["expires_at"] == 1_800_000_120.0
        clock.advance(119)
        assert me(provider, minted["access_token"]).status_code == 200
        assert me(provider, cfg["oauth"]["access_token"]).status_code == 200
        clock.advance(1)
        assert me(provider, minted["access_token"]).json()["error_description"] == "access token expired"
        assert me(provider, cfg["oauth"]["access_token"]).status_code == 401
        fresh = refresh(provider, minted["refresh_token"]).json()
        assert me(provider, fresh["access_token"]).status_code == 200, "a refresh issues a token valid from now"
        headers = {"Authorization": f"Bearer {fresh['access_token']}"}
        created = requests.post(f"{provider.url}/api/items", json={"name": "n"}, headers=headers, timeout=10).json()
        assert created["created"] == 1_800_000_120
    with DevProvider(expires_in=False, clock=clock) as salesforce:
        assert salesforce.mint()["issued_at"] == str(1_800_000_120 * 1000)


def test_a_manual_clock_starts_now_moves_only_forward_and_is_thread_safe() -> None:
    before = time.time()
    clock = ManualClock()
    assert before <= clock() <= time.time()
    assert ManualClock(5)() == 5.0 and ManualClock(5).advance(2.5) == 7.5
    for wrong in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="only moves forward"):
            clock.advance(wrong)
    start = clock()
    threads = [threading.Thread(target=lambda: [clock.advance(0.5) for _ in range(1000)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clock() == start + 8 * 1000 * 0.5


def test_google_mode_omits_the_refresh_token_and_the_old_one_stays_valid() -> None:
    with DevProvider(omit_refresh_token=True, rotation="single-use") as provider:
        token = provider.mint()
        for _ in range(2):
            answer = refresh(provider, token["refresh_token"])
            assert answer.status_code == 200 and "refresh_token" not in answer.json()


def test_expires_in_can_be_sent_as_a_string() -> None:
    with DevProvider(expires_in_as_string=True, ttl=120) as provider:
        assert provider.mint()["expires_in"] == "120"


def test_fail_first_answers_503_with_an_html_page_then_recovers() -> None:
    with DevProvider(fail_first=2) as provider:
        token = provider.mint()
        answers = [refresh(provider, token["refresh_token"]) for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].headers["Content-Type"] == "text/html"


def test_throttle_first_answers_429_with_retry_after_then_recovers() -> None:
    with DevProvider(throttle_first=2, retry_after=3) as provider:
        token = provider.mint()
        answers = [refresh(provider, token["refresh_token"]) for _ in range(3)]
        stats = provider.stats()
    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["Retry-After"] == "3" and answers[0].json()["error"]
    assert stats["throttled"] == 2 and stats["token_calls"] == 3 and stats["refresh_calls"] == 3


def test_fail_first_comes_before_throttle_first() -> None:
    with DevProvider(fail_first=1, throttle_first=1) as provider:
        token = provider.mint()
        codes = [refresh(provider, token["refresh_token"]).status_code for _ in range(3)]
        stats = provider.stats()
    assert codes == [503, 429, 200] and stats["failed"] == 1 and stats["throttled"] == 1


def test_rate_limit_answers_429_beyond_the_rate_with_whole_seconds_in_retry_after() -> None:
    with DevProvider(rate_limit=2) as provider:
        token = provider.mint()
        answers = [refresh(provider, token["refresh_token"]) for _ in range(6)]
        stats = provider.stats()
    throttled = [a for a in answers if a.status_code == 429]
    assert answers[0].status_code == 200 and throttled  # a burst of 6 cannot all fit in a rate of 2/s
    assert all(int(a.headers["Retry-After"]) >= 1 for a in throttled)
    assert stats["throttled"] == len(throttled) and stats["token_calls"] == 6


def test_a_rate_below_one_per_second_still_lets_one_request_through() -> None:
    with DevProvider() as provider:
        provider.configure(rate_limit=0.25)
        token = provider.mint()
        first, second = (refresh(provider, token["refresh_token"]) for _ in range(2))
    assert first.status_code == 200 and second.status_code == 429
    assert int(second.headers["Retry-After"]) >= 2  # the next slot is about 4 s away


def test_rfc7009_revoke_kills_one_refresh_token_for_an_authenticated_client() -> None:
    with DevProvider() as provider:
        first, second = provider.mint(), provider.mint()
        refused = requests.post(f"{provider.url}/revoke", data={"token": first["refresh_token"]}, timeout=10)
        assert refused.status_code == 401 and refresh(provider, first["refresh_token"]).status_code == 200
        revoked = requests.post(f"{provider.url}/revoke", data={"token": first["refresh_token"], **CLIENT}, timeout=10)
        assert revoked.status_code == 200
        assert refresh(provider, first["refresh_token"]).json()["error"] == "invalid_grant"
        assert refresh(provider, second["refresh_token"]).status_code == 200


def test_revoke_by_subject_and_for_everyone() -> None:
    with DevProvider() as provider:
        alice, bob = provider.mint("alice"), provider.mint("bob")
        assert provider.revoke("alice") == 1
        assert refresh(provider, alice["refresh_token"]).json()["error"] == "invalid_grant"
        assert refresh(provider, bob["refresh_token"]).status_code == 200
        assert requests.post(f"{provider.url}/__revoke", json={}, timeout=10).json() == {"revoked": 1}
        assert refresh(provider, bob["refresh_token"]).status_code == 400


def test_items_can_be_listed_since_an_id_and_created(dev_provider: DevProvider) -> None:
    token = dev_provider.mint()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    listed = requests.get(f"{dev_provider.url}/api/items", params={"since": 3}, headers=headers, timeout=10).json()
    assert [i["id"] for i in listed["items"]] == [4, 5]
    created = requests.post(f"{dev_provider.url}/api/items", json={"name": "n"}, headers=headers, timeout=10)
    assert created.status_code == 201 and created.json()["id"] == 6


def test_counters_are_exact_under_32_concurrent_refreshing_threads() -> None:
    with DevProvider(rotation="single-use") as provider:
        tokens = [provider.mint(f"user-{i}")["refresh_token"] for i in range(32)]
        barrier = threading.Barrier(32)
        codes: list[int] = []
        subjects: list[str] = []

        def work(token: str) -> None:
            barrier.wait()
            fresh = refresh(provider, token)
            codes.append(fresh.status_code)
            codes.append(refresh(provider, token).status_code)
            subjects.append(me(provider, fresh.json()["access_token"]).json()["subject"])
            codes.append(me(provider, "at-bogus").status_code)

        threads = [threading.Thread(target=work, args=(t,)) for t in tokens]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = provider.stats()
    assert sorted(codes) == [200] * 32 + [400] * 32 + [401] * 32
    assert sorted(subjects) == sorted(f"user-{i}" for i in range(32))
    assert stats["token_calls"] == 64 and stats["token_calls_by_grant"] == {"refresh_token": 64}
    assert stats["refresh_calls"] == 64 and stats["invalid_grant"] == 32 and stats["active_refresh_tokens"] == 32
    assert stats["api_calls"] == 64 and stats["unauthorized"] == 32
    assert 1 <= stats["max_concurrent_token_calls"] <= 32


def test_token_latency_makes_overlapping_token_calls_visible_in_the_stats() -> None:
    with DevProvider(token_latency_ms=300) as provider:
        token = provider.mint()["refresh_token"]
        barrier = threading.Barrier(4)

        def work() -> None:
            barrier.wait()
            refresh(provider, token)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = provider.stats()
        provider.reset_stats()
        after_reset = provider.stats()
    assert stats["token_calls"] == 4 and stats["max_concurrent_token_calls"] >= 2
    assert after_reset["token_calls"] == 0 and after_reset["max_concurrent_token_calls"] == 0


def test_extra_fields_are_merged_into_every_token_response() -> None:
    extra = {"scope": "a b", "ext_expires_in": 7200, "id_token": "header.payload.sig"}
    with DevProvider(extra_fields=extra) as provider:
        minted = provider.mint()
        refreshed = refresh(provider, minted["refresh_token"]).json()
        provider.configure(extra_fields={"foo": 1})
        later = refresh(provider, minted["refresh_token"]).json()
    assert all(minted[k] == v and refreshed[k] == v for k, v in extra.items())
    assert later["foo"] == 1 and "id_token" not in later


def test_configure_rejects_an_unknown_option(dev_provider: DevProvider) -> None:
    with pytest.raises(TypeError, match="no_such_option"):
        dev_provider.configure(no_such_option=1)


def test_a_missing_grant_type_or_refresh_token_is_invalid_request(dev_provider: DevProvider) -> None:
    no_grant = requests.post(dev_provider.token_url, data=CLIENT, timeout=10)
    no_token = requests.post(dev_provider.token_url, data={"grant_type": "refresh_token", **CLIENT}, timeout=10)
    assert no_grant.status_code == 400 and no_grant.json()["error"] == "invalid_request"
    assert no_token.status_code == 400 and no_token.json()["error"] == "invalid_request"


def test_a_body_sent_to_an_unknown_path_does_not_break_the_keep_alive_connection(dev_provider: DevProvider) -> None:
    host, port = dev_provider.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("POST", "/nope", body=b'{"a": 1}', headers={"Content-Type": "application/json"})
        first = connection.getresponse()
        assert first.status == 404 and json.loads(first.read())["error"] == "not_found"
        connection.request("GET", "/__stats")
        second = connection.getresponse()
        assert second.status == 200 and "token_calls" in json.loads(second.read())
    finally:
        connection.close()


def test_a_stopped_provider_also_drops_its_keep_alive_connections() -> None:
    provider = DevProvider().start()
    session = requests.Session()
    assert session.get(f"{provider.url}/__stats", timeout=10).status_code == 200
    url = provider.url
    provider.stop()
    with pytest.raises(requests.ConnectionError):
        session.get(f"{url}/__stats", timeout=10)
    session.close()


def test_request_logging_is_off_by_default_and_never_shows_tokens_or_codes(capfd: pytest.CaptureFixture[str]) -> None:
    with DevProvider() as quiet:
        me(quiet, "at-nothing")
    assert capfd.readouterr().err == ""
    with DevProvider(log_requests=True) as provider:
        token = provider.mint()
        refresh(provider, token["refresh_token"])
        me(provider, token["access_token"])
        requests.get(
            f"{provider.url}/authorize",
            params={"client_id": "oarlock-dev", "redirect_uri": "http://127.0.0.1:1/cb", "state": "st-9"},
            allow_redirects=False,
            timeout=10,
        )
    err = capfd.readouterr().err
    assert err.splitlines() == ["POST /token 200", "GET /api/me 200", "GET /authorize 302"]


def test_the_cli_prints_its_address_serves_and_stops_on_sigterm(tmp_path: Any) -> None:
    cfg_path = tmp_path / "cfg.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "oarlock", "dev-provider", "--port", "0", "--mint-to", str(cfg_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = json.loads(process.stdout.readline())
        cfg = json.loads(cfg_path.read_text())
        assert cfg["baseUrl"] == line["url"] and cfg["oauth2"]["token_uri"] == line["token_url"]
        answer = requests.get(
            f"{line['url']}/api/me", timeout=10, headers={"Authorization": f"Bearer {cfg['oauth']['access_token']}"}
        )
        assert answer.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0


def test_the_cli_command_object_runs_on_its_own_and_stops_on_sigint() -> None:
    code = "from oarlock.cli.devprovider import dev_provider_command; dev_provider_command()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--rotation", "single-use", "--client-id", "c1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = json.loads(process.stdout.readline())
        assert set(line) == {"url", "token_url", "client_id", "client_secret"} and line["client_id"] == "c1"
        minted = requests.post(f"{line['url']}/__mint", json={"subject": "cli-user"}, timeout=10).json()
        answer = requests.get(
            f"{line['url']}/api/me", headers={"Authorization": f"Bearer {minted['access_token']}"}, timeout=10
        )
        assert answer.json()["subject"] == "cli-user" and answer.json()["client_id"] == "c1"
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0


@pytest.mark.parametrize("path", ["/nope", "/api/nope"])
def test_unknown_paths_answer_404_json(dev_provider: DevProvider, path: str) -> None:
    token = dev_provider.mint()["access_token"]
    answer = requests.get(f"{dev_provider.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"


def test_the_cli_says_so_and_exits_2_when_the_port_is_taken(dev_provider: DevProvider) -> None:
    port = dev_provider.url.rsplit(":", 1)[1]
    code = "from oarlock.cli.devprovider import dev_provider_command; dev_provider_command()"
    done = subprocess.run(
        [sys.executable, "-c", code, "--port", port], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2 and done.stdout == ""
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
