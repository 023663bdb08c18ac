from __future__ import annotations

import datetime
from decimal import Decimal

from oarlock.jsoncopy import copy_json


def test_a_copy_of_nested_json_shares_no_container_with_the_original() -> None:
    original = {"oauth": {"access_token": "a", "scopes": ["x", {"y": [1, 2.5, None, True]}]}, "n": 1}
    copied = copy_json(original)
    assert copied == original
    copied["oauth"]["scopes"][1]["y"].append("changed")
    copied["oauth"]["access_token"] = "b"
    assert original == {"oauth": {"access_token": "a", "scopes": ["x", {"y": [1, 2.5, None, True]}]}, "n": 1}


def test_values_that_are_not_plain_json_are_deep_copied_as_copy_deepcopy_does() -> None:
    when = datetime.datetime(2026, 11, 23, tzinfo=datetime.UTC)
    original = {"when": when, "pair": ([1], "t"), "price": Decimal("1.5"), "nested": {"set": {1, 2}}}
    copied = copy_json(original)
    assert copied == original
    copied["pair"][0].append(2)
    copied["nested"]["set"].add(3)
    assert original["pair"] == ([1], "t") and original["nested"]["set"] == {1, 2}


def test_scalars_come_back_as_they_are() -> None:
    for value in ("text", 7, 1.5, False, None):
        assert copy_json(value) is value
