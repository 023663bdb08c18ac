"""Secret redaction for logs, error events and exception messages.

Two layers:

- by key: values under secret-looking keys are masked in any JSON-like structure, and in text
  (``key=value`` form fields, ``"key": "value"`` JSON/repr fields). A key is recognised in any
  spelling — ``client_secret``, ``clientSecret``, ``ClientSecret``, ``client-secret``,
  ``CLIENT_SECRET``, ``clientsecret`` — see :func:`is_secret_key`; the fields a component.json
  declares with ``viewClass: PasswordFieldView`` are added with :func:`register_secret_keys` /
  :func:`register_password_fields`;
- by value: every secret value oarlock has seen is registered once and masked wherever it
  appears in text. Values come in two classes:

  * long-lived secrets (:func:`register_secret`: the crypto password, the API key, client
    secrets, password-field values, anything under a secret key other than a token) are never
    evicted;
  * rotated tokens (:func:`register_token`, and the values under ``access_token`` /
    ``refresh_token`` / ``id_token`` keys in :func:`register_credential`) are bounded: the newest
    :data:`MAX_TOKENS` are kept, the oldest evicted. A value seen under a token key is a token
    even if it was also registered with :func:`register_secret` (the token endpoint registers
    what it receives before the credential manager does), so refreshes cannot grow the
    never-evicted class.

Registering a value is cheap (a few dict/tuple operations, no regex is compiled): values are
indexed by their last 8 characters (4 for values of 4 to 7 characters) and text is scanned once,
each end position looked up in that index; while few values are registered they are simply
searched for with ``str.find``. Every occurrence of every registered value is masked; occurrences
that overlap (one secret inside another, or two overlapping) become a single mask, so no part of
a longer secret survives its shorter substring being masked first.
"""

from __future__ import annotations

import collections
import functools
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
_MIN_SECRET_LEN = 4
#: rotated tokens kept for masking by value (the newest; the oldest are evicted)
MAX_TOKENS = 10_000
#: up to this many registered values, text is searched for each value with str.find (C speed, ~0.3 µs
#: per value on 2 KB); above it, one scan of the text against the suffix index (~0.2-0.3 ms on 2 KB)
_FIND_LIMIT = 256
_LONG_KEY = 8
_SHORT_KEY = _MIN_SECRET_LEN

#: keys recognised as secret, normalised (lowercase words joined by ``_``); every spelling of them
#: counts (see :func:`normalise_key`). Kept from before: the header names and the elastic.io ones.
SECRET_KEYS: frozenset[str] = frozenset(
    {
        "access_token",
        "refresh_token",
        "id_token",
        "session_token",
        "client_secret",
        "password",
        "passwd",
        "passphrase",
        "secret",
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "api_key",
        "apikey",
        "x_api_key",
        "private_key",
        "token",
        "message_crypto_password",
        "elasticio_message_crypto_password",
        "elasticio_api_key",
        "code",
        "authorization_code",
        "auth_code",
        "assertion",
        "client_assertion",
    }
)
#: the values under these keys are rotated tokens (bounded by-value registry)
TOKEN_KEYS: frozenset[str] = frozenset({"access_token", "refresh_token", "id_token"})
#: a key whose last word is one of these is secret (``session_token``, ``apiSecret``, ``dbPassword``)
_SECRET_LAST_WORDS = frozenset({"token", "secret", "password", "passwd", "passphrase", "authorization", "cookie"})
#: a key ending in ``key`` is secret when the word before is one of these (``apiKey``, ``privateKey``)
_KEY_QUALIFIERS = frozenset({"api", "private", "secret", "signing", "encryption", "master"})
_COMPACT_SECRET_KEYS = frozenset(k.replace("_", "") for k in SECRET_KEYS)
_COMPACT_TOKEN_KEYS = frozenset(k.replace("_", "") for k in TOKEN_KEYS)
_COMPACT_SUFFIXES = ("password", "passwd", "passphrase")

_NOT_SECRET, _SECRET, _TOKEN = 0, 1, 2
_WORD_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

_AUTH_HEADER_RE = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/=]+")
_FORM_FIELD_RE = re.compile(r"(?<![\w.\-])([A-Za-z][\w.\-]{0,99})=(?:\"[^\"]*\"|'[^']*'|[^&\s\"']+)")
_JSON_FIELD_RE = re.compile(r"([\"'])([A-Za-z][\w.\- ]{0,99})\1(\s*:\s*)([\"'])((?:\\.|(?!\4).)*)\4")


# -- keys --------------------------------------------------------------------------------------------
def key_words(key: str) -> tuple[str, ...]:
    """The lowercase words of a key in any case style: ``clientSecret`` / ``CLIENT-SECRET`` -> client, secret."""
    return tuple(word.lower() for word in _WORD_RE.findall(key))


def normalise_key(key: str) -> str:
    """A key in snake_case whatever its style: ``ClientSecret``, ``client-secret`` -> ``client_secret``."""
    return "_".join(key_words(key))


