"""Sealing: the token fields of stored credentials are encrypted at rest (AES-256-GCM).

The key comes from ``OARLOCK_KEYS_KEY``: 32 random bytes in base64, standard (``+/``) or URL-safe
(``-_``) alphabet, with or without ``=`` padding; generate one with::

    python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"

An unset or empty variable means no key. Anything else that does not decode to exactly 32 bytes
is a :class:`~oarlock.errors.ConfigurationError` naming the variable (never its value).

What is sealed: the fields ``access_token``, ``refresh_token`` and ``id_token`` (:data:`SEALED_FIELDS`)
at the top level of the stored ``oauth`` object and of the stored raw token ``response``. Every
other field (``expires_at``, ``instance_url``, ``scope`` …) stays in clear, so a store can still
be listed and inspected without the key.

Envelope: a sealed field's value is the JSON string ::

    oarlock-sealed:v1:<base64url(nonce || ciphertext || tag)>

where the nonce is 12 fresh random bytes per value, the plaintext is the field's value encoded as
JSON (so a string token comes back as the same string), and the associated data is the JSON text
``["oarlock-sealed:v1", ACCOUNT, "PART.FIELD"]`` (PART is ``oauth`` or ``response``): a sealed
value copied to another account or another field does not open.

Reading: a value without the prefix is returned as it is (a row written in clear before a key
was set: a *mixed* store stays readable, and the row is sealed at its next write or by the
store's ``reseal()``). A sealed value with no key is a :class:`~oarlock.errors.KeyStoreError`
saying that the store holds encrypted credentials and ``OARLOCK_KEYS_KEY`` is not set; one that
the key does not open (the GCM tag fails) is a :class:`~oarlock.errors.KeyStoreError` saying so.
No message ever contains a token, the ciphertext or the key.

Writing without a key stores the tokens in clear, as before, and logs one warning per process
and store.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from oarlock.errors import ConfigurationError, KeyStoreError

KEY_VARIABLE = "OARLOCK_KEYS_KEY"
PREFIX = "oarlock-sealed:v1:"
SEALED_FIELDS = ("access_token", "refresh_token", "id_token")
KEY_BYTES = 32
NONCE_BYTES = 12
GENERATE_HINT = 'python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"'

log = logging.getLogger("oarlock.keys")

_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(subject: str, message: str) -> None:
    """Log ``message`` as a warning the first time this process sees ``subject``."""
    with _warned_lock:
        if subject in _warned:
            return
        _warned.add(subject)
    log.warning(message)


def parse_key(text: str, *, variable: str = KEY_VARIABLE) -> bytes:
    """The 32 key bytes of a base64 text (standard or URL-safe alphabet, padding optional)."""
    compact = text.strip()
    problem = f"{variable} must be {KEY_BYTES} random bytes in base64 (standard or URL-safe alphabet)"
    if not _BASE64.fullmatch(compact):
        raise ConfigurationError(f"{problem}: the value set is not base64; generate one with {GENERATE_HINT}")
    standard = compact.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"{problem}: the value set is not base64; generate one with {GENERATE_HINT}") from None
    if len(key) != KEY_BYTES:
        raise ConfigurationError(
            f"{problem}: the value set decodes to {len(key)} bytes; generate one with {GENERATE_HINT}"
        )
    return key


def key_from_environment(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The key in ``OARLOCK_KEYS_KEY``, or None when it is unset or empty."""
    text = (os.environ if environ is None else environ).get(KEY_VARIABLE, "")
    return parse_key(text) if text.strip() else None


def is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def _associated_data(account: str, part: str, field: str) -> bytes:
    return json.dumps([PREFIX.rstrip(":"), account, f"{part}.{field}"]).encode()


