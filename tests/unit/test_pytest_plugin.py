"""oarlock's pytest plugin, used from separate test projects (pytester): every fixture, the markers, the broker rules."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import requests  # noqa: F401 (imported before pytester's in-process runs snapshot sys.modules, see below)

import oarlock.runtime.local
import oarlock.runtime.verify
from oarlock.devprovider import DevProvider
from oarlock.pytest_plugin import call_function
from tests.support import event_lines, run_cli

pytest_plugins = ["pytester"]
# An in-process pytester run drops the modules first imported during it; requests and the runtime are
# imported here so that the runs share them (a re-imported http.cookiejar breaks requests' sessions).
assert oarlock.runtime.local and oarlock.runtime.verify

COMPONENT_JSON = {
    "title": "Plugin test component",
    "actions": {
        "hello": {
            "title": "Hello",
            "main": "lib/hello.py",
            "metadata": {"in": {"type": "object", "properties": {"who": {"type": "string"}}, "required": ["who"]}},
        }
    },
    "triggers": {"tick": {"title": "Tick", "main": "lib/tick.py", "type": "polling", "metadata": {"out": {}}}},
}
HELLO = """
def process(msg, cfg, snapshot, ctx):
    me = ctx.http.get(cfg["baseUrl"] + "/me", timeout=10)
    me.raise_for_status()
    ctx.emit("updateSnapshot", {"last": msg.body["who"]})
    return {"body": {"hello": msg.body["who"], "me": me.json()}}
"""
TICK = """
def process(msg, cfg, snapshot, ctx):
    count = snapshot.get("count", 0) + 1
    ctx.emit("data", {"body": {"count": count}})
    ctx.emit("snapshot", {"count": count})
"""
VERIFY = """
def verify(cfg, ctx):
    answer = ctx.http.get(cfg["baseUrl"] + "/me", timeout=10)
    return {"verified": answer.ok, "reason": f"{answer.status_code} from GET /me"}
"""
ME_ROUTE = {("GET", "/me"): {"json": {"id": "u-1"}}}


def write_component(folder: Path) -> Path:
    (folder / "lib").mkdir(parents=True)
    (folder / "component.json").write_text(json.dumps(COMPONENT_JSON))
    (folder / "lib" / "hello.py").write_text(HELLO)
    (folder / "lib" / "tick.py").write_text(TICK)
    (folder / "verify_credentials.py").write_text(VERIFY)
    return folder


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A separate author's project: a component folder and pytest run with --strict-markers."""
    write_component(pytester.path / "component")
    pytester.makeini("[pytest]\naddopts = --strict-markers -p no:cacheprovider\n")
    for name in ("CI", "OARLOCK_TEST_AMQP_URI"):
        monkeypatch.delenv(name, raising=False)
    return pytester


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    (entry,) = [e for e in metadata.entry_points(group="pytest11") if e.name == "oarlock"]
    assert entry.value == "oarlock.pytest_plugin"


