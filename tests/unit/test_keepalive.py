"""The keep-alive: each dormant account refreshed at its own endpoint with its own client, once a minute at most,
dead ones not hammered; the client-secrets file; the per-preset idle windows."""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from oarlock.cli.main import main
from oarlock.credentials.manager import CredentialManager
from oarlock.credentials.presets import PRESETS
from oarlock.devprovider import DevProvider, ManualClock
from oarlock.errors import ConfigurationError, KeyStoreError, TransportError
from oarlock.keys.accounts import ACTIVE, NEEDS_REAUTHORIZATION, REFRESH_FAILING, StateChange
from oarlock.keys.keepalive import Keepalive, failing_backoff
from oarlock.keys.reauth import store_authorization
from oarlock.keys.secrets import load_client_secrets
from oarlock.keys.sqlite import SqliteKeyStore
from oarlock.redact import redact_text

DAY = 86400.0
SECRET_A = "secret-of-client-a-never-stored"
SECRET_B = "secret-of-client-b-never-stored"


class CountingAlerter:
    """Stands in for keys/alerts.py's Alerter: alerts when a change *entered* its state."""

    def __init__(self) -> None:
        self.changes: list[StateChange] = []
        self.alerts: list[StateChange] = []

    def notify(self, change: StateChange) -> None:
        self.changes.append(change)
        if change.entered:
            self.alerts.append(change)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteKeyStore]:
    opened = SqliteKeyStore(tmp_path / "keys.sqlite")
    yield opened
    opened.close()


@pytest.fixture
def providers() -> Iterator[tuple[DevProvider, DevProvider]]:
    with (
        DevProvider(rotation="single-use", client_id="client-a", client_secret=SECRET_A) as a,
        DevProvider(rotation="single-use", client_id="client-b", client_secret=SECRET_B) as b,
    ):
        yield a, b


def settings_of(dev: DevProvider, /, **more: str) -> dict[str, str]:
    return {"token_uri": dev.token_url, "client_id": dev.settings.client_id, "client_auth": "post", **more}


def later(days: float) -> ManualClock:
    """A clock ``days`` after now (the store stamps updated_at on the real clock)."""
    return ManualClock(time.time() + days * DAY)


def test_each_account_is_refreshed_at_its_own_endpoint_with_its_own_client(
    store: SqliteKeyStore, providers: tuple[DevProvider, DevProvider]
) -> None:
    a, b = providers
    minted = {"acct-a": a.mint("alice"), "acct-b1": b.mint("bob"), "acct-b2": b.mint("bea")}
    store.save("acct-a", minted["acct-a"], 1, None, settings_of(a))
    store.save("acct-b1", minted["acct-b1"], 1, None, settings_of(b))
    store.save("acct-b2", minted["acct-b2"], 1, None, settings_of(b, provider="microsoft"))
    keepalive = Keepalive(store, {"client-a": SECRET_A, "client-b": SECRET_B}, clock=later(15))
    summary = keepalive.run_once()
    assert sorted(summary.refreshed) == ["acct-a", "acct-b1", "acct-b2"] and not summary.failed
    assert (a.stats()["refresh_calls"], b.stats()["refresh_calls"]) == (1, 2)
    assert a.stats()["invalid_client"] == b.stats()["invalid_client"] == 0
    for account, old in minted.items():
        stored = store.get(account)
        assert stored is not None and stored.version == summary.versions[account] > 1
        assert stored.oauth["refresh_token"] != old["refresh_token"]  # rotated: the old one is used up
        state = store.state(account)
        assert state is not None and state.state == ACTIVE and state.last_refresh is not None


def test_the_stored_rows_hold_no_client_secret(
    store: SqliteKeyStore, providers: tuple[DevProvider, DevProvider], tmp_path: Path
) -> None:
    a, b = providers
    store.save("acct-a", a.mint("alice"), 1, None, {**settings_of(a), "client_secret": SECRET_A})
    store.save("acct-b", b.mint("bob"), 1, None, settings_of(b))
    summary = Keepalive(store, {"client-a": SECRET_A, "client-b": SECRET_B}, idle_override=0).run_once()
    assert sorted(summary.refreshed) == ["acct-a", "acct-b"]
    stored = store.get("acct-a")
    assert stored is not None and stored.settings is not None and "client_secret" not in stored.settings
    store.close()
    raw = b"".join(path.read_bytes() for path in tmp_path.rglob("keys.sqlite*") if path.is_file())
    assert b"client-a" in raw and b"client-b" in raw  # the settings are there...
    assert SECRET_A.encode() not in raw and SECRET_B.encode() not in raw  # ...never the secrets


