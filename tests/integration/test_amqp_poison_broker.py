"""One bad message never stops AmqpTransport on the real broker, with the hot path and on plain pika.

Inputs carry header frames pika cannot decode (written verbatim by the test's publisher); outputs carry
header values or routing keys AMQP cannot take. After each, the same connection goes on consuming and
publishing, and every confirm goes to its own publish.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator

import pika.compat
import pytest

from oarlock.amqp.transport import AmqpTransport
from oarlock.amqp.types import Outgoing
from oarlock.errors import PublishError
from oarlock.testing import BrokerSandbox
from tests.integration.test_amqp_resilience import wait_for
from tests.integration.test_amqp_transport import Inbox, settled
from tests.unit.test_amqp_poison import RawHeaders, entry, nested

pytestmark = pytest.mark.amqp


@pytest.fixture(params=[True, False], ids=["hot-path", "plain-pika"])
def transport(request: pytest.FixtureRequest, broker: BrokerSandbox) -> Iterator[AmqpTransport]:
    made = AmqpTransport(broker.amqp_uri, name=f"oarlock-poison-test-{broker.id}", hot_path=request.param)
    made.start(timeout=10)
    yield made
    made.close()


@pytest.mark.parametrize(
    "field",
    [entry("when", struct.pack(">cQ", b"T", 2**40)), entry("deep", nested(2000))],
    ids=["timestamp-past-9999", "table-2000-deep"],
)
def test_an_input_whose_headers_cannot_be_decoded_arrives_with_the_reason_and_the_next_one_on_the_same_connection(
    transport: AmqpTransport, broker: BrokerSandbox, field: bytes
) -> None:
    broker.channel.basic_publish("", broker.input_queue, b"poison", RawHeaders(field))
    broker.publish_input(raw=b"next", headers={"n": 2})
    generation = transport.generation
    inbox = Inbox()
    transport.consume(broker.input_queue, 5, inbox)
    wait_for(lambda: len(inbox.items) == 2, timeout=20)
    poisoned, following = inbox.items
    assert poisoned.body == b"poison" and poisoned.headers == {}
    assert poisoned.decode_error and ("out of range" in poisoned.decode_error or "nested" in poisoned.decode_error)
    assert following.body == b"next" and following.headers["n"] == 2 and following.decode_error is None
    transport.reject(poisoned, requeue=False)
    transport.ack(following)
    wait_for(lambda: transport.message_count(broker.input_queue).result(5) == 0, timeout=20)
    assert transport.generation == generation  # no reconnect, no redelivery loop
    transport.stop_consuming().result(5)


def test_header_values_pika_cannot_write_go_out_as_doubles_and_the_io_thread_keeps_publishing(
    transport: AmqpTransport, broker: BrokerSandbox
) -> None:
    key = broker.routing_keys["data"]
    confirms = [
        # what pika decodes an incoming double 1e19 into: it killed the I/O thread on the way out
        transport.publish(Outgoing(broker.exchange, key, b"big", {"x-eio-meta-amount": pika.compat.long(10**19)})),
        transport.publish(Outgoing(broker.exchange, key, b"fraction", {"x-eio-meta-amount": 1.5})),
        transport.publish(Outgoing(broker.exchange, key, b"after", {"messageId": str(uuid.uuid4())})),
    ]
    wait_for(lambda: settled(confirms), timeout=20)
    assert [c.error for c in confirms] == [None, None, None]
    inbox = Inbox()
    transport.consume(broker.queues["data"], 5, inbox)
    wait_for(lambda: len(inbox.items) == 3, timeout=20)
    amounts = [item.headers.get("x-eio-meta-amount") for item in inbox.items]
    # on the wire: doubles. oarlock's decoder reads them as floats, pika's (plain path) truncates them to ints
    assert amounts == ([1e19, 1.5, None] if transport.hot_path else [10**19, 1, None])
    for item in inbox.items:
        transport.ack(item)


def test_a_header_that_cannot_be_encoded_fails_only_its_own_confirm_and_the_next_publish_is_confirmed(
    transport: AmqpTransport, broker: BrokerSandbox
) -> None:
    key = broker.routing_keys["data"]
    poison = transport.publish(Outgoing(broker.exchange, key, b"x", {"x-eio-meta-huge": 10**400}))
    confirm = transport.publish(Outgoing(broker.exchange, key, b"after", {}))
    wait_for(lambda: confirm.done and poison.done, timeout=20)
    assert isinstance(poison.error, PublishError) and "header 'x-eio-meta-huge'" in str(poison.error)
    assert confirm.error is None and [r.body for r in broker.take("data", 1)] == [b"after"]


def test_a_routing_key_over_255_bytes_fails_only_its_own_confirm_and_every_later_confirm_is_its_own(
    transport: AmqpTransport, broker: BrokerSandbox
) -> None:
    key = broker.routing_keys["data"]
    poison = transport.publish(Outgoing(broker.exchange, "k" * 300, b"poison", {}))
    confirms = [transport.publish(Outgoing(broker.exchange, key, f"good {n}".encode(), {})) for n in range(5)]
    unroutable = transport.publish(Outgoing(broker.exchange, "nobody.listens", b"lost", {}))
    last = transport.publish(Outgoing(broker.exchange, key, b"last", {}))
    wait_for(lambda: settled([poison, *confirms, unroutable, last]), timeout=20)
    assert isinstance(poison.error, PublishError) and "300 bytes of UTF-8, AMQP allows at most 255" in str(poison.error)
    assert [c.error for c in confirms] == [None] * 5 and last.error is None
    assert isinstance(unroutable.error, PublishError) and "unroutable" in str(unroutable.error)
    assert [r.body for r in broker.take("data", 6)] == [*(f"good {n}".encode() for n in range(5)), b"last"]