class Sealer:
    """Seals and opens the token fields of one store's rows; ``store`` names it in messages."""

    def __init__(self, key: bytes | None, store: str) -> None:
        if key is not None and (not isinstance(key, bytes) or len(key) != KEY_BYTES):
            raise ConfigurationError(f"the keys store key must be {KEY_BYTES} bytes (see {KEY_VARIABLE})")
        self._aead = AESGCM(key) if key is not None else None
        self.store = store

    @property
    def sealing(self) -> bool:
        return self._aead is not None

    def texts(
        self, account: str, oauth: dict[str, Any], response: dict[str, Any] | None, *, keep_sealed: bool = False
    ) -> tuple[str, str | None]:
        """The JSON texts a store writes for a credential and its raw response, token fields sealed."""
        sealed_oauth = self.seal(account, "oauth", oauth, keep_sealed=keep_sealed)
        sealed_response = self.seal(account, "response", response, keep_sealed=keep_sealed)
        return json.dumps(sealed_oauth), json.dumps(sealed_response) if response else None

    def seal(self, account: str, part: str, obj: dict[str, Any] | None, *, keep_sealed: bool = False) -> Any:
        """A copy of obj with its token fields sealed (obj itself without a key, after one warning).

        ``keep_sealed`` leaves values that are already sealed as they are (re-sealing a mixed row).
        """
        if not obj:
            return obj
        fields = [name for name in SEALED_FIELDS if obj.get(name) is not None]
        if self._aead is None:
            if fields:
                warn_once(
                    f"clear:{self.store}",
                    f"keys store {self.store} stores tokens in clear: set {KEY_VARIABLE} to {KEY_BYTES} random "
                    f"bytes in base64 to encrypt them at rest",
                )
            return obj
        out = dict(obj)
        for name in fields:
            if keep_sealed and is_sealed(obj[name]):
                continue
            nonce = os.urandom(NONCE_BYTES)
            plain = json.dumps(obj[name], ensure_ascii=False).encode()
            sealed = nonce + self._aead.encrypt(nonce, plain, _associated_data(account, part, name))
            out[name] = PREFIX + base64.urlsafe_b64encode(sealed).decode("ascii")
        return out

    def open(self, account: str, part: str, obj: Any) -> Any:
        """A copy of obj with its sealed token fields opened; values in clear are kept."""
        if not isinstance(obj, dict):
            return obj
        fields = [name for name in SEALED_FIELDS if is_sealed(obj.get(name))]
        if not fields:
            return obj
        if self._aead is None:
            raise KeyStoreError(
                f"keys store {self.store} holds encrypted credentials (account {account}) and {KEY_VARIABLE} "
                "is not set: set it to the key they were written with"
            )
        out = dict(obj)
        for name in fields:
            try:
                raw = base64.urlsafe_b64decode(obj[name][len(PREFIX) :].encode("ascii"))
            except (binascii.Error, ValueError, UnicodeEncodeError):
                raise KeyStoreError(
                    f"keys store {self.store}: the encrypted {part}.{name} of account {account} is damaged (not base64)"
                ) from None
            if len(raw) < NONCE_BYTES + 16:
                raise KeyStoreError(
                    f"keys store {self.store}: the encrypted {part}.{name} of account {account} is damaged (too short)"
                )
            try:
                plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _associated_data(account, part, name))
            except InvalidTag:
                raise KeyStoreError(
                    f"keys store {self.store}: {KEY_VARIABLE} does not open the encrypted credentials of account "
                    f"{account} ({part}.{name}): a different key wrote them, or the value was altered or moved"
                ) from None
            try:
                out[name] = json.loads(plain)
            except ValueError:
                raise KeyStoreError(
                    f"keys store {self.store}: the encrypted {part}.{name} of account {account} is damaged"
                ) from None
        return out

    def needs_reseal(self, obj: Any) -> bool:
        """True when obj holds a token field in clear."""
        return isinstance(obj, dict) and any(
            obj.get(name) is not None and not is_sealed(obj.get(name)) for name in SEALED_FIELDS
        )
