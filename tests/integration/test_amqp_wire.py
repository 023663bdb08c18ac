"""The transport's shortcuts against a real broker: one write per loop turn, no early ack of a slow message."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pika
import pytest

from oarlock.amqp.connection import CoalescingConnection
from oarlock.testing import BrokerSandbox
from tests.integration.test_amqp_resilience import start_worker, unsettled, wait_for, write_cfg


# -- coalesced writes --------------------------------------------------------------------------------
class CountingConnection(CoalescingConnection):
    writes = 0

    def flush_outgoing(self) -> None:
        if self._outgoing:
            CountingConnection.writes += 1
        super().flush_outgoing()


@pytest.mark.amqp
def test_what_one_turn_of_the_loop_publishes_leaves_in_one_write_in_order(broker: BrokerSandbox) -> None:
    bodies = [f"message {n}".encode() for n in range(50)]
    result: dict[str, Any] = {}

    def on_open(connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=on_channel)

    def on_channel(channel: Any) -> None:
        before = CountingConnection.writes
        for body in bodies:
            channel.basic_publish("", broker.input_queue, body)
        result["writes_before_flush"] = CountingConnection.writes - before
        channel.connection.ioloop.call_later(0, lambda: count_and_close(channel, before))

    def count_and_close(channel: Any, before: int) -> None:
        result["writes"] = CountingConnection.writes - before
        channel.connection.close()

    connection = CountingConnection(
        pika.URLParameters(broker.amqp_uri),
        on_open_callback=on_open,
        on_close_callback=lambda c, r: c.ioloop.stop(),
    )
    connection.ioloop.call_later(20, connection.ioloop.stop)
    connection.ioloop.start()
    assert result == {"writes_before_flush": 0, "writes": 1}
    wait_for(lambda: broker.count("in") == 50, timeout=10)
    got = [broker.channel.basic_get(broker.input_queue, auto_ack=True)[2] for _ in bodies]
    assert got == bodies


# -- no loss with batched acks ----------------------------------------------------------------------
@pytest.mark.amqp
def test_a_slow_first_message_is_not_acked_by_the_acks_of_the_later_ones(broker: BrokerSandbox, tmp_path: Path) -> None:
    broker.publish_input({"body": {"n": 0, "sleep": 30}})
    for n in range(1, 41):
        broker.publish_input({"body": {"n": n, "sleep": 0}})
    env = {"ELASTICIO_RABBITMQ_PREFETCH_SAILOR": "50"}
    worker = start_worker(broker, "slow", write_cfg(tmp_path, {}), "--concurrency", "4", env=env)
    wait_for(lambda: broker.count("data") >= 40, timeout=60)
    wait_for(lambda: (unsettled(broker.input_queue) or (0, 0))[1] <= 1, timeout=30)  # the acks of the 40 arrived
    assert unsettled(broker.input_queue) == (0, 1), "the slow one is still delivered and unacknowledged"
    worker.signal(signal.SIGKILL)
    worker.wait(10)
    wait_for(lambda: broker.count("in") == 1, timeout=20)  # the slow one comes back, nothing else
    method, _props, body = broker.channel.basic_get(broker.input_queue, auto_ack=True)
    assert method is not None and method.redelivered
    assert broker.cipher.decrypt(body)["body"]["n"] == 0