def test_an_account_of_an_unknown_client_is_skipped_and_reported_never_refreshed_with_another_clients_secret(
    store: SqliteKeyStore, providers: tuple[DevProvider, DevProvider]
) -> None:
    a, b = providers
    store.save("acct-b", b.mint("bob"), 1, None, settings_of(b))
    summary = Keepalive(store, {"client-a": SECRET_A}, idle_override=0).run_once()
    assert summary.due == ["acct-b"] and summary.skipped_no_secret == ["acct-b"] and summary.problems
    assert "client-b" in summary.reasons["acct-b"] and SECRET_A not in json.dumps(summary.as_dict())
    assert b.stats()["token_calls"] == 0 and a.stats()["token_calls"] == 0


def test_an_account_without_stored_settings_is_skipped_unless_a_default_oauth2_is_given(
    store: SqliteKeyStore, providers: tuple[DevProvider, DevProvider]
) -> None:
    a, _ = providers
    store.save("acct-bare", a.mint("alice"), 1)
    summary = Keepalive(store, {"client-a": SECRET_A}, idle_override=0).run_once()
    assert summary.skipped_no_settings == ["acct-bare"] and summary.reasons["acct-bare"] == "no refresh settings stored"
    default = {"token_uri": a.token_url, "client_id": "client-a", "client_secret": SECRET_A}
    summary = Keepalive(store, {}, idle_override=0, min_interval=0, default_oauth2=default).run_once()
    assert summary.refreshed == ["acct-bare"] and a.stats()["refresh_calls"] == 1
    stored = store.get("acct-bare")  # the engine stored the settings it used (without the secret)
    assert stored is not None and stored.settings is not None and stored.settings["client_id"] == "client-a"
    assert "client_secret" not in stored.settings


def test_each_preset_has_its_idle_window_and_the_override_replaces_them_all(store: SqliteKeyStore) -> None:
    expiring = {"access_token": "at-x", "refresh_token": "rt-x", "expires_at": time.time() + 3600}
    base = {"token_uri": "http://127.0.0.1:9/token", "client_id": "nobody"}  # no secret: due ones are only listed
    store.save("ms", expiring, 1, None, {**base, "provider": "microsoft"})
    store.save("generic", expiring, 1, None, base)
    store.save("sf", {"access_token": "at-s", "refresh_token": "rt-s"}, 1, None, {**base, "provider": "salesforce"})
    store.save("no-expiry", {"access_token": "at-n", "refresh_token": "rt-n"}, 1, None, base)

    def due(days: float, override: float | None = None) -> list[str]:
        return sorted(Keepalive(store, {}, clock=later(days), idle_override=override).run_once().due)

    assert due(0.5) == []
    assert due(2) == ["no-expiry", "sf"]  # 24 h for Salesforce and for credentials without expiry
    assert due(8) == ["generic", "no-expiry", "sf"]  # generic: 7 days
    assert due(15) == ["generic", "ms", "no-expiry", "sf"]  # Microsoft: 14 days (its tokens lapse after 90)
    assert due(0, override=0) == ["generic", "ms", "no-expiry", "sf"]
    assert PRESETS["microsoft"].idle_window(expires=True) == 14 * DAY
    assert PRESETS["generic"].idle_window(expires=False) == DAY


