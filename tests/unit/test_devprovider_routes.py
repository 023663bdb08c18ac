"""Routes of one's own on the dev provider: fixed answers behind the bearer check, from a dict, a list or a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from oarlock.devprovider import DevProvider, ManualClock
from oarlock.devprovider.routes import load_routes
from oarlock.errors import ConfigurationError


def bearer(token: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['access_token']}"}


def test_a_route_answers_its_status_json_and_headers_only_to_a_valid_token() -> None:
    routes = {("GET", "/me"): {"status": 203, "json": {"id": 7}, "headers": {"X-Rate": "10"}}}
    with DevProvider(routes=routes) as provider:
        token = provider.mint()
        answer = requests.get(f"{provider.url}/me", headers=bearer(token), timeout=10)
        assert (answer.status_code, answer.json(), answer.headers["X-Rate"]) == (203, {"id": 7}, "10")
        refused = requests.get(f"{provider.url}/me", timeout=10)
        assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
        assert provider.stats()["unauthorized"] == 1


def test_a_public_route_needs_no_token_and_an_expired_token_is_refused_elsewhere() -> None:
    clock = ManualClock()
    routes = [
        {"method": "get", "path": "/health", "json": {"ok": True}, "auth": False},
        {"method": "DELETE", "path": "/items/1/", "status": 204},
    ]
    with DevProvider(routes=routes, clock=clock, ttl=60) as provider:
        token = provider.mint()
        assert requests.get(f"{provider.url}/health", timeout=10).json() == {"ok": True}
        deleted = requests.delete(f"{provider.url}/items/1", headers=bearer(token), timeout=10)
        assert deleted.status_code == 204 and deleted.content == b""
        provider.advance(60)
        expired = requests.delete(f"{provider.url}/items/1", headers=bearer(token), timeout=10)
        assert expired.status_code == 401 and expired.json()["error_description"] == "access token expired"


def test_routes_come_from_a_json_file_and_override_the_built_in_api(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"POST /api/items": {"status": 422, "json": {"error": "name taken"}}}))
    with DevProvider(routes=path) as provider:
        token = provider.mint()
        answer = requests.post(f"{provider.url}/api/items", json={"name": "a"}, headers=bearer(token), timeout=10)
        assert (answer.status_code, answer.json()) == (422, {"error": "name taken"})
        listed = requests.get(f"{provider.url}/api/items", headers=bearer(token), timeout=10)
        assert len(listed.json()["items"]) == 5  # the other built-in routes stay


def test_a_route_added_while_running_is_answered_and_every_api_request_is_recorded_without_headers() -> None:
    with DevProvider() as provider:
        token = provider.mint()
        provider.route("PATCH", "/v1/contacts/9", json={"id": 9, "name": "new"})
        answer = requests.patch(
            f"{provider.url}/v1/contacts/9?fields=name", json={"name": "new"}, headers=bearer(token), timeout=10
        )
        assert answer.json() == {"id": 9, "name": "new"}
        requests.get(f"{provider.url}/api/me", headers=bearer(token), timeout=10)
        assert list(provider.received) == [
            {"method": "PATCH", "path": "/v1/contacts/9", "query": {"fields": "name"}, "json": {"name": "new"}},
            {"method": "GET", "path": "/api/me", "query": {}, "json": None},
        ]
        assert token["access_token"] not in json.dumps(list(provider.received))


@pytest.mark.parametrize(
    ("routes", "says"),
    [
        ({("GET", "/me"): {"jsno": {}}}, "unknown field(s) jsno (known: status, json, headers, auth)"),
        ({("FETCH", "/me"): {}}, "the method must be one of GET, POST, PUT, PATCH, DELETE"),
        ({"GET me": {}}, "the path must start with /"),
        ({("POST", "/token"): {}}, "not be one of the provider's own"),
        ({("GET", "/me"): {"status": "200"}}, "status must be an integer from 200 to 599, not '200'"),
        ({("GET", "/me"): {"headers": {"X-A": 1}}}, "headers must map names to strings"),
        ({("GET", "/me"): {"json": {1, 2}}}, "json is not JSON"),
        ({("GET", "/me"): []}, "the answer must be an object"),
        ("/nowhere/routes.json", "dev provider routes file /nowhere/routes.json: cannot be read"),
        (42, "must be a mapping, a list or a JSON file, not int"),
    ],
)
def test_a_malformed_route_is_a_configuration_error_naming_it(routes: Any, says: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_routes(routes)
    assert says in str(caught.value)


def test_a_routes_file_that_is_not_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_text("[{'method': 'GET'}]")
    with pytest.raises(ConfigurationError, match=r"routes\.json: not valid JSON"):
        DevProvider(routes=path)
