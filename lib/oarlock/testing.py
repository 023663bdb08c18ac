"""Test helpers shipped with oarlock (nameko-style): a throwaway broker sandbox for worker tests.

``BrokerSandbox`` declares a uniquely named exchange, an input queue and one bound output
queue per routing key on a real RabbitMQ, gives the ELASTICIO_* environment for a worker,
publishes encrypted inputs the way a platform (or sailor) does, collects and decrypts the
outputs, and deletes everything on exit::

    with BrokerSandbox() as broker:
        broker.publish_input({"body": {"a": 1}})
        subprocess.run(["oarlock", "run", "--burst"], env={**os.environ, **broker.env("echo")})
        (data,) = broker.take("data", 1)
"""

from __future__ import annotations

from oarlock.amqp import sandbox
from oarlock.amqp.sandbox import DEFAULT_AMQP_URI, IV, OUTPUTS, PASSWORD, Received
from oarlock.protocol.crypto import MessageCipher

__all__ = ["DEFAULT_AMQP_URI", "IV", "OUTPUTS", "PASSWORD", "BrokerSandbox", "Received"]


class BrokerSandbox(sandbox.BrokerSandbox[MessageCipher]):
    """The sandbox with sailor's message encryption: ``cipher`` is ``MessageCipher(password, iv)``."""

    def __init__(
        self,
        amqp_uri: str = DEFAULT_AMQP_URI,
        *,
        password: str | None = PASSWORD,
        iv: str | None = IV,
        prefix: str = "oarlock-test",
    ) -> None:
        super().__init__(amqp_uri, cipher=MessageCipher(password, iv), password=password, iv=iv, prefix=prefix)
