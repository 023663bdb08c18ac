"""sailor-compatible message encryption (docs/protocol.md §5).

AES-256-CBC with PKCS#7 padding; key = SHA-256 of the UTF-8 password; IV = the
16 UTF-8 bytes of the configured IV, the same for every message. Protocol
version 1 carries base64 text of the ciphertext, version 2 the raw bytes.
Without a password, the JSON text passes through unencrypted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from oarlock.errors import ConfigurationError, DecodeError
from oarlock.jsonlimits import loads

_BLOCK = 16


def dumps(value: Any) -> str:
    """JSON text as JavaScript's ``JSON.stringify`` writes it (compact, UTF-8 kept)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class MessageCipher:
    """Encrypts and decrypts message contents; the password never appears in its repr or errors."""

    def __init__(self, password: str | None, iv: str | None) -> None:
        self._cipher: Cipher[modes.CBC] | None = None
        if password:
            if not iv:
                raise ConfigurationError("ELASTICIO_MESSAGE_CRYPTO_IV is required when a crypto password is set")
            iv_bytes = iv.encode("utf-8")
            if len(iv_bytes) != 16:
                raise ConfigurationError(f"ELASTICIO_MESSAGE_CRYPTO_IV must be 16 bytes of UTF-8, got {len(iv_bytes)}")
            key = hashlib.sha256(password.encode("utf-8")).digest()
            # one Cipher for the process: every encryptor()/decryptor() is a fresh context, safe across threads
            self._cipher = Cipher(algorithms.AES(key), modes.CBC(iv_bytes))

    def __repr__(self) -> str:
        return f"MessageCipher(encrypted={self.enabled})"

    @property
    def enabled(self) -> bool:
        return self._cipher is not None

    def encrypt(self, value: Any, protocol_version: int = 1) -> bytes:
        """Encrypt a JSON value; returns the AMQP body for the protocol version."""
        return self.encrypt_text(dumps(value), protocol_version)

    def encrypt_text(self, text: str, protocol_version: int = 1) -> bytes:
        plain = text.encode("utf-8")
        if self._cipher is None:
            return plain
        pad = _BLOCK - len(plain) % _BLOCK  # PKCS#7: 1 to 16 bytes, each holding the count
        encryptor = self._cipher.encryptor()
        raw = encryptor.update(plain + bytes((pad,)) * pad) + encryptor.finalize()
        if protocol_version >= 2:
            return raw
        return base64.b64encode(raw)

    def decrypt(self, body: bytes, protocol_version: int = 1) -> Any:
        """Decrypt an AMQP body into the JSON value it carries; DecodeError names the failing step."""
        text = self.decrypt_text(body, protocol_version)
        return loads(text, what="message", invalid="message is not valid JSON after decryption")

    def decrypt_text(self, body: bytes, protocol_version: int = 1) -> str:
        if self._cipher is None:
            return _utf8(body, "message body")
        if protocol_version >= 2:
            raw = bytes(body)
        else:
            try:
                raw = binascii.a2b_base64(body.strip(), strict_mode=True)
            except (binascii.Error, ValueError):
                raise DecodeError("message body is not valid base64 (protocolVersion 1)") from None
        if not raw or len(raw) % _BLOCK:
            raise DecodeError(
                f"ciphertext length {len(raw)} is not a positive multiple of 16: truncated or not encrypted"
            )
        decryptor = self._cipher.decryptor()
        padded = decryptor.update(raw) + decryptor.finalize()
        pad = padded[-1]
        if not 1 <= pad <= _BLOCK or padded[-pad:] != bytes((pad,)) * pad:
            raise DecodeError("decryption failed (bad padding): wrong password or IV, or corrupted message")
        return _utf8(padded[:-pad], "decrypted message")


def _utf8(data: bytes, what: str) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"{what} is not UTF-8 text: wrong password or IV, or not a message") from None
