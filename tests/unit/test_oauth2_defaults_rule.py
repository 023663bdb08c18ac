"""One rule completes a cfg's oauth2 from component.json for call, run, verify, meta/select and auth login."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oarlock.component.model import Component
from oarlock.errors import ComponentError

OAUTH2 = {
    "auth_uri": "https://{{prodEnv}}.example.com/authorize",
    "token_uri": "https://{{prodEnv}}.example.com/token",
    "client_id": "{{OAUTH_CLIENT_ID}}",
    "client_secret": "{{OAUTH_CLIENT_SECRET}}",
    "scope": "read",
}


@pytest.fixture
def component(tmp_path: Path) -> Component:
    raw = {"title": "T", "credentials": {"oauth2": OAUTH2}, "actions": {}}
    (tmp_path / "component.json").write_text(json.dumps(raw))
    return Component.load(tmp_path)


def test_the_cfgs_own_oauth2_values_are_taken_without_looking_up_their_placeholders(component: Component) -> None:
    cfg = {"prodEnv": "login", "oauth2": {"client_id": "cid", "client_secret": "cs"}}
    assert component.oauth2_for(cfg, {}) == {
        "auth_uri": "https://login.example.com/authorize",
        "token_uri": "https://login.example.com/token",
        "client_id": "cid",
        "client_secret": "cs",
        "scope": "read",
    }


def test_the_environment_fills_before_the_cfgs_values(component: Component) -> None:
    env = {"prodEnv": "test", "OAUTH_CLIENT_ID": "e-id", "OAUTH_CLIENT_SECRET": "e-s"}
    completed = component.oauth2_for({"prodEnv": "login", "oauth2": {"scope": "all"}}, env)
    assert completed["token_uri"] == "https://test.example.com/token" and completed["client_id"] == "e-id"
    assert completed["scope"] == "all"


def test_a_required_key_nothing_fills_is_an_error_naming_the_variable_and_the_cfg_key(component: Component) -> None:
    with pytest.raises(ComponentError) as raised:
        component.oauth2_for({"prodEnv": "x", "oauth2": {"client_id": "cid"}}, {})
    assert str(raised.value) == (
        "credentials.oauth2.client_secret: environment variable OAUTH_CLIENT_SECRET is not set "
        "(used as {{OAUTH_CLIENT_SECRET}}); or give the cfg an oauth2.client_secret"
    )


def test_a_key_a_run_does_not_need_is_left_out_when_nothing_fills_it(component: Component) -> None:
    cfg = {"oauth2": {"token_uri": "https://t", "client_id": "c", "client_secret": "s"}}
    assert "auth_uri" not in component.oauth2_for(cfg, {})
    with pytest.raises(ComponentError, match="environment variable prodEnv is not set"):
        component.oauth2_for(cfg, {}, required=("auth_uri",))
