"""Secret redaction for logs, error events and exception messages.

Two layers:
- by key: values under secret-looking keys (``access_token``, ``refresh_token``,
  ``client_secret``, ``password``, ``Authorization`` …) are masked in any
  JSON-like structure;
- by value: every secret value oarlock has seen (tokens, rotated ones too, the
  crypto password, client secrets) is registered once and masked wherever it
  appears in text.
"""

from __future__ import annotations

import collections
import re
import threading
from collections.abc import Iterable
from typing import Any

MASK = "***"
_MIN_SECRET_LEN = 4

SECRET_KEYS: frozenset[str] = frozenset(
    {
        "access_token",
        "refresh_token",
        "id_token",
        "client_secret",
        "password",
        "secret",
        "authorization",
        "proxy-authorization",
        "api_key",
        "apikey",
        "x-api-key",
        "token",
        "message_crypto_password",
        "elasticio_message_crypto_password",
        "elasticio_api_key",
        "code",
        "assertion",
        "client_assertion",
    }
)

_AUTH_HEADER_RE = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/=]+")
_FORM_SECRET_RE = re.compile(r"(?i)\b(access_token|refresh_token|id_token|client_secret|password|code)=([^&\s\"']+)")
_JSON_SECRET_RE = re.compile(
    r"(?i)([\"'](?:access_token|refresh_token|id_token|client_secret|password|authorization)[\"']\s*:\s*)"
    r"([\"'])((?:\\.|(?!\2).)*)\2"
)


_MAX_SECRETS = 5000


class _Registry:
    """The secret values seen, newest kept when there are more than ``_MAX_SECRETS`` (a long-running worker
    sees a new token at every refresh of every account)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: Any) -> None:
        if not isinstance(value, str) or len(value) < _MIN_SECRET_LEN:
            return
        with self._lock:
            if value in self._values:
                self._values.move_to_end(value)
                return
            self._values[value] = None
            while len(self._values) > _MAX_SECRETS:
                self._values.popitem(last=False)
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def sub(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None:
            return text
        return pattern.sub(MASK, text)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._pattern = None


_registry = _Registry()


def register_secret(value: Any) -> None:
    """Remember a secret value so that it is masked wherever it appears later."""
    _registry.add(value)


def register_secrets(values: Iterable[Any]) -> None:
    for value in values:
        register_secret(value)


def register_credential(data: Any) -> None:
    """Register every value under a secret key of a (nested) credential structure."""
    if isinstance(data, dict):
        for key, value in data.items():
            if is_secret_key(str(key)):
                register_secret(value)
            else:
                register_credential(value)
    elif isinstance(data, list):
        for item in data:
            register_credential(item)


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return lowered in SECRET_KEYS or lowered.endswith(("_token", "_secret", "password"))


def redact_text(text: str) -> str:
    """Mask known secret values, bearer/basic credentials and secret form/JSON fields in text."""
    text = _registry.sub(text)
    text = _AUTH_HEADER_RE.sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _FORM_SECRET_RE.sub(lambda m: f"{m.group(1)}={MASK}", text)
    text = _JSON_SECRET_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}{m.group(2)}", text)
    return text


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with secret keys masked and secret values removed from strings."""
    if isinstance(value, dict):
        return {k: (MASK if is_secret_key(str(k)) and v not in (None, "") else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redact(v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


def _forget_all_for_tests() -> None:
    _registry.clear()
