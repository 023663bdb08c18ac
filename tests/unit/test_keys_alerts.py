"""keys/alerts.py: worker reports recorded as account states, one alert per entry into needs_reauthorization.

The webhook is a real http.server on 127.0.0.1 counting the POSTs; the pauses between attempts are 0.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from oarlock.credentials.reports import fingerprint_of
from oarlock.errors import ConfigurationError, DecodeError, TransportError
from oarlock.keys.accounts import ACTIVE, NEEDS_REAUTHORIZATION, REFRESH_FAILING
from oarlock.keys.alerts import Alerter, alert_of, apply_state_report
from oarlock.keys.store import KeyStore, open_store

NO_PAUSES = (0.0, 0.0, 0.0, 0.0)


class Hook(BaseHTTPRequestHandler):
    """The webhook: records every POST; answers the statuses queued in ``statuses`` (then 204)."""

    posts: list[tuple[str, dict[str, str], Any]]
    statuses: list[int]
    redirect_to: str = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).posts.append((self.path, dict(self.headers), json.loads(body)))
        status = type(self).statuses.pop(0) if type(self).statuses else 204
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", type(self).redirect_to)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[tuple[str, type[Hook]]]:
    handler = type("CountingHook", (Hook,), {"posts": [], "statuses": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/oarlock-planted-path", handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KeyStore]:
    opened = open_store(str(tmp_path / "keys" / "keys.sqlite"))
    yield opened
    opened.close()


def report(account: str = "acct-dead", version: int = 7, **changes: Any) -> dict[str, Any]:
    base = {
        "type": "credentialInvalid",
        "account": account,
        "version": version,
        "state": NEEDS_REAUTHORIZATION,
        "reason": "invalid_grant: refresh token revoked",
    }
    return {**base, **changes}


def test_many_reports_of_one_dead_credential_alert_once_on_the_message_route_and_the_webhook(
    store: KeyStore, hook: tuple[str, type[Hook]]
) -> None:
    url, handler = hook
    published: list[dict[str, Any]] = []
    alerter = Alerter(publish=published.append, webhook=url, pauses=NO_PAUSES)
    entered = [alerter.notify(apply_state_report(store, report())) for _ in range(20)]
    for _ in range(3):  # the keep-alive recording the same failure
        alerter.notify(store.record_state("acct-dead", NEEDS_REAUTHORIZATION, version=7, reason="invalid_grant"))
    assert alerter.wait_idle(10)
    alerter.close()
    assert entered == [True] + [False] * 19 and alerter.alerts == 1
    (alert,) = published
    assert alert["account"] == "acct-dead" and alert["state"] == NEEDS_REAUTHORIZATION
    assert alert["reason"] == "invalid_grant: refresh token revoked" and alert["since"].endswith("Z")
    assert set(alert) == {"account", "state", "reason", "since"}
    ((path, headers, body),) = handler.posts
    assert body == alert and path == "/hooks/oarlock-planted-path"
    assert headers["Content-Type"] == "application/json" and "Authorization" not in headers
    state = store.state("acct-dead")
    assert state is not None and state.state == NEEDS_REAUTHORIZATION and state.reason == "invalid_grant"  # the last


def test_a_reauthorized_credential_that_dies_again_alerts_again_and_refresh_failing_never_alerts(
    store: KeyStore,
) -> None:
    published: list[dict[str, Any]] = []
    alerter = Alerter(publish=published.append, pauses=NO_PAUSES)
    assert alerter.notify(apply_state_report(store, report(version=7)))
    # a re-authorization: a newer version is active
    change = store.record_state("acct-dead", ACTIVE, version=9)
    assert change is not None and change.current.state == ACTIVE and not alerter.notify(change)
    assert apply_state_report(store, report(version=7)) is None  # a late report about the old one: ignored
    assert not alerter.notify(apply_state_report(store, report(version=9, state=REFRESH_FAILING, reason="HTTP 503")))
    assert alerter.notify(apply_state_report(store, report(version=9)))
    assert not alerter.notify(apply_state_report(store, report(version=9)))
    assert alerter.wait_idle(10)
    alerter.close()
    assert [a["account"] for a in published] == ["acct-dead", "acct-dead"] and alerter.alerts == 2


def test_a_webhook_answering_5xx_is_retried_and_a_redirect_is_never_followed(
    store: KeyStore, hook: tuple[str, type[Hook]], caplog: pytest.LogCaptureFixture
) -> None:
    url, handler = hook
    handler.statuses = [500, 503]
    alerter = Alerter(webhook=url, pauses=NO_PAUSES)
    alerter.notify(apply_state_report(store, report("acct-1")))
    assert alerter.wait_idle(10)
    assert len(handler.posts) == 3 and alerter.delivered == {alerter.destinations[0]: 1}
    handler.posts.clear()
    handler.statuses, handler.redirect_to = [302], url + "/elsewhere"
    with caplog.at_level(logging.ERROR, logger="oarlock.keys.alerts"):
        alerter.notify(apply_state_report(store, report("acct-2")))
        assert alerter.wait_idle(10)
    alerter.close()
    assert [path for path, _, _ in handler.posts] == ["/hooks/oarlock-planted-path"]  # one attempt, not followed
    assert "not delivered" in caplog.text and "redirect" in caplog.text


def test_after_the_last_failed_attempt_one_error_line_names_the_account_and_the_host_only(
    store: KeyStore, hook: tuple[str, type[Hook]], caplog: pytest.LogCaptureFixture
) -> None:
    url, handler = hook
    handler.statuses = [500] * 10
    failures: list[int] = []

    def unconfirmed(alert: dict[str, Any]) -> None:
        failures.append(1)
        raise TransportError("the broker connection was lost before the confirm")

    alerter = Alerter(publish=unconfirmed, webhook=url, pauses=NO_PAUSES)
    with caplog.at_level(logging.WARNING, logger="oarlock.keys.alerts"):
        alerter.notify(apply_state_report(store, report("acct-x")))
        assert alerter.wait_idle(10)
    alerter.close()
    assert len(handler.posts) == 5 and len(failures) == 5
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and all("acct-x" in line and "after 5 attempts" in line for line in errors)
    assert "oarlock-planted-path" not in caplog.text  # the webhook's path may be its secret


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"account": ""}, "'account'"),
        ({"account": 12}, "'account'"),
        ({"version": float("inf")}, "'version'"),
        ({"version": 2**64}, "'version'"),
        ({"version": "soon"}, "'version'"),
        ({"state": "active"}, "'state'"),
        ({"state": ["x"]}, "'state'"),
        ({"reason": {"a": 1}}, "'reason'"),
    ],
)
def test_a_malformed_report_is_a_decode_error_naming_the_field(
    store: KeyStore, changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(DecodeError, match=reason):
        apply_state_report(store, report(**changes))
    assert store.states() == []


def test_a_report_without_a_version_is_refused_and_one_without_a_state_means_needs_reauthorization(
    store: KeyStore,
) -> None:
    payload = report()
    del payload["version"]
    with pytest.raises(DecodeError, match="no 'version'"):
        apply_state_report(store, payload)
    del payload["state"]
    payload["version"] = 3
    change = apply_state_report(store, payload)
    assert change is not None and change.current.state == NEEDS_REAUTHORIZATION and change.entered


def test_the_alert_object_masks_a_secret_in_the_reason_and_a_bad_webhook_url_is_refused(store: KeyStore) -> None:
    change = apply_state_report(store, report(reason="invalid_grant for refresh_token=RT-planted-9"))
    assert change is not None
    assert "RT-planted-9" not in json.dumps(alert_of(change))
    for bad in ("ftp://host/x", "http://", "not a url", "http://host:port/x"):
        with pytest.raises(ConfigurationError, match="--webhook"):
            Alerter(webhook=bad)


def test_reports_about_versions_the_store_never_held_count_for_the_stored_credential(store: KeyStore) -> None:
    store.save("acct-w", {"refresh_token": "RT-dead"}, 100)
    alerter = Alerter(pauses=NO_PAUSES)
    # each worker restart stamps the same dead credential with a version of its own
    entered = [alerter.notify(apply_state_report(store, report("acct-w", version=v))) for v in (150, 160, 100)]
    assert entered == [True, False, False]
    state = store.state("acct-w")
    assert state is not None and state.version == 100 and state.effective(100) == NEEDS_REAUTHORIZATION
    store.save("acct-w", {"refresh_token": "RT-new"}, 200)  # re-authorized
    assert state.effective(200) == ACTIVE
    assert alerter.notify(apply_state_report(store, report("acct-w", version=250)))  # the new one dies: once more
    alerter.close()


LIVE = {"access_token": "at-reauthorized", "refresh_token": "rt-reauthorized"}
DEAD = {"access_token": "at-dead", "refresh_token": "rt-dead"}


def test_a_report_about_a_credential_the_store_no_longer_holds_never_marks_the_re_authorized_one(
    store: KeyStore,
) -> None:
    store.save("acct-r", dict(LIVE), 5)  # re-authorized by a human: version 5
    alerter = Alerter(publish=lambda alert: None, pauses=NO_PAUSES)
    # a worker that started from an old cfg stamped the dead credential with a version of its own, newer than 5
    stale = report("acct-r", version=int(time.time() * 1000), fingerprint=fingerprint_of(DEAD))
    assert apply_state_report(store, stale) is None
    assert store.state("acct-r") is None, "the re-authorized credential stays active"
    alerter.close()
    assert alerter.alerts == 0


def test_a_report_about_the_stored_credential_is_recorded_for_the_stored_version_whatever_version_it_gives(
    store: KeyStore,
) -> None:
    store.save("acct-s", dict(DEAD), 5)
    stamp = int(time.time() * 1000)
    for version in (stamp, 3, 5):  # a worker's own stamp, an older copy's number, the stored one
        change = apply_state_report(store, report("acct-s", version=version, fingerprint=fingerprint_of(DEAD)))
        assert change is not None and change.current.version == 5
        assert change.current.state == NEEDS_REAUTHORIZATION and change.entered == (version == stamp)


@pytest.mark.parametrize("fingerprint", [7, ["ab"], "f" * 65])
def test_a_report_whose_fingerprint_is_not_a_short_string_is_a_decode_error_naming_it(
    store: KeyStore, fingerprint: Any
) -> None:
    with pytest.raises(DecodeError, match="'fingerprint' must be a string"):
        apply_state_report(store, report(fingerprint=fingerprint))


def test_a_fingerprint_is_sixteen_hex_digits_that_carry_no_token() -> None:
    fingerprint = fingerprint_of(DEAD)
    assert fingerprint is not None and len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert "rt-dead" not in fingerprint and fingerprint != fingerprint_of(LIVE)
    assert fingerprint_of({"access_token": "at-only"}) == fingerprint_of({"access_token": "at-only", "x": 1})
    assert fingerprint_of({}) is None