def test_a_revoked_account_needs_reauthorization_with_the_reason_is_not_retried_and_alerts_once(
    store: SqliteKeyStore, providers: tuple[DevProvider, DevProvider]
) -> None:
    a, _ = providers
    store.save("acct-dead", a.mint("dora"), 1, None, settings_of(a))
    a.revoke("dora")
    clock, alerter = later(8), CountingAlerter()
    keepalive = Keepalive(store, {"client-a": SECRET_A}, clock=clock, alerter=alerter)
    first = keepalive.run_once()
    assert first.needs_reauthorization == ["acct-dead"] and "invalid_grant" in first.reasons["acct-dead"]
    for _ in range(3):
        clock.advance(3600)
        again = keepalive.run_once()
        assert again.skipped_needs_reauthorization == ["acct-dead"] and again.due == [] and not again.problems
    state = store.state("acct-dead")
    assert state is not None and state.state == NEEDS_REAUTHORIZATION and "revoked" in (state.reason or "")
    assert a.stats()["refresh_calls"] == 1 and len(alerter.alerts) == 1 and len(alerter.changes) == 1
    assert alerter.alerts[0].current.account == "acct-dead"

    store_authorization(store, "acct-dead", a.mint("dora"), settings=settings_of(a), now=clock())  # a human again
    clock.advance(8 * DAY)
    healed = keepalive.run_once()
    assert healed.refreshed == ["acct-dead"] and a.stats()["refresh_calls"] == 2
    state = store.state("acct-dead")
    assert state is not None and state.state == ACTIVE and len(alerter.alerts) == 1


def test_a_due_account_is_refreshed_once_a_minute_at_most_whichever_keepalive_asks(
    store: SqliteKeyStore, providers: tuple[DevProvider, DevProvider], tmp_path: Path
) -> None:
    a, _ = providers
    store.save("acct", a.mint("alice"), 1, None, settings_of(a))
    other = SqliteKeyStore(tmp_path / "keys.sqlite")  # a second replica: its own connection
    clock = later(1)
    first = Keepalive(store, {"client-a": SECRET_A}, idle_override=0, clock=clock)
    second = Keepalive(other, {"client-a": SECRET_A}, idle_override=0, clock=clock)
    try:
        assert first.run_once().refreshed == ["acct"]
        beaten = second.run_once()
        assert beaten.skipped_elsewhere == ["acct"] and not beaten.refreshed and not beaten.problems
        assert first.run_once().skipped_elsewhere == ["acct"]  # itself too: never more than once a minute
        clock.advance(61)
        assert second.run_once().refreshed == ["acct"]
    finally:
        other.close()
    assert a.stats()["refresh_calls"] == 2 and a.stats()["invalid_grant"] == 0


def test_a_refresh_is_published_as_update_keys_without_the_client_secret(
    store: SqliteKeyStore, providers: tuple[DevProvider, DevProvider]
) -> None:
    a, _ = providers
    store.save("acct", a.mint("alice"), 1, None, settings_of(a))
    published: list[dict[str, Any]] = []
    summary = Keepalive(store, {"client-a": SECRET_A}, idle_override=0, publish=published.append).run_once()
    assert summary.refreshed == ["acct"] and len(published) == 1
    payload = published[0]
    stored = store.get("acct")
    assert stored is not None and payload["account"] == "acct" and payload["version"] == stored.version
    assert payload["oauth"]["refresh_token"] == stored.oauth["refresh_token"]
    assert payload["oauth2"]["client_id"] == "client-a" and SECRET_A not in json.dumps(payload)


def test_a_transient_failure_is_recorded_as_refresh_failing_with_a_count_and_the_reason(
    store: SqliteKeyStore, providers: tuple[DevProvider, DevProvider]
) -> None:
    a, _ = providers
    a.configure(fail_first=1000)
    store.save("acct", a.mint("alice"), 1, None, settings_of(a))
    clock = later(8)
    manager = CredentialManager(coordinator=store, clock=clock, sleep=lambda _seconds: None)
    keepalive = Keepalive(store, {"client-a": SECRET_A}, clock=clock, manager=manager)
    for cycle in (1, 2):
        summary = keepalive.run_once()
        assert summary.failed == ["acct"] and "503" in summary.reasons["acct"]
        state = store.state("acct")
        assert state is not None and state.state == REFRESH_FAILING and state.failures == cycle
        clock.advance(failing_backoff(cycle) + 1)
    a.configure(fail_first=0)
    assert keepalive.run_once().refreshed == ["acct"]
    state = store.state("acct")
    assert state is not None and state.state == ACTIVE and state.failures == 0


