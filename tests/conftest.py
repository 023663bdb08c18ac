"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def dev_provider() -> Iterator[Any]:
    from oarlock.devprovider import DevProvider

    with DevProvider() as provider:
        yield provider


@pytest.fixture
def broker() -> Iterator[Any]:
    """A throwaway exchange, input queue and output queues on the real broker."""
    from oarlock.testing import BrokerSandbox

    with BrokerSandbox() as sandbox:
        yield sandbox
