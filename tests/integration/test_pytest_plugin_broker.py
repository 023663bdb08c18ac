"""The plugin's ``broker`` fixture on the real RabbitMQ, used from a separate test project (pytester)."""

from __future__ import annotations

import pytest

import oarlock.testing

pytest_plugins = ["pytester"]
# imported before pytester's in-process run snapshots sys.modules (it drops what is first imported during it)
assert oarlock.testing.BrokerSandbox


@pytest.mark.amqp
def test_the_broker_fixture_gives_a_throwaway_sandbox_that_is_deleted_afterwards(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OARLOCK_TEST_AMQP_URI", raising=False)
    pytester.makepyfile(
        test_broker="""
        import pika

        seen = []

        def test_a_message_routed_to_an_output_key_reaches_its_queue(broker):
            broker.channel.basic_publish(broker.exchange, broker.routing_keys["data"], b'{"a": 1}')
            (received,) = broker.take("data", 1)
            assert received.json() == {"a": 1}
            assert broker.env("echo")["ELASTICIO_LISTEN_MESSAGES_ON"] == broker.input_queue
            seen.append((broker.amqp_uri, broker.input_queue))

        def test_the_previous_sandbox_is_gone(broker):
            uri, queue = seen[0]
            with pika.BlockingConnection(pika.URLParameters(uri)) as connection:
                try:
                    connection.channel().queue_declare(queue, passive=True)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    assert exc.reply_code == 404
                else:
                    raise AssertionError("the queue of the previous test still exists")
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
