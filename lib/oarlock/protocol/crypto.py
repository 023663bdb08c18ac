"""sailor-compatible message encryption (docs/protocol.md §5).

AES-256-CBC with PKCS#7 padding; key = SHA-256 of the UTF-8 password; IV = the
16 UTF-8 bytes of the configured IV, the same for every message. Protocol
version 1 carries base64 text of the ciphertext, version 2 the raw bytes.
Without a password, the JSON text passes through unencrypted.

Password rotation: a cipher may also hold the previous password (and IV). Messages are always
encrypted with the current one; a body the current one cannot decrypt is tried once more with the
previous one, so messages already queued under the old password still decrypt. The current key is
tried first: a message it decrypts costs nothing more than without rotation.

JSON as sailor-nodejs writes and reads it: :func:`dumps` writes ``null`` for NaN and ±Infinity, and
:func:`encode_text` escapes a lone surrogate as ``\\udXXX``, as ``JSON.stringify`` does; a protocol 1
body is base64 as ``Buffer.from(s, 'base64')`` reads it (padding optional, url-safe ``-``/``_``,
whitespace and line breaks ignored). Each is a fallback taken only when the fast path fails.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from oarlock.errors import ConfigurationError, DecodeError
from oarlock.jsonlimits import loads

if TYPE_CHECKING:
    from oarlock.protocol.settings import Settings

_BLOCK = 16
PASSWORD_ENV = "ELASTICIO_MESSAGE_CRYPTO_PASSWORD"
IV_ENV = "ELASTICIO_MESSAGE_CRYPTO_IV"
PREVIOUS_PASSWORD_ENV = "ELASTICIO_MESSAGE_CRYPTO_PASSWORD_PREVIOUS"
PREVIOUS_IV_ENV = "ELASTICIO_MESSAGE_CRYPTO_IV_PREVIOUS"
T = TypeVar("T")


# json.dumps builds an encoder per call; one built once writes the same text (encode() keeps no state).
# allow_nan=False: a non-finite float raises instead of writing the NaN/Infinity tokens JSON.parse refuses
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(value: Any) -> str:
    """JSON text as JavaScript's ``JSON.stringify`` writes it: compact, UTF-8 kept, ``null`` for NaN and
    ±Infinity at any depth (a non-finite float key is the string ``"NaN"``/``"Infinity"``/``"-Infinity"``).

    A lone surrogate stays in the text as it is: :func:`encode_text` (every encryption) escapes it.
    """
    try:
        return _ENCODER.encode(value)
    except ValueError:  # a non-finite float, or a cycle (the sanitising pass raises that one again)
        return _ENCODER.encode(_finite(value))


def encode_text(text: str) -> bytes:
    """UTF-8 of a JSON text; a lone surrogate (which UTF-8 cannot hold) is written as ``\\udXXX``, lower-case
    hex as ``JSON.stringify`` writes it, and reads back as the same string. Scans only when encoding fails."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub(_escape, text).encode("utf-8")


def _escape(match: re.Match[str]) -> str:
    # outside its strings a JSON text is ASCII, so every surrogate is inside a string, where this escape is valid
    return f"\\u{ord(match.group()):04x}"


