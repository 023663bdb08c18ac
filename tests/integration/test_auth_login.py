"""`oarlock auth login` end to end against the dev provider's /authorize, as a person runs it.

The command runs as a subprocess; the test plays the person with the browser: it reads the URL the
command prints on stderr and follows it with requests (the dev provider approves at once and
redirects to the command's listener on 127.0.0.1). Then the cfg file and the keys store must hold
one working token: the dev provider's API answers it, and its refresh token refreshes.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests

from oarlock.devprovider import DevProvider
from oarlock.keys.sqlite import SqliteKeyStore

COMPONENT = {
    "title": "Login test",
    "envVars": {"DEV_URL": {"required": True}, "OAUTH_CLIENT_ID": {"required": True}},
    "credentials": {
        "fields": {"oauth": {"label": "Authorize", "viewClass": "OAuthFieldView", "required": True}},
        "oauth2": {
            "auth_uri": "{{DEV_URL}}/authorize",
            "token_uri": "{{DEV_URL}}/token",
            "client_id": "{{OAUTH_CLIENT_ID}}",
            "client_secret": "{{OAUTH_CLIENT_SECRET}}",
            "scope": "read write",
        },
    },
    "actions": {"hello": {"title": "Hello", "main": "lib/hello.py", "metadata": {"in": {}, "out": {}}}},
}
HELLO = "def process(msg, cfg, snapshot, ctx):\n    return ctx.http.get(cfg['baseUrl'] + '/api/me').json()\n"


@pytest.fixture
def provider() -> Iterator[DevProvider]:
    with DevProvider() as dev:
        yield dev


@pytest.fixture
def component(tmp_path: Path) -> Path:
    folder = tmp_path / "component"
    (folder / "lib").mkdir(parents=True)
    (folder / "component.json").write_text(json.dumps(COMPONENT))
    (folder / "lib" / "hello.py").write_text(HELLO)
    return folder


class Login:
    """``oarlock auth login`` running; ``url`` is the authorization URL it printed."""

    def __init__(self, tmp_path: Path, component: Path, provider: DevProvider, *extra: str, **env: str) -> None:
        self.cfg = tmp_path / "cfg.json"
        self.keys = tmp_path / "keys.sqlite"
        environ = {
            **os.environ,
            "DEV_URL": provider.url,
            "OAUTH_CLIENT_ID": provider.settings.client_id,
            "OAUTH_CLIENT_SECRET": provider.settings.client_secret,
            **env,
        }
        environ = {name: value for name, value in environ.items() if value != ""}  # "": not set at all
        command = ["auth", "login", "--component", str(component), "--cfg", str(self.cfg), "--keys", str(self.keys)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "oarlock", *command, "--no-browser", "--timeout", "60", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
            cwd=tmp_path,
        )
        assert self.process.stderr is not None
        self.before: list[str] = []
        for line in self.process.stderr:  # the command prints the URL before it waits
            if line.startswith("http"):
                self.url = line.strip()
                break
            self.before.append(line)
        else:
            raise AssertionError(f"no URL printed: {''.join(self.before)}")

    def follow(self, url: str | None = None) -> requests.Response:
        """What the person's browser does: open the URL, follow the redirect to the listener."""
        return requests.get(url or self.url, timeout=30)

    def finish(self) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=60)
        return self.process.returncode, out, "".join(self.before) + err


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def me(provider: DevProvider, token: str) -> requests.Response:
    return requests.get(f"{provider.url}/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_a_login_puts_one_working_token_into_the_cfg_and_the_keys_store(
    tmp_path: Path, component: Path, provider: DevProvider
) -> None:
    (tmp_path / "cfg.json").write_text(json.dumps({"_account": "acct-login", "baseUrl": provider.url}))
    login = Login(tmp_path, component, provider)
    query = dict(parse_qsl(urlsplit(login.url).query))
    assert login.url.startswith(f"{provider.url}/authorize?")
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["redirect_uri"].startswith("http://127.0.0.1:") and query["redirect_uri"].endswith("/callback")
    assert query["response_type"] == "code" and query["scope"] == "read write" and len(query["state"]) >= 32

    page = login.follow()
    assert page.status_code == 200 and "Authorization received" in page.text
    code, out, err = login.finish()
    assert code == 0, err

    line = json.loads(out)
    assert line["account"] == "acct-login" and line["stored"] is True
    assert line["oauth"]["access_token"] == "***" and line["oauth"]["refresh_token"] == "***"
    cfg = json.loads(login.cfg.read_text())
    assert stat.S_IMODE(login.cfg.stat().st_mode) == 0o600
    assert cfg["baseUrl"] == provider.url and cfg["_account"] == "acct-login"  # the rest of the cfg is kept
    oauth = cfg["oauth"]
    assert oauth["obtained_at"] > 0 and oauth["expires_at"] > oauth["obtained_at"]
    assert oauth["access_token"] not in out + err and oauth["refresh_token"] not in out + err

    store = SqliteKeyStore(login.keys)
    try:
        kept = store.get("acct-login")
    finally:
        store.close()
    assert kept is not None and kept.oauth["access_token"] == oauth["access_token"]
    assert kept.version == line["version"]
    answer = me(provider, oauth["access_token"])
    assert answer.status_code == 200 and answer.json()["subject"] == "user-1"
    stats = provider.stats()
    assert stats["token_calls_by_grant"] == {"authorization_code": 1} and stats["invalid_grant"] == 0
    refreshed = requests.post(
        provider.token_url,
        data={"grant_type": "refresh_token", "refresh_token": kept.oauth["refresh_token"], "client_id": "oarlock-dev"}
        | {"client_secret": provider.settings.client_secret},
        timeout=10,
    )
    assert refreshed.status_code == 200 and me(provider, refreshed.json()["access_token"]).status_code == 200


