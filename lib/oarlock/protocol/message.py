"""The message a function receives and emits (sailor's message shape)."""

from __future__ import annotations

import copy
import os
import random
from dataclasses import dataclass, field
from typing import Any

from oarlock.errors import DecodeError
from oarlock.jsontypes import json_type

_KNOWN_FIELDS = ("id", "body", "headers", "attachments", "passthrough")


_ids = random.Random(os.urandom(32))
# version 4 and the RFC 4122 variant, as uuid.UUID(int=..., version=4) sets them
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_id() -> str:
    """A random (version 4) UUID for message and thread ids.

    Drawn from a seeded in-process generator rather than os.urandom: ids need uniqueness, not
    secrecy, and a syscall per id costs a GIL hand-off on every message of a busy worker.
    """
    digits = (_ids.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET).to_bytes(16, "big").hex()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


@dataclass
class Message:
    """``{id, body, headers, attachments, passthrough}`` plus any extra fields, kept as they came."""

    body: Any = field(default_factory=dict)
    headers: dict[str, Any] = field(default_factory=dict)
    attachments: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    passthrough: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "message") -> Message:
        """Build a message from decoded JSON; a DecodeError names what is wrong with the shape."""
        if not isinstance(data, dict):
            raise DecodeError(f"{where} must be a JSON object, got {json_type(data, article=True)}")
        headers = data.get("headers") or {}
        if not isinstance(headers, dict):
            raise DecodeError(f"{where}.headers must be an object, got {json_type(headers, article=True)}")
        attachments = data.get("attachments") or {}
        if not isinstance(attachments, dict):
            raise DecodeError(f"{where}.attachments must be an object, got {json_type(attachments, article=True)}")
        passthrough = data.get("passthrough")
        if passthrough is not None and not isinstance(passthrough, dict):
            raise DecodeError(f"{where}.passthrough must be an object, got {json_type(passthrough, article=True)}")
        raw_id = data.get("id")
        return cls(
            body=data.get("body", {}),
            headers=dict(headers),
            attachments=dict(attachments),
            id=str(raw_id) if raw_id else new_id(),
            passthrough=passthrough,
            extra={k: v for k, v in data.items() if k not in _KNOWN_FIELDS},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "body": self.body, "headers": self.headers}
        out["attachments"] = self.attachments
        if self.passthrough is not None:
            out["passthrough"] = self.passthrough
        out.update(self.extra)
        return out

    def copy(self) -> Message:
        return copy.deepcopy(self)
