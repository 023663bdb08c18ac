"""The platform's account API: ``PUT {API_URI}/v1/accounts/{id}`` with ``{"keys": …}`` (sailor's route).

Used by the worker when ``ELASTICIO_UPDATE_KEYS_VIA_API`` is set, beside the updateKeys message.
"""

from __future__ import annotations

import logging
from typing import Any

import requests

log = logging.getLogger("oarlock.worker")


class AccountsApi:
    def __init__(self, api_uri: str, username: str | None, key: str | None) -> None:
        self.api_uri = api_uri.rstrip("/")
        self._auth = (username or "", key or "")

    def put_keys(self, payload: dict[str, Any]) -> None:
        """PUT the credential of an updateKeys payload; a failure is logged (the update also goes over AMQP)."""
        url = f"{self.api_uri}/v1/accounts/{payload.get('account')}"
        try:
            answer = requests.put(url, json={"keys": {"oauth": payload.get("oauth")}}, auth=self._auth, timeout=30)
            if answer.status_code >= 400:
                log.error("PUT %s answered %s: the update goes over AMQP only", url, answer.status_code)
        except requests.RequestException as exc:
            log.error("PUT %s failed (%s): the update goes over AMQP only", url, type(exc).__name__)
