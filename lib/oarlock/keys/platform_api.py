"""The platform's account API: ``PUT {API_URI}/v1/accounts/{id}`` with ``{"keys": …}`` (sailor's route).

This is how a sailor platform persists a refreshed credential (sailor-nodejs 2.7.8's
``updateKeys``): basic auth with ``API_USERNAME`` / ``API_KEY``, the account id from the step
cfg's ``_account``, retried like sailor's REST client (3 attempts about 1 s apart on 5xx and
network errors; a 4xx is final). :meth:`AccountsApi.put_keys` returns when the platform
answered 2xx, else raises :class:`~oarlock.errors.KeyStoreError` naming the account, the
status and how many attempts were made: the worker turns that into an error event and a
reject, never an ack. One pooled keep-alive session serves every PUT of the process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests
import requests.adapters

from oarlock.errors import KeyStoreError

log = logging.getLogger("oarlock.platform_api")
ATTEMPTS = 3
PAUSE_SECONDS = 1.0
TIMEOUT = (10.0, 30.0)


class AccountsApi:
    def __init__(
        self,
        api_uri: str,
        username: str | None,
        key: str | None,
        *,
        attempts: int = ATTEMPTS,
        pause_seconds: float = PAUSE_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_uri = api_uri.rstrip("/")
        self.attempts = max(1, attempts)
        self.pause_seconds = pause_seconds
        self._sleep = sleep
        self._session = requests.Session()
        self._session.auth = (username or "", key or "")
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def url_for(self, account: str) -> str:
        return f"{self.api_uri}/v1/accounts/{quote(account, safe='')}"

    def put_keys(self, account: str, keys: dict[str, Any]) -> None:
        """PUT ``{"keys": keys}`` for ``account``; KeyStoreError when the platform did not take it."""
        url = self.url_for(account)
        reason = "no attempt"
        for attempt in range(1, self.attempts + 1):
            try:
                answer = self._session.put(url, json={"keys": keys}, timeout=TIMEOUT)
            except requests.RequestException as exc:
                reason = f"{type(exc).__name__} (network)"
            else:
                _ = answer.content  # read it all: the connection goes back to the pool
                if answer.status_code < 300:
                    return
                reason = f"HTTP {answer.status_code}"
                if answer.status_code < 500:
                    break  # a 4xx is final: retrying sends the same request to the same refusal
            if attempt < self.attempts:
                log.warning("PUT %s failed (%s), attempt %s of %s: retrying", url, reason, attempt, self.attempts)
                self._sleep(self.pause_seconds)
        else:
            attempt = self.attempts
        raise KeyStoreError(
            f"the platform did not store the refreshed credential of account {account}: "
            f"PUT {url} answered {reason} after {attempt} attempt{'s' if attempt > 1 else ''}"
        )

    def close(self) -> None:
        self._session.close()


def platform_keys(payload: dict[str, Any]) -> dict[str, Any]:
    """What the platform stores under ``keys``: the payload without oarlock's bookkeeping (``account``,
    ``version``, ``response``, ``persist``): the merged token set as ``oauth`` and whatever a component
    emitted beside it (sailor PUTs the emitted object)."""
    return {
        key: value
        for key, value in payload.items()
        if key not in ("account", "version", "response", "persist", "oauth2")
    }
