"""A component's own refresh: ``refresh_credentials(oauth, cfg)`` in its module, called instead of the token endpoint.

The hook gets copies (it cannot change the engine's state by mutating them), may be async, and
must return a mapping of credential fields (a token response); anything else, or an exception
other than a :class:`~oarlock.errors.CredentialError` it raised on purpose, is a
:class:`~oarlock.errors.TokenEndpointError` naming the account.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from oarlock.awaitables import run_maybe_async
from oarlock.errors import CredentialError, TokenEndpointError

RefreshHook = Callable[[dict[str, Any], dict[str, Any]], Any]


def call_refresh_hook(hook: RefreshHook, oauth: dict[str, Any], cfg: dict[str, Any], account: str) -> dict[str, Any]:
    """The hook's answer as a dict; TokenEndpointError when it failed or answered something else than a mapping."""
    try:
        returned = hook(copy.deepcopy(oauth), copy.deepcopy(cfg))
    except CredentialError:
        raise
    except Exception as exc:
        raise TokenEndpointError(
            f"refresh_credentials() of the component failed for account {account}: {type(exc).__name__}: {exc}",
            account=account,
        ) from None
    returned = run_maybe_async(returned)
    if not isinstance(returned, Mapping):
        raise TokenEndpointError(
            f"refresh_credentials() must return a mapping of credential fields, got {type(returned).__name__}",
            account=account,
        )
    return dict(returned)
