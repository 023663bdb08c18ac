"""The dev provider is a real OAuth2 server: grants, client auth, rotation, failure injection, stats, CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import requests

from oarlock.devprovider import DevProvider

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
        dev_provider.token_url, data={"grant_type": "authorization_code", "code": code, **CLIENT}, timeout=10
    )
    assert granted.status_code == 200 and granted.json()["refresh_token"].startswith("rt-")
    again = requests.post(
        dev_provider.token_url, data={"grant_type": "authorization_code", "code": code, **CLIENT}, timeout=10
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
    with DevProvider(ttl=0.3) as provider:
        token = provider.mint()
        assert me(provider, token["access_token"]).status_code == 200
        time.sleep(0.35)
        answer = me(provider, token["access_token"])
    assert answer.status_code == 401 and answer.json() == {
        "error": "invalid_token",
        "error_description": "access token expired",
    }
    assert answer.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


def test_a_missing_token_is_401(dev_provider: DevProvider) -> None:
    assert requests.get(f"{dev_provider.url}/api/me", timeout=10).status_code == 401
    assert dev_provider.stats()["unauthorized"] == 1


def test_salesforce_mode_sends_no_expires_in_but_instance_url_and_issued_at() -> None:
    with DevProvider(expires_in=False) as provider:
        token = provider.mint()
    assert "expires_in" not in token and token["instance_url"] and token["issued_at"].isdigit()


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


def test_throttle_first_and_rate_limit_answer_429_with_retry_after() -> None:
    with DevProvider(throttle_first=1, retry_after=3) as provider:
        token = provider.mint()
        throttled = refresh(provider, token["refresh_token"])
        assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "3"
        provider.configure(rate_limit=2)
        codes = [refresh(provider, token["refresh_token"]).status_code for _ in range(4)]
        assert codes.count(429) >= 1 and codes[0] == 200
        assert provider.stats()["throttled"] >= 2


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

        def work(token: str) -> None:
            barrier.wait()
            codes.append(refresh(provider, token).status_code)
            codes.append(refresh(provider, token).status_code)

        threads = [threading.Thread(target=work, args=(t,)) for t in tokens]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = provider.stats()
    assert sorted(codes) == [200] * 32 + [400] * 32
    assert stats["refresh_calls"] == 64 and stats["invalid_grant"] == 32 and stats["active_refresh_tokens"] == 32


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


@pytest.mark.parametrize("path", ["/nope", "/api/nope"])
def test_unknown_paths_answer_404_json(dev_provider: DevProvider, path: str) -> None:
    token = dev_provider.mint()["access_token"]
    answer = requests.get(f"{dev_provider.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"