def test_oarlock_call_runs_on_the_token_of_a_login_without_any_environment_variable(
    tmp_path: Path, component: Path, provider: DevProvider
) -> None:
    """The client comes from the cfg's oauth2 (no OAUTH_* variables); then `oarlock call` uses what login wrote."""
    oauth2 = {"client_id": provider.settings.client_id, "client_secret": provider.settings.client_secret}
    (tmp_path / "cfg.json").write_text(json.dumps({"baseUrl": provider.url, "oauth2": oauth2}))
    login = Login(tmp_path, component, provider, "--account", "acct-cli", OAUTH_CLIENT_ID="", OAUTH_CLIENT_SECRET="")
    login.follow()
    code, _, err = login.finish()
    assert code == 0, err
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH_")} | {"DEV_URL": provider.url}
    message = write(tmp_path / "msg.json", {})
    command = ["call", "hello", "--component", str(component), "--cfg", str(login.cfg), "--keys", str(login.keys)]
    called = subprocess.run(
        [sys.executable, "-m", "oarlock", *command, "--msg", str(message)],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert called.returncode == 0, called.stderr
    data = [json.loads(line) for line in called.stdout.splitlines() if '"data"' in line]
    assert data[-1]["data"]["body"]["subject"] == "user-1"


def test_a_callback_with_another_state_stores_nothing_and_says_why_in_one_line(
    tmp_path: Path, component: Path, provider: DevProvider
) -> None:
    login = Login(tmp_path, component, provider, "--account", "acct-x")
    page = login.follow(with_query(login.url, state="forged-state"))
    assert page.status_code == 400
    code, out, err = login.finish()
    assert code == 1 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("oarlock: ") and "state does not match" in last and "forged-state" not in last
    assert not login.cfg.exists()
    assert provider.stats()["token_calls"] == 0  # the code was never redeemed


def test_a_denied_authorization_stores_nothing_and_names_the_providers_error(
    tmp_path: Path, component: Path, provider: DevProvider
) -> None:
    (tmp_path / "cfg.json").write_text(json.dumps({"_account": "acct-d", "baseUrl": provider.url}))
    before = (tmp_path / "cfg.json").read_text()
    login = Login(tmp_path, component, provider)
    page = login.follow(login.url + "&decision=deny")
    assert page.status_code == 400 and "refused" in page.text
    code, out, err = login.finish()
    assert code == 1 and out == ""
    last = err.strip().splitlines()[-1]
    assert (
        last == "oarlock: the authorization server answered access_denied (the user denied the request): nothing stored"
    )
    assert (tmp_path / "cfg.json").read_text() == before and not login.keys.exists()


def test_a_token_endpoint_refusal_is_one_line_without_the_client_secret(
    tmp_path: Path, component: Path, provider: DevProvider
) -> None:
    login = Login(tmp_path, component, provider, "--account", "acct-s", OAUTH_CLIENT_SECRET="wrong-secret-1234")
    login.follow()
    code, out, err = login.finish()
    assert code == 1 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("oarlock: the code exchange failed") and "invalid_client" in last
    assert "wrong-secret-1234" not in err and "code-" not in err
    assert not login.cfg.exists()


def test_no_answer_within_the_timeout_is_one_line_and_exit_1(tmp_path: Path, component: Path) -> None:
    with DevProvider() as provider:
        login = Login(tmp_path, component, provider, "--account", "acct-t", "--timeout", "0.5")
        code, out, err = login.finish()
    assert code == 1 and out == ""
    assert err.strip().splitlines()[-1].endswith("within 0.5 s (--timeout): nothing stored")


def write(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value))
    return path