def test_a_failing_account_is_retried_after_a_growing_backoff_not_every_cycle(
    store: SqliteKeyStore, providers: tuple[DevProvider, DevProvider]
) -> None:
    a, _ = providers
    a.configure(fail_first=1_000_000)  # the provider is down for the whole test
    store.save("acct", a.mint("alice"), 1, None, settings_of(a))
    clock = later(8)
    manager = CredentialManager(coordinator=store, clock=clock, sleep=lambda _seconds: None)
    keepalive = Keepalive(store, {"client-a": SECRET_A}, clock=clock, manager=manager)
    tried_at: list[float] = []
    start = clock()
    while clock() - start < 2 * 3600:  # two hours of cycles a minute apart
        summary = keepalive.run_once()
        if summary.failed:
            tried_at.append(clock() - start)
        else:
            assert summary.skipped_backoff == ["acct"] and "next attempt in" in summary.reasons["acct"]
            assert not summary.due and not summary.problems
        clock.advance(61)
    # 5 min after the first failure, then 10, 20, 40: five attempts in two hours, not 118
    gaps = [later - earlier for earlier, later in itertools.pairwise(tried_at)]
    assert len(tried_at) == 5 and [round(gap / 61) for gap in gaps] == [5, 10, 20, 40]
    assert [failing_backoff(n) for n in (1, 2, 3, 8, 9, 50)] == [300, 600, 1200, 21600, 21600, 21600]
    state = store.state("acct")
    assert state is not None and state.state == REFRESH_FAILING and state.failures == 5


def test_a_re_authorized_failing_account_is_tried_at_once_not_after_the_backoff(
    store: SqliteKeyStore, providers: tuple[DevProvider, DevProvider]
) -> None:
    a, _ = providers
    a.configure(fail_first=1_000_000)
    store.save("acct", a.mint("alice"), 1, None, settings_of(a))
    clock = later(8)
    manager = CredentialManager(coordinator=store, clock=clock, sleep=lambda _seconds: None)
    keepalive = Keepalive(store, {"client-a": SECRET_A}, clock=clock, manager=manager, idle_override=0)
    assert keepalive.run_once().failed == ["acct"]
    a.configure(fail_first=0)
    store_authorization(store, "acct", a.mint("alice"), settings=settings_of(a))  # a human re-authorized it
    clock.advance(61)
    assert keepalive.run_once().refreshed == ["acct"]


def test_a_cycle_given_a_stop_event_ends_between_two_accounts(
    store: SqliteKeyStore, providers: tuple[DevProvider, DevProvider]
) -> None:
    a, _ = providers
    for name in ("acct-1", "acct-2", "acct-3"):
        store.save(name, a.mint(name), 1, None, settings_of(a))
    stop = threading.Event()
    keepalive = Keepalive(store, {"client-a": SECRET_A}, idle_override=0, publish=lambda _payload: stop.set())
    summary = keepalive.run_once(stop)
    assert summary.interrupted and len(summary.refreshed) == 1 and a.stats()["refresh_calls"] == 1


