"""The platform side of updateKeys over RabbitMQ: consume, decrypt, persist (newest wins), then ack."""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

import pika
import pika.exceptions

from oarlock.errors import DecodeError, KeyStoreError, TransportError
from oarlock.keys.store import KeyStore, apply_update_keys
from oarlock.protocol.crypto import MessageCipher
from oarlock.redact import redact_text

log = logging.getLogger("oarlock.keys.service")


class KeysService:
    def __init__(self, store: KeyStore, amqp_uri: str, queue: str, cipher: MessageCipher) -> None:
        self.store = store
        self.amqp_uri = amqp_uri
        self.queue = queue
        self.cipher = cipher
        self.stored = 0
        self.refused = 0
        self.rejected = 0
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True

    def handle(self, body: bytes, headers: dict[str, Any]) -> bool:
        """Decode and persist one message; True if it was written, False if older; raises on bad input."""
        version = int(headers.get("protocolVersion") or 1)
        payload = self.cipher.decrypt(body, version)
        if not isinstance(payload, dict):
            raise DecodeError("an updateKeys message must be a JSON object")
        return apply_update_keys(self.store, payload)

    def run(self, *, burst: bool = False) -> int:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.amqp_uri))
        except pika.exceptions.AMQPError as exc:
            raise TransportError(f"cannot connect to the broker: {type(exc).__name__}") from None
        channel = connection.channel()
        channel.basic_qos(prefetch_count=20)
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: FrameType | None) -> None:
            self.stop()

        signal.signal(signal.SIGTERM, on_term)
        try:
            for method, properties, body in channel.consume(self.queue, inactivity_timeout=0.5):
                if method is None:
                    if burst or self._stopping:
                        break
                    continue
                self._one(channel, method, properties, body)
                if self._stopping:
                    break
            channel.cancel()
        finally:
            signal.signal(signal.SIGTERM, previous)
            connection.close()
        return self.stored

    def _one(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            written = self.handle(body, dict(properties.headers or {}))
        except (DecodeError, KeyStoreError) as exc:
            self.rejected += 1
            log.error("updateKeys message rejected: %s", redact_text(str(exc)))
            channel.basic_reject(method.delivery_tag, requeue=False)
            return
        if written:
            self.stored += 1
        else:
            self.refused += 1
            log.info("updateKeys message older than the stored credential: not written")
        channel.basic_ack(method.delivery_tag)
