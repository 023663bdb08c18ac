"""A throwaway exchange and queues on a real RabbitMQ, for tests: the pika half of :mod:`oarlock.testing`.

This package sits below the protocol, so the sandbox does not know how messages are encrypted:
it is given a cipher (anything with ``encrypt(value, protocol_version)`` and
``decrypt(body, protocol_version)``, in practice :class:`oarlock.protocol.crypto.MessageCipher`)
and the password and IV that cipher was built from (for a worker's environment).
:class:`oarlock.testing.BrokerSandbox` builds both from a password and an IV.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

import pika
import pika.adapters.blocking_connection
import pika.spec

from oarlock.amqp.tls import AmqpTls, url_parameters

DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/%2F"
PASSWORD = "testCryptoPassword"
IV = "iv=any16_symbols"
OUTPUTS = ("data", "error", "rebound", "snapshot", "updateKeys", "reply")


class SandboxCipher(Protocol):
    """What the sandbox needs of a message cipher."""

    def encrypt(self, value: Any, protocol_version: int) -> bytes: ...

    def decrypt(self, body: bytes, protocol_version: int) -> Any: ...


CipherT = TypeVar("CipherT", bound=SandboxCipher)


@dataclass
class Received:
    routing_key: str
    properties: pika.spec.BasicProperties
    body: bytes
    cipher: SandboxCipher

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})

    def decrypted(self) -> Any:
        return self.cipher.decrypt(self.body, int(self.headers.get("protocolVersion") or 1))

    def json(self) -> Any:
        return json.loads(self.body)


class BrokerSandbox(Generic[CipherT]):
    """Declares a uniquely named exchange, an input queue and one bound output queue per routing key.

    ``cipher`` encrypts inputs and decrypts outputs; ``password`` and ``iv`` (what it was built
    from) go into the worker environment of :meth:`env`.
    """

    def __init__(
        self,
        amqp_uri: str = DEFAULT_AMQP_URI,
        *,
        cipher: CipherT,
        password: str | None,
        iv: str | None,
        prefix: str = "oarlock-test",
    ) -> None:
        self.amqp_uri = amqp_uri
        self.cipher = cipher
        self.password, self.iv = password, iv
        self.id = uuid.uuid4().hex[:10]
        self.exchange = f"{prefix}-{self.id}"
        self.input_queue = f"{prefix}-{self.id}-in"
        self.queues = {name: f"{prefix}-{self.id}-{name}" for name in OUTPUTS}
        self.routing_keys = {name: f"{self.id}.{name}" for name in OUTPUTS}
        self._connection: pika.BlockingConnection | None = None
        self._channel: pika.adapters.blocking_connection.BlockingChannel | None = None

    # -- setup -------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        # amqps:// is verified as the worker's transport does it (ELASTICIO_AMQP_TLS_*)
        self._connection = pika.BlockingConnection(url_parameters(self.amqp_uri, AmqpTls.from_env(os.environ)))
        channel = self._channel = self._connection.channel()
        channel.exchange_declare(self.exchange, exchange_type="direct")
        channel.queue_declare(self.input_queue)
        for name, queue in self.queues.items():
            channel.queue_declare(queue)
            channel.queue_bind(queue, self.exchange, routing_key=self.routing_keys[name])
        # rebounds come back to the input queue after their expiration, as on a platform
        return self

    def __exit__(self, *exc: object) -> None:
        channel = self.channel
        for queue in [self.input_queue, *self.queues.values()]:
            channel.queue_delete(queue)
        channel.exchange_delete(self.exchange)
        if self._connection is not None:
            self._connection.close()

    @property
    def channel(self) -> pika.adapters.blocking_connection.BlockingChannel:
        if self._channel is None:
            raise RuntimeError("use BrokerSandbox as a context manager")
        return self._channel

    def env(self, function: str, **overrides: str) -> dict[str, str]:
        """The ELASTICIO_* environment of a worker running ``function`` against this sandbox."""
        env = {
            "ELASTICIO_FLOW_ID": "flow-1",
            "ELASTICIO_EXEC_ID": "exec-1",
            "ELASTICIO_STEP_ID": "step_1",
            "ELASTICIO_CONTAINER_ID": "container-1",
            "ELASTICIO_WORKSPACE_ID": "workspace-1",
            "ELASTICIO_USER_ID": "user-1",
            "ELASTICIO_COMP_ID": "comp-1",
            "ELASTICIO_FUNCTION": function,
            "ELASTICIO_API_URI": "http://127.0.0.1:9",
            "ELASTICIO_API_USERNAME": "u",
            "ELASTICIO_API_KEY": "k",
            "ELASTICIO_AMQP_URI": self.amqp_uri,
            "ELASTICIO_LISTEN_MESSAGES_ON": self.input_queue,
            "ELASTICIO_PUBLISH_MESSAGES_TO": self.exchange,
            "ELASTICIO_DATA_ROUTING_KEY": self.routing_keys["data"],
            "ELASTICIO_ERROR_ROUTING_KEY": self.routing_keys["error"],
            "ELASTICIO_REBOUND_ROUTING_KEY": self.routing_keys["rebound"],
            "ELASTICIO_SNAPSHOT_ROUTING_KEY": self.routing_keys["snapshot"],
            "ELASTICIO_UPDATE_KEYS_ROUTING_KEY": self.routing_keys["updateKeys"],
            "ELASTICIO_MESSAGE_CRYPTO_IV": self.iv or "",
            "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": self.password or "",
            "ELASTICIO_LOG_LEVEL": "info",
        }
        env.update(overrides)
        return env

    # -- traffic -----------------------------------------------------------------------------------
    def publish_input(
        self,
        message: Any = None,
        *,
        headers: dict[str, Any] | None = None,
        raw: bytes | None = None,
        protocol_version: int = 1,
        message_id: str | None = None,
    ) -> str:
        """Publish one input (encrypted like a platform does); returns its messageId header."""
        message_id = message_id or str(uuid.uuid4())
        all_headers = {"messageId": message_id, "protocolVersion": protocol_version, **(headers or {})}
        body = raw if raw is not None else self.cipher.encrypt(message, protocol_version)
        self.channel.basic_publish(
            "",
            self.input_queue,
            body,
            pika.BasicProperties(
                content_type="application/json", content_encoding="utf8", headers=all_headers, delivery_mode=2
            ),
        )
        return message_id

    def take(self, name: str, count: int, *, timeout: float = 30.0) -> list[Received]:
        """Wait for ``count`` messages on an output queue and return them (acked)."""
        received: list[Received] = []
        deadline = time.monotonic() + timeout
        while len(received) < count and time.monotonic() < deadline:
            method, props, body = self.channel.basic_get(self.queues[name], auto_ack=True)
            if method is None:
                time.sleep(0.05)
                continue
            received.append(Received(method.routing_key, props, body, self.cipher))
        return received

    def count(self, name: str) -> int:
        queue = self.input_queue if name == "in" else self.queues[name]
        frame = self.channel.queue_declare(queue, passive=True)
        return int(frame.method.message_count)