def _finite(value: Any) -> Any:
    """A copy of ``value`` with every non-finite float ``None`` (iterative: no recursion on deep values).

    Containers are copied as the encoder reads them (dict, list, tuple as a list); anything else is kept for the
    encoder to write or refuse. A container inside itself raises the encoder's own ValueError."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if not isinstance(value, (dict, list, tuple)):
        return value
    root: Any = {} if isinstance(value, dict) else []
    on_path = {id(value)}
    stack: list[tuple[Any, Any, Any]] = [(value, root, _items(value))]
    while stack:
        source, copy, items = stack[-1]
        for key, child in items:
            if isinstance(child, (dict, list, tuple)):
                if id(child) in on_path:
                    raise ValueError("Circular reference detected")
                child_copy: Any = {} if isinstance(child, dict) else []
                _put(copy, key, child_copy)
                on_path.add(id(child))
                stack.append((child, child_copy, _items(child)))
                break
            _put(copy, key, None if isinstance(child, float) and not math.isfinite(child) else child)
        else:
            stack.pop()
            on_path.discard(id(source))
    return root


def _items(container: Any) -> Any:
    if isinstance(container, dict):
        return iter(container.items())
    return ((None, item) for item in container)


def _put(copy: Any, key: Any, value: Any) -> None:
    if isinstance(copy, dict):
        if isinstance(key, float) and not math.isfinite(key):  # String(NaN) etc., the key JSON.stringify writes
            key = "NaN" if math.isnan(key) else "Infinity" if key > 0 else "-Infinity"
        copy[key] = value
    else:
        copy.append(value)


class MessageCipher:
    """Encrypts and decrypts message contents; the password never appears in its repr or errors.

    ``previous_password`` (and ``previous_iv``, the current IV when not given) is the password being
    rotated out: tried only on a body the current one cannot decrypt, never used to encrypt.
    """

    def __init__(
        self,
        password: str | None,
        iv: str | None,
        *,
        previous_password: str | None = None,
        previous_iv: str | None = None,
    ) -> None:
        self._cipher = _aes(password, iv, IV_ENV)
        previous_iv_name = IV_ENV if iv and not previous_iv else PREVIOUS_IV_ENV  # the variable whose IV is used
        self._previous = _aes(previous_password, previous_iv or iv, previous_iv_name)

    @classmethod
    def from_settings(cls, settings: Settings) -> MessageCipher:
        """The cipher of a worker's environment: the current password and, while rotating, the previous one."""
        return cls(
            settings.message_crypto_password,
            settings.message_crypto_iv,
            previous_password=settings.message_crypto_password_previous,
            previous_iv=settings.message_crypto_iv_previous,
        )

    def __repr__(self) -> str:
        rotating = ", previous=True" if self._previous is not None else ""
        return f"MessageCipher(encrypted={self.enabled}{rotating})"

    @property
    def enabled(self) -> bool:
        return self._cipher is not None

    @property
    def rotating(self) -> bool:
        """A previous password is configured (ELASTICIO_MESSAGE_CRYPTO_PASSWORD_PREVIOUS)."""
        return self._previous is not None

    def encrypt(self, value: Any, protocol_version: int = 1) -> bytes:
        """Encrypt a JSON value; returns the AMQP body for the protocol version."""
        return self.encrypt_text(dumps(value), protocol_version)

    def encrypt_text(self, text: str, protocol_version: int = 1) -> bytes:
        plain = encode_text(text)
        if self._cipher is None:
            return plain
        pad = _BLOCK - len(plain) % _BLOCK  # PKCS#7: 1 to 16 bytes, each holding the count
        encryptor = self._cipher.encryptor()
        raw = encryptor.update(plain + bytes((pad,)) * pad) + encryptor.finalize()
        if protocol_version >= 2:
            return raw
        return base64.b64encode(raw)

    def decrypt(self, body: bytes, protocol_version: int = 1) -> Any:
        """Decrypt an AMQP body into the JSON value it carries; DecodeError names the failing step.

        With a previous password, a body the current one fails on (at any step: a wrong key may
        leave valid padding over garbage) is decrypted with the previous one.
        """
        try:
            return _json(_decrypt_text(self._cipher, body, protocol_version))
        except DecodeError as exc:
            if self._previous is None:
                raise
            return self._with_previous(exc, lambda: _json(_decrypt_text(self._previous, body, protocol_version)))

    def decrypt_text(self, body: bytes, protocol_version: int = 1) -> str:
        try:
            return _decrypt_text(self._cipher, body, protocol_version)
        except DecodeError as exc:
            if self._previous is None:
                raise
            return self._with_previous(exc, lambda: _decrypt_text(self._previous, body, protocol_version))

    @staticmethod
    def _with_previous(current: DecodeError, attempt: Callable[[], T]) -> T:
        try:
            return attempt()
        except DecodeError as exc:
            also = "the same with" if str(exc) == str(current) else f"{exc}, with"
            raise DecodeError(f"{current} ({also} the previous password {PREVIOUS_PASSWORD_ENV})") from None


def _aes(password: str | None, iv: str | None, iv_name: str) -> Cipher[modes.CBC] | None:
    """One Cipher for the process (every encryptor()/decryptor() is a fresh context, safe across threads)."""
    if not password:
        return None
    if not iv:
        raise ConfigurationError(f"{iv_name} is required when a crypto password is set")
    iv_bytes = iv.encode("utf-8")
    if len(iv_bytes) != 16:
        raise ConfigurationError(f"{iv_name} must be 16 bytes of UTF-8, got {len(iv_bytes)}")
    key = hashlib.sha256(password.encode("utf-8")).digest()
    return Cipher(algorithms.AES(key), modes.CBC(iv_bytes))


def _json(text: str) -> Any:
    return loads(text, what="message", invalid="message is not valid JSON after decryption")


def _decrypt_text(cipher: Cipher[modes.CBC] | None, body: bytes, protocol_version: int) -> str:
    if cipher is None:
        return _utf8(body, "message body")
    raw = bytes(body) if protocol_version >= 2 else _base64(body)
    if not raw or len(raw) % _BLOCK:
        raise DecodeError(f"ciphertext length {len(raw)} is not a positive multiple of 16: truncated or not encrypted")
    decryptor = cipher.decryptor()
    padded = decryptor.update(raw) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= _BLOCK or padded[-pad:] != bytes((pad,)) * pad:
        raise DecodeError("decryption failed (bad padding): wrong password or IV, or corrupted message")
    return _utf8(padded[:-pad], "decrypted message")


_URL_SAFE = bytes.maketrans(b"-_", b"+/")


def _base64(body: bytes) -> bytes:
    """The bytes of a protocol 1 body: canonical base64 first (most bodies), then the forms sailor's
    ``Buffer.from(s, 'base64')`` also reads: no padding, url-safe ``-``/``_``, whitespace or line breaks inside."""
    try:
        return binascii.a2b_base64(body.strip(), strict_mode=True)
    except (binascii.Error, ValueError):
        pass
    text = b"".join(bytes(body).split()).translate(_URL_SAFE).rstrip(b"=")
    try:
        if text:  # nothing but padding is not base64
            return binascii.a2b_base64(text + b"=" * (-len(text) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        pass
    raise DecodeError("message body is not valid base64 (protocolVersion 1)")


def _utf8(data: bytes, what: str) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"{what} is not UTF-8 text: wrong password or IV, or not a message") from None