def test_a_cycle_logs_one_line_per_refresh_and_a_summary_line_even_when_nothing_was_due(
    store: SqliteKeyStore, providers: tuple[DevProvider, DevProvider], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = providers
    caplog.set_level(logging.INFO, logger="oarlock.keys.keepalive")
    keepalive = Keepalive(store, {"client-a": SECRET_A})
    keepalive.run_once()
    summaries = [r.getMessage() for r in caplog.records if r.name == "oarlock.keys.keepalive"]
    assert len(summaries) == 1 and summaries[0].startswith("keep-alive cycle 1: ")
    assert json.loads(summaries[0].partition(": ")[2])["due"] == 0
    caplog.clear()
    store.save("acct", a.mint("alice"), 1, None, settings_of(a))
    Keepalive(store, {"client-a": SECRET_A}, idle_override=0).run_once()
    lines = [r.getMessage() for r in caplog.records if r.name == "oarlock.keys.keepalive"]
    assert len(lines) == 2 and "account acct refreshed" in lines[0] and '"refreshed": 1' in lines[1]


def test_run_forever_runs_a_cycle_at_once_and_ends_when_told_without_waiting_out_the_period(
    store: SqliteKeyStore,
) -> None:
    keepalive = Keepalive(store, {})
    stop = threading.Event()
    runner = threading.Thread(target=keepalive.run_forever, args=(stop, 3600.0), daemon=True)
    runner.start()
    deadline = time.monotonic() + 30
    while keepalive.cycles < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert keepalive.cycles == 1
    stop.set()
    runner.join(timeout=30)
    assert not runner.is_alive() and keepalive.cycles == 1


class UnreachableStore(SqliteKeyStore):
    """A store whose listing fails as a PostgreSQL store does while the server restarts."""

    def __init__(self, path: Path, stop: threading.Event) -> None:
        super().__init__(path)
        self.stop, self.listings = stop, 0

    def list(self) -> Any:
        self.listings += 1
        if self.listings >= 2:
            self.stop.set()
        raise KeyStoreError("keys store postgresql://oarlock:***@db/keys: the server restarts")


def test_a_cycle_that_fails_is_logged_and_the_next_one_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()
    unreachable = UnreachableStore(tmp_path / "keys.sqlite", stop)
    Keepalive(unreachable, {}).run_forever(stop, 0.0)
    unreachable.close()
    failed = [r.getMessage() for r in caplog.records if "keep-alive cycle failed" in r.getMessage()]
    assert unreachable.listings == 2 and len(failed) == 2 and "the server restarts" in failed[0]


# -- the client-secrets file -----------------------------------------------------------------------


def test_the_client_secrets_file_maps_client_ids_to_secrets_that_are_then_masked(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"client-a": "a-secret-from-the-file", "public-client": ""}))
    os.chmod(path, 0o600)
    secrets = load_client_secrets(path)
    assert dict(secrets) == {"client-a": "a-secret-from-the-file", "public-client": ""}
    assert "a-secret-from-the-file" not in redact_text("the secret is a-secret-from-the-file")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot be read"),
        ("{not json", "is not valid JSON"),
        ('["client-a", "s"]', "must be a JSON object mapping client_id to secret, not list"),
        ('{"client-a": 42, "client-b": "ok-secret-value"}', "not so for 'client-a'"),
        ('{"": "a-secret-for-nobody"}', "every client_id must be a non-empty key"),
    ],
)
def test_a_bad_client_secrets_file_is_refused_naming_what_is_wrong_never_a_value(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "secrets.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigurationError) as raised:
        load_client_secrets(path)
    assert expected in str(raised.value) and str(path) in str(raised.value)
    assert "ok-secret-value" not in str(raised.value) and "a-secret-for-nobody" not in str(raised.value)


def test_a_client_secrets_file_readable_by_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"client-a": "a-secret-open-to-all"}))
    os.chmod(path, 0o644)
    load_client_secrets(path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("readable by other users" in w and "chmod 600" in w for w in warnings)
    assert not any("a-secret-open-to-all" in w for w in warnings)


def test_a_publish_that_fails_leaves_the_refresh_stored_and_the_cycle_goes_on(
    store: SqliteKeyStore, providers: tuple[DevProvider, DevProvider]
) -> None:
    a, _ = providers
    store.save("acct-1", a.mint("alice"), 1, None, settings_of(a))
    store.save("acct-2", a.mint("abel"), 1, None, settings_of(a))

    def publish(payload: dict[str, Any]) -> None:
        raise TransportError("the exchange is gone")

    summary = Keepalive(store, {"client-a": SECRET_A}, idle_override=0, publish=publish).run_once()
    assert sorted(summary.refreshed) == ["acct-1", "acct-2"] and a.stats()["refresh_calls"] == 2
    stored = store.get("acct-1")
    assert stored is not None and stored.version == summary.versions["acct-1"]


# -- oarlock keys refresh-dormant --------------------------------------------------------------------


def refresh_dormant(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["keys", "refresh-dormant", *args], env=env or {})


def test_refresh_dormant_prints_one_summary_line_even_when_nothing_is_stored(tmp_path: Path) -> None:
    result = refresh_dormant("--keys", str(tmp_path / "keys.sqlite"))
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout)
    assert line["checked"] == 0 and line["due"] == [] and line["refreshed"] == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--idle", "5", "--idle-days", "1"], "not both"),
        (["--token-uri", "http://127.0.0.1:9/token"], "--token-uri and --client-id go together"),
        (["--client-secrets", "missing.json"], "client secrets file missing.json: cannot be read"),
        (["--idle", "-1"], "--idle"),
    ],
)
def test_refresh_dormant_refuses_bad_options_with_exit_2_naming_them(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    result = refresh_dormant("--keys", str(tmp_path / "keys.sqlite"), *args)
    assert result.exit_code == 2 and expected in result.stderr