def test_loading_the_plugin_imports_no_more_of_oarlock_than_the_package_itself() -> None:
    code = (
        "import json, sys, oarlock; before = set(sys.modules); import oarlock.pytest_plugin; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert [m for m in json.loads(done.stdout) if m.startswith("oarlock")] == ["oarlock.pytest_plugin"]


def test_the_dev_provider_takes_the_markers_options_and_stops_after_its_test(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_provider="""
        import pytest, requests

        seen = []

        @pytest.mark.dev_provider(ttl=60, rotation="single-use")
        def test_options(dev_provider):
            seen.append(dev_provider.url)
            token = dev_provider.mint()
            assert token["expires_in"] == 60
            form = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"],
                    "client_id": "oarlock-dev", "client_secret": "oarlock-dev-secret"}
            assert requests.post(dev_provider.token_url, data=form, timeout=10).status_code == 200
            again = requests.post(dev_provider.token_url, data=form, timeout=10)
            assert again.json()["error"] == "invalid_grant"  # single-use: the old refresh token is spent

        def test_the_previous_provider_is_stopped_and_the_clock_stands_still(dev_provider):
            with pytest.raises(requests.ConnectionError):
                requests.get(seen[0] + "/__stats", timeout=5)
            before = dev_provider.clock()
            assert dev_provider.clock() == before and dev_provider.advance(10) == before + 10

        def test_the_test_control_endpoints(dev_provider):
            minted = requests.post(dev_provider.url + "/__mint", json={"subject": "ann"}, timeout=10).json()
            me = requests.get(dev_provider.url + "/api/me", timeout=10,
                              headers={"Authorization": "Bearer " + minted["access_token"]})
            assert me.json()["subject"] == "ann"
            assert requests.post(dev_provider.url + "/__revoke", json={"subject": "ann"}, timeout=10).json() == {"revoked": 1}
            stats = requests.get(dev_provider.url + "/__stats", timeout=10).json()
            assert stats["api_calls"] == 1 and stats["active_refresh_tokens"] == 0

        @pytest.mark.dev_provider(clock="real", fail_first=1)
        def test_a_factory_starts_more_providers(dev_provider, dev_provider_factory):
            other = dev_provider_factory(ttl=5)
            assert other.url != dev_provider.url and other.settings.ttl == 5
            assert dev_provider.settings.fail_first == 1 and dev_provider.clock.__name__ == "time"
        """
    )
    project.runpytest().assert_outcomes(passed=4)


def test_the_dev_provider_answers_routes_from_a_dict_or_a_file_next_to_the_test(project: pytest.Pytester) -> None:
    (project.path / "routes.json").write_text(json.dumps([{"method": "GET", "path": "/v2/status", "json": [1]}]))
    project.makepyfile(
        test_routes="""
        import pytest, requests

        @pytest.mark.dev_provider(routes={("GET", "/me"): {"status": 200, "json": {"id": "u-1"}}})
        def test_a_dict(dev_provider):
            token = dev_provider.mint()["access_token"]
            answer = requests.get(dev_provider.url + "/me", headers={"Authorization": "Bearer " + token}, timeout=10)
            assert answer.json() == {"id": "u-1"}
            assert requests.get(dev_provider.url + "/me", timeout=10).status_code == 401

        @pytest.mark.dev_provider(routes="routes.json")
        def test_a_file(dev_provider):
            token = dev_provider.mint()["access_token"]
            answer = requests.get(dev_provider.url + "/v2/status", headers={"Authorization": "Bearer " + token}, timeout=10)
            assert answer.json() == [1] and dev_provider.received[-1]["path"] == "/v2/status"

        @pytest.mark.dev_provider(routes={("GET", "/me"): {"jsno": {}}})
        def test_a_malformed_route(dev_provider):
            pass
        """
    )
    result = project.runpytest()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*dev provider route GET /me: unknown field(s) jsno*"])


def test_oarlock_call_runs_a_function_in_process_and_sorts_its_events(project: pytest.Pytester) -> None:
    (project.path / "cfg.json").write_text("{}")
    project.makepyfile(
        test_call=f"""
        import pytest
        from oarlock.protocol.message import Message

        ROUTES = {ME_ROUTE!r}

        @pytest.mark.dev_provider(routes=ROUTES)
        def test_data_and_snapshot(oarlock_call, dev_provider):
            cfg = dev_provider.cfg()
            result = oarlock_call("hello", [{{"body": {{"who": "ann"}}}}, Message(body={{"who": "bob"}})], cfg,
                                  component="component")
            assert result.errors == [] and result.updateKeys == []
            assert result.bodies == [{{"hello": "ann", "me": {{"id": "u-1"}}}}, {{"hello": "bob", "me": {{"id": "u-1"}}}}]
            assert isinstance(result.data[0], Message)
            assert result.snapshot == [{{"last": "ann"}}, {{"last": "bob"}}] and result.final_snapshot == {{"last": "bob"}}
            assert [e.name.value for e in result.events] == ["updateSnapshot", "data", "updateSnapshot", "data"]

        def test_a_snapshot_is_carried_between_messages_and_calls(oarlock_call):
            first = oarlock_call("tick", [{{}}, {{}}], {{}}, {{"count": 10}}, component="component")
            assert first.bodies == [{{"count": 11}}, {{"count": 12}}] and first.final_snapshot == {{"count": 12}}
            second = oarlock_call("tick", {{}}, "cfg.json", first.final_snapshot, component="component")
            assert second.bodies == [{{"count": 13}}]

        @pytest.mark.dev_provider(routes=ROUTES)
        def test_errors_and_a_refresh(oarlock_call, dev_provider):
            cfg = dev_provider.cfg(account="acct-9")
            refused = oarlock_call("hello", [{{"body": {{}}}}], cfg, component="component")
            assert [e["name"] for e in refused.errors] == ["MessageValidationError"] and refused.data == []
            dev_provider.advance(3600)
            refreshed = oarlock_call("hello", [{{"body": {{"who": "ann"}}}}], cfg, component="component")
            (update,) = refreshed.updateKeys
            assert update["account"] == "acct-9" and update["oauth"]["access_token"] == "***"
            # the next call starts from the stored credential: no second refresh for the stale cfg
            again = oarlock_call("hello", [{{"body": {{"who": "bob"}}}}], cfg, component="component", reveal=True)
            assert again.errors == [] and again.updateKeys == [] and dev_provider.stats()["refresh_calls"] == 1

        def test_a_message_that_is_not_message_shaped_is_refused(oarlock_call):
            from oarlock.errors import ConfigurationError
            with pytest.raises(ConfigurationError, match="message 0 must be a Message or a dict with a 'body' key"):
                oarlock_call("tick", [{{"who": "ann"}}], {{}}, component="component")

        def test_an_unknown_function_is_a_component_error(oarlock_call):
            from oarlock.errors import ComponentError
            with pytest.raises(ComponentError, match="unknown function 'nope'"):
                oarlock_call("nope", [{{}}], {{}}, component="component")
        """
    )
    project.runpytest().assert_outcomes(passed=5)


def test_oarlock_verify_returns_what_oarlock_verify_prints(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_verify=f"""
        import pytest

        @pytest.mark.dev_provider(routes={ME_ROUTE!r})
        def test_verified(oarlock_verify, dev_provider):
            assert oarlock_verify(dev_provider.cfg(), component="component") == {{"verified": True}}

        def test_not_verified(oarlock_verify, dev_provider):  # no /me route: the API answers 404
            assert oarlock_verify(dev_provider.cfg(), component="component") == {{
                "verified": False, "reason": "404 from GET /me"}}

        @pytest.mark.dev_provider(routes={ME_ROUTE!r})
        def test_verify_starts_from_what_a_call_refreshed(oarlock_call, oarlock_verify, oarlock_keys, dev_provider):
            cfg = dev_provider.cfg()
            dev_provider.advance(3600)
            assert len(oarlock_call("hello", [{{"body": {{"who": "a"}}}}], cfg, component="component").updateKeys) == 1
            assert oarlock_verify(cfg, component="component") == {{"verified": True}}
            assert dev_provider.stats()["refresh_calls"] == 1 and oarlock_keys.is_file()
        """
    )
    project.runpytest().assert_outcomes(passed=3)


def test_oarlock_call_gives_the_events_oarlock_call_prints(tmp_path: Path) -> None:
    component = write_component(tmp_path / "component")
    with DevProvider(routes=ME_ROUTE) as provider:
        cfg = provider.cfg()
        messages = [{"body": {"who": "ann"}}, {"body": {}}, {"body": {"who": "bob"}}]
        in_process = call_function("hello", messages, cfg, component=component)
        (tmp_path / "cfg.json").write_text(json.dumps(cfg))
        done = run_cli(
            ["call", "hello", "--component", str(component), "--cfg", str(tmp_path / "cfg.json"), "--no-keys"],
            stdin="".join(json.dumps(m) + "\n" for m in messages),
        )
    printed = event_lines(done.stdout)
    assert [e.name.value for e in in_process.events] == [line["event"] for line in printed]
    assert in_process.bodies == [line["data"]["body"] for line in printed if line["event"] == "data"]
    assert in_process.errors == [line["data"] for line in printed if line["event"] == "error"]
    assert in_process.snapshot == [line["data"] for line in printed if line["event"] == "updateSnapshot"]


def test_the_broker_fixture_skips_saying_why_when_no_broker_answers(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, unused_port: int
) -> None:
    monkeypatch.setenv("OARLOCK_TEST_AMQP_URI", f"amqp://guest:secret-pw@127.0.0.1:{unused_port}/%2F")
    project.makepyfile(test_broker="def test_uses_it(broker):\n    raise AssertionError('not reached')\n")
    result = project.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"*no RabbitMQ broker answers on 127.0.0.1:{unused_port}*set OARLOCK_TEST_AMQP_URI*"])
    assert "secret-pw" not in result.stdout.str()


