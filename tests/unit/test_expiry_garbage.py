"""An unusable ``expires_in`` (0, negative, garbage) means "expiry unknown", as a missing one does.

Before, ``expires_in: 0`` gave ``expires_at = now`` and the engine refreshed before every request.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from oarlock.credentials.auth import authorized_session
from oarlock.credentials.manager import CredentialManager
from oarlock.credentials.token import TokenSet, parse_lifetime
from oarlock.devprovider import DevProvider, ManualClock
from oarlock.protocol.events import EventList, EventName

NOW = 1_800_000_000.0
REQUESTS = 20


def _session(cfg: dict[str, Any], clock: ManualClock | None = None) -> tuple[requests.Session, EventList]:
    sink = EventList()
    manager = CredentialManager(clock=clock) if clock is not None else CredentialManager()
    return authorized_session(manager, cfg, sink=sink), sink


def _calls_and_updates(provider: DevProvider, session: requests.Session, sink: EventList) -> tuple[int, int]:
    """Make REQUESTS API calls; the provider's token calls and the updateKeys events so far."""
    for _ in range(REQUESTS):
        assert session.get(provider.url + "/api/me", timeout=10).status_code == 200
    return provider.stats()["refresh_calls"], len(sink.payloads(EventName.UPDATE_KEYS))


def test_a_token_response_with_an_unusable_expires_in_is_refreshed_once_not_before_every_request() -> None:
    for expires_in in (0, "0", -5, "abc", float("nan"), None):
        with DevProvider() as provider:
            cfg = provider.cfg(account="acct-garbage")
            cfg["oauth"]["expires_at"] = 1.0  # expired: the first request refreshes, and gets expires_in back
            provider.configure(extra_fields={"expires_in": expires_in})
            assert _calls_and_updates(provider, *_session(cfg)) == (1, 1), f"expires_in {expires_in!r}"


def test_a_stored_expiry_derived_from_expires_in_zero_counts_as_unknown() -> None:
    clock = ManualClock(NOW)
    with DevProvider(clock=clock) as provider:
        cfg = provider.cfg(account="acct-derived")
        # what the old code stored for an expires_in of 0: expires_at == obtained_at, now in the past
        cfg["oauth"].update({"expires_in": 0, "expires_at": NOW, "obtained_at": NOW})
        clock.advance(60)
        assert TokenSet(cfg["oauth"]).expires_at is None
        assert _calls_and_updates(provider, *_session(cfg, clock)) == (0, 0)
    # an explicit zero or past expires_at still means expired
    assert TokenSet({"access_token": "a", "expires_at": 0}).expires_within(0, NOW)
    assert TokenSet({"access_token": "a", "expires_in": 0, "expires_at": NOW - 1, "obtained_at": NOW}).expires_within(
        0, NOW
    )


def test_an_unusable_expires_in_next_to_an_expires_at_in_the_response_keeps_that_expires_at() -> None:
    token = TokenSet.from_response({"access_token": "a", "expires_in": 0, "expires_at": NOW + 600}, now=NOW)
    assert token.expires_at == NOW + 600


def test_only_a_finite_number_above_zero_is_a_lifetime_and_a_string_of_digits_still_is_one() -> None:
    for value in (0, "0", 0.0, -5, "-5", "abc", float("nan"), float("inf"), None, True, [], {}):
        assert parse_lifetime(value) is None, repr(value)
        assert TokenSet.from_response({"access_token": "a", "expires_in": value}, now=NOW).expires_at is None
    assert parse_lifetime(3600) == parse_lifetime("3600") == 3600.0 and parse_lifetime(0.5) == 0.5
    assert TokenSet.from_response({"access_token": "a", "expires_in": "3600"}, now=NOW).expires_at == NOW + 3600


@pytest.mark.parametrize("expires_in", [3600, "3600"], ids=repr)
def test_a_token_with_expires_in_3600_is_still_refreshed_proactively_near_its_expiry(expires_in: Any) -> None:
    clock = ManualClock(NOW)
    with DevProvider(clock=clock, expires_in_as_string=isinstance(expires_in, str)) as provider:
        cfg = provider.cfg(account="acct-3600")
        assert cfg["oauth"]["expires_in"] == expires_in
        session, sink = _session(cfg, clock)
        assert _calls_and_updates(provider, session, sink) == (0, 0)
        clock.advance(3600 - 300 + 1)  # inside the default 300 s leeway; the provider still takes the old token
        assert _calls_and_updates(provider, session, sink) == (1, 1)
        assert provider.stats()["unauthorized"] == 0
