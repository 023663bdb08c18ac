"""Run what a component's function, hook or verifier returned, awaiting it first when it is awaitable."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any


def run_maybe_async(value: Any) -> Any:
    """``value`` itself, or the result of awaiting it on a fresh event loop (sync and ``async def`` alike)."""
    if inspect.isawaitable(value):
        return asyncio.run(_await(value))
    return value


async def _await(awaitable: Any) -> Any:
    return await awaitable