@functools.lru_cache(maxsize=8192)
def _classify(key: str) -> tuple[str, int]:
    """(compact form, class) of a key; the class ignores the keys components add."""
    words = key_words(key)
    compact = "".join(words)
    while words and words[-1].isdigit():  # password2, token_v... keep the words before a trailing number
        words = words[:-1]
    joined = "_".join(words)
    if joined in TOKEN_KEYS or compact in _COMPACT_TOKEN_KEYS:
        return compact, _TOKEN
    if not words:
        return compact, _NOT_SECRET
    if (
        joined in SECRET_KEYS
        or compact in _COMPACT_SECRET_KEYS
        or words[-1] in _SECRET_LAST_WORDS
        or compact.endswith(_COMPACT_SUFFIXES)
        or (words[-1] == "key" and len(words) > 1 and (words[-2] in _KEY_QUALIFIERS or "secret" in words))
    ):
        return compact, _SECRET
    return compact, _NOT_SECRET


class _ExtraKeys:
    """Keys a component declares as passwords (process-wide, compact forms; copy on write)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.compact: frozenset[str] = frozenset()

    def add(self, names: Iterable[str]) -> None:
        new = {"".join(key_words(str(name))) for name in names} - {""}
        with self._lock:
            if not new <= self.compact:
                self.compact = self.compact | new

    def clear(self) -> None:
        with self._lock:
            self.compact = frozenset()


_extra_keys = _ExtraKeys()


def is_secret_key(key: str) -> bool:
    """True for keys whose values are secrets, in any case style (``refreshToken``, ``API_KEY``, ``X-Api-Key``).

    Not secret: ``token_type``, ``expires_in``, ``token_url``, ``secretary``, ``accessKeyId``,
    ``private_key_id``, ``max_tokens``: the last word decides (``…_token``, ``…Secret``,
    ``…Password``, ``apiKey``, ``privateKey``, ``secretAccessKey``).
    """
    compact, kind = _classify(key)
    return kind != _NOT_SECRET or compact in _extra_keys.compact


def is_token_key(key: str) -> bool:
    """True for the keys of rotated tokens: access_token, refresh_token, id_token in any style."""
    return _classify(key)[1] == _TOKEN


def register_secret_keys(names: Iterable[str]) -> None:
    """Treat these keys (a component's password fields) as secret keys from now on, in this process."""
    _extra_keys.add(names)


# -- the by-value registry ---------------------------------------------------------------------------
class SecretRegistry:
    """Secret values to mask in text: long-lived ones never evicted, rotated tokens bounded to ``max_tokens``.

    Safe to use from many threads; adding costs a few dict operations whatever the size.
    """

    def __init__(self, max_tokens: int = MAX_TOKENS, *, find_limit: int = _FIND_LIMIT) -> None:
        self.max_tokens = max_tokens
        self.find_limit = find_limit
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._tokens: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: last 8 (resp. 4) characters -> the values ending with them, longest first
        self._long: dict[str, tuple[str, ...]] = {}
        self._short: dict[str, tuple[str, ...]] = {}
        #: every value (in no order) while there are at most ``find_limit`` of them; then None for good
        self._few: tuple[str, ...] | None = () if find_limit > 0 else None

    def add_secret(self, value: Any) -> None:
        """A long-lived secret (never evicted) unless it is already known as a rotated token."""
        if not isinstance(value, str) or len(value) < _MIN_SECRET_LEN:
            return
        with self._lock:
            if value in self._secrets or value in self._tokens:
                return
            self._secrets.add(value)
            self._index(value)

    def add_token(self, value: Any) -> None:
        """A rotated token: kept among the newest ``max_tokens`` (a long-lived entry becomes a token)."""
        if not isinstance(value, str) or len(value) < _MIN_SECRET_LEN:
            return
        with self._lock:
            if value in self._tokens:
                self._tokens.move_to_end(value)
                return
            self._tokens[value] = None
            if value in self._secrets:
                self._secrets.discard(value)  # already indexed
            else:
                self._index(value)
            while len(self._tokens) > self.max_tokens:
                oldest, _ = self._tokens.popitem(last=False)
                self._unindex(oldest)

    def add_credential(self, data: Any) -> None:
        """Every string under a secret key of a (nested) structure: a token under a token key, else a secret."""
        if isinstance(data, dict):
            for key, value in data.items():
                text_key = str(key)
                if not is_secret_key(text_key):
                    self.add_credential(value)
                elif is_token_key(text_key):
                    self.add_token(value)
                else:
                    self.add_secret(value)
        elif isinstance(data, list):
            for item in data:
                self.add_credential(item)

    def counts(self) -> dict[str, int]:
        """How many values are registered: ``secrets`` (long-lived) and ``tokens`` (rotated)."""
        with self._lock:
            return {"secrets": len(self._secrets), "tokens": len(self._tokens)}

    def __contains__(self, value: object) -> bool:
        return value in self._secrets or value in self._tokens

    def clear(self) -> None:
        with self._lock:
            self._secrets.clear()
            self._tokens.clear()
            self._long, self._short = {}, {}
            self._few = () if self.find_limit > 0 else None

    # under the lock
    def _table(self, value: str) -> tuple[dict[str, tuple[str, ...]], str]:
        if len(value) >= _LONG_KEY:
            return self._long, value[-_LONG_KEY:]
        return self._short, value[-_SHORT_KEY:]

    def _index(self, value: str) -> None:
        table, key = self._table(value)
        bucket = table.get(key, ())
        table[key] = tuple(sorted((*bucket, value), key=len, reverse=True))
        if self._few is not None:  # the count only falls on clear(): an eviction follows an addition
            self._few = (*self._few, value) if len(self._secrets) + len(self._tokens) <= self.find_limit else None

    def _unindex(self, value: str) -> None:
        table, key = self._table(value)
        bucket = tuple(v for v in table.get(key, ()) if v != value)
        if bucket:
            table[key] = bucket
        else:
            table.pop(key, None)
        if self._few is not None:
            self._few = tuple(v for v in self._few if v != value)

    # lock-free readers: every structure read here is replaced or changed by one atomic operation
    def spans(self, text: str) -> list[tuple[int, int]]:
        """The (start, end) of every occurrence of a registered value in text, overlapping ones merged."""
        found: list[tuple[int, int]] = []
        few = self._few
        if few is not None:
            for value in few:
                at = text.find(value)
                while at >= 0:
                    found.append((at, at + len(value)))
                    at = text.find(value, at + 1)
        else:
            for table, width in ((self._long, _LONG_KEY), (self._short, _SHORT_KEY)):
                if table:
                    _scan(text, table, width, found)
        if len(found) < 2:
            return found
        found.sort()
        merged = [found[0]]
        for start, end in found[1:]:
            last_start, last_end = merged[-1]
            if start < last_end:
                if end > last_end:
                    merged[-1] = (last_start, end)
            else:
                merged.append((start, end))
        return merged

    def sub(self, text: str) -> str:
        """text with every registered value masked."""
        if len(text) < _MIN_SECRET_LEN:
            return text
        spans = self.spans(text)
        if not spans:
            return text
        parts, at = [], 0
        for start, end in spans:
            parts.append(text[at:start])
            parts.append(MASK)
            at = end
        parts.append(text[at:])
        return "".join(parts)


def _scan(text: str, table: Mapping[str, tuple[str, ...]], width: int, found: list[tuple[int, int]]) -> None:
    get = table.get
    startswith = text.startswith
    for end in range(width, len(text) + 1):
        bucket = get(text[end - width : end])
        if bucket is not None:
            for value in bucket:  # longest first: a shorter one with the same end lies inside it
                start = end - len(value)
                if start >= 0 and startswith(value, start):
                    found.append((start, end))
                    break


_registry = SecretRegistry()


def register_secret(value: Any) -> None:
    """Remember a long-lived secret value (never evicted) so that it is masked wherever it appears later."""
    _registry.add_secret(value)


def register_secrets(values: Iterable[Any]) -> None:
    for value in values:
        register_secret(value)


def register_token(value: Any) -> None:
    """Remember a rotated token (access/refresh/id token): masked while among the newest MAX_TOKENS."""
    _registry.add_token(value)


def register_credential(data: Any) -> None:
    """Register every value under a secret key of a (nested) structure: the values under access_token,
    refresh_token and id_token keys as rotated tokens, the others as long-lived secrets."""
    _registry.add_credential(data)


def register_password_fields(cfg: Mapping[str, Any], fields: Iterable[str]) -> None:
    """A component's password fields (``Component.password_fields()``): their keys become secret keys and
    the values cfg holds under them long-lived secrets. Call it for every new cfg of that component."""
    names = frozenset(fields)
    if not names:
        return
    register_secret_keys(names)
    for name in names:
        _register_strings(cfg.get(name))


def _register_strings(value: Any) -> None:
    if isinstance(value, str):
        _registry.add_secret(value)
    elif isinstance(value, dict):
        for item in value.values():
            _register_strings(item)
    elif isinstance(value, list):
        for item in value:
            _register_strings(item)


def registered_counts() -> dict[str, int]:
    """How many values this process masks by value: ``secrets`` (never evicted) and ``tokens`` (bounded)."""
    return _registry.counts()


# -- redaction ---------------------------------------------------------------------------------------
def _mask_form_field(match: re.Match[str]) -> str:
    return f"{match.group(1)}={MASK}" if is_secret_key(match.group(1)) else match.group(0)


def _mask_json_field(match: re.Match[str]) -> str:
    if not is_secret_key(match.group(2)):
        return match.group(0)
    quote, key, colon, value_quote = match.group(1), match.group(2), match.group(3), match.group(4)
    return f"{quote}{key}{quote}{colon}{value_quote}{MASK}{value_quote}"


def redact_text(text: str) -> str:
    """Mask known secret values, bearer/basic credentials and secret form/JSON fields in text."""
    text = _registry.sub(text)
    text = _AUTH_HEADER_RE.sub(lambda m: f"{m.group(1)} {MASK}", text)
    if "=" in text:
        text = _FORM_FIELD_RE.sub(_mask_form_field, text)
    if ":" in text:
        text = _JSON_FIELD_RE.sub(_mask_json_field, text)
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
    _extra_keys.clear()