def test_the_broker_fixture_fails_when_ci_is_set_and_no_broker_answers(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, unused_port: int
) -> None:
    monkeypatch.setenv("OARLOCK_TEST_AMQP_URI", f"amqp://guest:guest@127.0.0.1:{unused_port}/%2F")
    monkeypatch.setenv("CI", "true")
    project.makepyfile(test_broker="def test_uses_it(broker):\n    pass\n")
    result = project.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no RabbitMQ broker answers on 127.0.0.1:*CI is set, so a missing broker fails*"])


def test_a_test_using_the_broker_is_marked_amqp_and_the_markers_are_known(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, unused_port: int
) -> None:
    monkeypatch.setenv("OARLOCK_TEST_AMQP_URI", f"amqp://127.0.0.1:{unused_port}")
    project.makepyfile(
        test_marks="""
        import pytest

        def test_with_the_broker(broker):
            pass

        @pytest.mark.amqp
        @pytest.mark.dev_provider(ttl=5)
        def test_marked(dev_provider):
            assert dev_provider.settings.ttl == 5
        """
    )
    result = project.runpytest("-m", "not amqp", "-W", "error::pytest.PytestUnknownMarkWarning")
    result.assert_outcomes(deselected=2)
    project.runpytest("-m", "not amqp and not dev_provider").assert_outcomes(deselected=2)
    marked = project.runpytest("-m", "dev_provider")
    marked.assert_outcomes(passed=1, deselected=1)


@pytest.fixture
def unused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
