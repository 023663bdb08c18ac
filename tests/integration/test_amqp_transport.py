"""AmqpTransport on the real broker, once with the hot path and once on plain pika: the same contract."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from oarlock.amqp.transport import AmqpTransport, hot_path_enabled
from oarlock.amqp.types import Confirm, Incoming, Outgoing
from oarlock.errors import PublishError, TransportError
from oarlock.testing import BrokerSandbox
from tests.integration.test_amqp_resilience import close_worker_connections, wait_for
from tests.integration.test_amqp_worker import run_worker

pytestmark = pytest.mark.amqp


class Inbox:
    def __init__(self) -> None:
        self.items: list[Incoming] = []
        self.lock = threading.Lock()

    def __call__(self, incoming: Incoming) -> None:
        with self.lock:
            self.items.append(incoming)


@pytest.fixture(params=[True, False], ids=["hot-path", "plain-pika"])
def transport(request: pytest.FixtureRequest, broker: BrokerSandbox) -> Iterator[AmqpTransport]:
    made = AmqpTransport(broker.amqp_uri, name=f"oarlock-transport-test-{broker.id}", hot_path=request.param)
    made.start(timeout=10)
    yield made
    made.close()


def outgoing(broker: BrokerSandbox, name: str, body: bytes, **headers: Any) -> Outgoing:
    return Outgoing(broker.exchange, broker.routing_keys[name], body, {"messageId": str(uuid.uuid4()), **headers})


def settled(confirms: list[Confirm]) -> bool:
    return all(c.done for c in confirms)


def test_the_switch_turns_the_hot_path_off_and_it_is_on_by_default() -> None:
    assert hot_path_enabled({}) and hot_path_enabled({"OARLOCK_AMQP_HOT_PATH": "on"})
    assert not any(hot_path_enabled({"OARLOCK_AMQP_HOT_PATH": v}) for v in ("0", "off", "false", "no", " OFF "))


def test_publishes_are_confirmed_and_arrive_with_their_headers_and_properties(
    transport: AmqpTransport, broker: BrokerSandbox
) -> None:
    confirms = [
        transport.publish(outgoing(broker, "data", f"body {n}".encode(), n=n, nested={"a": [1, "x"]}))
        for n in range(50)
    ]
    wait_for(lambda: settled(confirms), timeout=20)
    assert all(c.error is None for c in confirms)
    received = broker.take("data", 50)
    assert [r.body for r in received] == [f"body {n}".encode() for n in range(50)]
    assert received[7].headers["n"] == 7 and received[7].headers["nested"] == {"a": [1, "x"]}
    props = received[0].properties
    assert (props.content_type, props.content_encoding, props.delivery_mode) == ("application/json", "utf8", 2)


def test_an_unroutable_publish_fails_its_confirm_with_a_publish_error(
    transport: AmqpTransport, broker: BrokerSandbox
) -> None:
    bad = transport.publish(Outgoing(broker.exchange, "nobody.listens.here", b"x", {}))
    good = transport.publish(outgoing(broker, "data", b"y"))
    wait_for(lambda: settled([bad, good]), timeout=20)
    assert isinstance(bad.error, PublishError) and "unroutable" in str(bad.error)
    assert good.error is None


def test_deliveries_arrive_as_neutral_incoming_and_acks_and_rejects_settle_them(
    transport: AmqpTransport, broker: BrokerSandbox
) -> None:
    for n in range(3):
        broker.publish_input(raw=f"in {n}".encode(), headers={"n": n})
    inbox = Inbox()
    transport.consume(broker.input_queue, 10, inbox)
    wait_for(lambda: len(inbox.items) == 3, timeout=20)
    first, second, third = inbox.items
    assert first.body == b"in 0" and first.headers["n"] == 0 and not first.redelivered
    assert first.content_type == "application/json" and first.delivery_mode == 2
    transport.ack(first)
    transport.reject(second, requeue=False)
    transport.reject(third, requeue=True)  # comes back, redelivered
    wait_for(lambda: len(inbox.items) == 4, timeout=20)
    again = inbox.items[3]
    assert again.body == b"in 2" and again.redelivered
    transport.ack(again)
    wait_for(lambda: transport.message_count(broker.input_queue).result(5) == 0, timeout=20)
    transport.stop_consuming().result(5)


def test_after_a_server_side_close_the_transport_reconnects_and_resumes_consuming(
    transport: AmqpTransport, broker: BrokerSandbox
) -> None:
    inbox = Inbox()
    transport.consume(broker.input_queue, 5, inbox)
    broker.publish_input(raw=b"before")
    wait_for(lambda: len(inbox.items) == 1, timeout=20)
    generation = transport.generation
    assert close_worker_connections(f"oarlock-transport-test-{broker.id}") == 2
    wait_for(lambda: transport.generation > generation, timeout=30)
    # the unacked delivery of the lost connection comes back; an ack of the old copy is ignored
    transport.ack(inbox.items[0])
    broker.publish_input(raw=b"after")
    wait_for(lambda: {i.body for i in inbox.items[1:]} >= {b"before", b"after"}, timeout=30)
    for item in inbox.items[1:]:
        transport.ack(item)
    confirm = transport.publish(outgoing(broker, "data", b"published after the reconnect"))
    wait_for(lambda: confirm.done, timeout=20)
    assert confirm.error is None
    wait_for(lambda: transport.message_count(broker.input_queue).result(5) == 0, timeout=20)


def test_a_broker_that_does_not_answer_is_a_transport_error_naming_why() -> None:
    dead = AmqpTransport("amqp://guest:guest@127.0.0.1:9/%2F", hot_path=False)
    with pytest.raises(
        TransportError,
        match=r"cannot connect to the broker at 127\.0\.0\.1:9 \(vhost /\) within 1 s: connection refused",
    ):
        dead.start(timeout=1)


def test_oarlock_run_with_the_hot_path_off_processes_and_publishes_the_same_way(
    broker: BrokerSandbox, tmp_path: Any
) -> None:
    for n in range(20):
        broker.publish_input({"body": {"n": n}}, headers={"x-eio-meta-trace-id": f"trace-{n}"})
    done = run_worker(broker, "echo", cfg={}, tmp_path=tmp_path, env={"OARLOCK_AMQP_HOT_PATH": "off"})
    assert done.returncode == 0, done.stderr[-3000:]
    data = broker.take("data", 20)
    assert sorted(d.decrypted()["body"]["echo"]["n"] for d in data) == list(range(20))
    assert {d.headers["threadId"] for d in data} == {f"trace-{n}" for n in range(20)}
    assert broker.count("in") == 0 and broker.count("error") == 0


def test_consuming_registers_exactly_one_consumer_however_the_two_channels_open(broker: BrokerSandbox) -> None:
    for attempt in range(12):  # the channels open in either order: each start must give one consumer
        made = AmqpTransport(broker.amqp_uri, name=f"oarlock-one-consumer-{broker.id}-{attempt}")
        made.start(timeout=10)
        try:
            made.consume(broker.input_queue, 5, Inbox())
            wait_for(
                lambda: broker.channel.queue_declare(broker.input_queue, passive=True).method.consumer_count > 0, 10
            )
            made.message_count(broker.input_queue).result(5)  # a round trip after both channels' callbacks
            assert broker.channel.queue_declare(broker.input_queue, passive=True).method.consumer_count == 1
            made.stop_consuming().result(5)
            wait_for(
                lambda: broker.channel.queue_declare(broker.input_queue, passive=True).method.consumer_count == 0, 10
            )
        finally:
            made.close()


def test_a_consumer_the_broker_cancels_makes_the_transport_not_ready_and_consuming_resumes_once_the_queue_is_back(
    transport: AmqpTransport, broker: BrokerSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    from oarlock.amqp.metered import consuming

    inbox = Inbox()
    transport.consume(broker.input_queue, 10, inbox)
    wait_for(lambda: consuming(transport), timeout=20)
    broker.channel.queue_delete(broker.input_queue)  # an operator re-creating the queue, a node going down
    wait_for(lambda: not consuming(transport), timeout=20)
    assert "cancelled the consumer of queue" in caplog.text
    broker.channel.queue_declare(broker.input_queue)
    broker.channel.basic_publish("", broker.input_queue, b"after the queue came back")
    wait_for(lambda: inbox.items, timeout=60)
    assert inbox.items[0].body == b"after the queue came back" and consuming(transport)
