"""A deep copy of decoded JSON (dicts, lists, scalars), several times faster than ``copy.deepcopy``.

Every message gets its own copy of the step's cfg (a function may change it without changing
what the next message sees); ``copy.deepcopy`` spends most of its time on a memo and on type
dispatch that JSON never needs. Anything that is not plain JSON is handed to ``copy.deepcopy``.
"""

from __future__ import annotations

import copy
from typing import TypeVar

T = TypeVar("T")
_SCALARS = (str, int, float, bool, type(None))


def copy_json(value: T) -> T:
    kind = type(value)
    if kind is dict:
        return {key: item if type(item) in _SCALARS else copy_json(item) for key, item in value.items()}  # type: ignore[attr-defined,return-value]
    if kind is list:
        return [item if type(item) in _SCALARS else copy_json(item) for item in value]  # type: ignore[attr-defined,return-value]
    if kind in _SCALARS:
        return value
    return copy.deepcopy(value)
