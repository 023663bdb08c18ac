"""amqps:// through a TLS-terminating proxy (Python's ssl, written in tests/brokerproxy.py) in front of the broker.

A throwaway CA made here signs the proxy's certificate; the worker, the keys service and the transport
reach RabbitMQ only through the proxy, so every message moved below crossed TLS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oarlock.amqp.tls import AmqpTls
from oarlock.amqp.transport import AmqpTransport
from oarlock.amqp.types import Outgoing
from oarlock.errors import TransportError
from oarlock.keys.store import open_store
from oarlock.testing import BrokerSandbox
from tests.brokerproxy import BrokerProxy, Ca, Issued, make_ca, server_context
from tests.support import TEST_COMPONENTS, run_cli

pytestmark = pytest.mark.amqp
AMQP = str(TEST_COMPONENTS / "amqp")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ca | Issued]:
    folder = tmp_path_factory.mktemp("pki")
    good, wrong, clients = make_ca(folder, "good"), make_ca(folder, "wrong"), make_ca(folder, "clients")
    return {
        "ca": good,
        "wrong_ca": wrong,
        "clients": clients,
        "server": good.issue("localhost", dns=("localhost",), ips=("127.0.0.1",)),
        "named_server": good.issue("rabbit.internal", dns=("rabbit.internal",)),  # no IP: the name must be given
        "client": clients.issue("worker-1", client=True),
    }


def ca_file(pki: dict[str, Ca | Issued], name: str = "ca") -> str:
    ca = pki[name]
    assert isinstance(ca, Ca)
    return str(ca.cert_file)


def issued(pki: dict[str, Ca | Issued], name: str) -> Issued:
    cert = pki[name]
    assert isinstance(cert, Issued)
    return cert


@pytest.fixture
def tls_proxy(pki: dict[str, Ca | Issued]) -> Iterator[BrokerProxy]:
    with BrokerProxy(server_context(issued(pki, "server"))) as proxy:
        yield proxy


def run_worker(broker: BrokerSandbox, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "cfg.json"
    cfg.write_text("{}")
    return subprocess.run(
        [sys.executable, "-m", "oarlock", "run", "--component", AMQP, "--cfg", str(cfg), "--burst"],
        env={**os.environ, **broker.env("echo"), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("hot_path", ["on", "off"])
def test_oarlock_run_over_amqps_with_the_right_ca_moves_every_message(
    hot_path: str, broker: BrokerSandbox, tls_proxy: BrokerProxy, pki: dict[str, Ca | Issued], tmp_path: Path
) -> None:
    # small ones (read straight from the buffer by the hot path) and 200 KB ones (many TLS records, pika's path)
    sizes = [10] * 40 + [200_000] * 5
    for n, size in enumerate(sizes):
        broker.publish_input({"body": {"n": n, "pad": "x" * size}})
    done = run_worker(
        broker,
        {
            "ELASTICIO_AMQP_URI": tls_proxy.uri(),
            "ELASTICIO_AMQP_TLS_CA_FILE": ca_file(pki),
            "OARLOCK_AMQP_HOT_PATH": hot_path,
        },
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = broker.take("data", len(sizes))
    assert sorted(o.decrypted()["body"]["echo"]["n"] for o in outputs) == list(range(len(sizes)))
    assert {len(o.decrypted()["body"]["echo"]["pad"]) for o in outputs} == {10, 200_000}
    assert broker.count("in") == 0
    assert tls_proxy.accepted == 2  # both connections, through TLS


def test_a_wrong_ca_is_one_line_naming_the_broker_and_the_reason_and_exit_2(
    broker: BrokerSandbox, tls_proxy: BrokerProxy, pki: dict[str, Ca | Issued], tmp_path: Path
) -> None:
    broker.publish_input({"body": {"n": 1}})
    started = time.monotonic()
    done = run_worker(
        broker,
        {"ELASTICIO_AMQP_URI": tls_proxy.uri(), "ELASTICIO_AMQP_TLS_CA_FILE": ca_file(pki, "wrong_ca")},
        tmp_path,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"oarlock: cannot connect to the broker at 127.0.0.1:{tls_proxy.port} (vhost /): TLS certificate verify "
        f"failed: unable to get local issuer certificate (verified against ELASTICIO_AMQP_TLS_CA_FILE="
        f"{ca_file(pki, 'wrong_ca')})"
    ]
    assert tls_proxy.accepted == 0 and broker.count("in") == 1
    print(f"wrong CA: exit 2 after {elapsed:.2f} s (process start included)")


def test_the_certificate_must_name_the_server_name_which_defaults_to_the_uri_host(
    broker: BrokerSandbox, pki: dict[str, Ca | Issued]
) -> None:
    with BrokerProxy(server_context(issued(pki, "named_server"))) as proxy:
        by_address = AmqpTransport(proxy.uri(), tls=AmqpTls(ca_file=ca_file(pki)))
        with pytest.raises(TransportError, match=r"IP address mismatch, certificate is not valid for '127\.0\.0\.1'"):
            by_address.start(timeout=10)
        by_name = AmqpTransport(proxy.uri(), tls=AmqpTls(ca_file=ca_file(pki), server_name="rabbit.internal"))
        by_name.start(timeout=10)
        try:
            confirm = by_name.publish(Outgoing("", broker.input_queue, b'{"n": 1}', {}))
            deadline = time.monotonic() + 20
            while not confirm.done and time.monotonic() < deadline:
                time.sleep(0.02)
            assert confirm.done and confirm.error is None
        finally:
            by_name.close()
        assert broker.count("in") == 1


def test_a_client_certificate_is_presented_when_the_broker_requires_one(
    broker: BrokerSandbox, pki: dict[str, Ca | Issued]
) -> None:
    clients = pki["clients"]
    assert isinstance(clients, Ca)
    client = issued(pki, "client")
    with BrokerProxy(server_context(issued(pki, "server"), client_ca=clients)) as proxy:
        transport = AmqpTransport(
            proxy.uri(),
            tls=AmqpTls(ca_file=ca_file(pki), cert_file=str(client.cert_file), key_file=str(client.key_file)),
        )
        transport.start(timeout=10)
        try:
            assert transport.message_count(broker.input_queue).result(10) == 0
        finally:
            transport.close()
        assert proxy.accepted == 2
        anonymous = AmqpTransport(proxy.uri(), tls=AmqpTls(ca_file=ca_file(pki)))
        with pytest.raises(TransportError, match=f"cannot connect to the broker at 127.0.0.1:{proxy.port}"):
            anonymous.start(timeout=2)
        assert proxy.accepted == 2  # the proxy refused the handshake: nothing reached the broker


def test_keys_serve_reaches_the_broker_over_amqps(
    broker: BrokerSandbox, tls_proxy: BrokerProxy, pki: dict[str, Ca | Issued], tmp_path: Path
) -> None:
    update = broker.cipher.encrypt({"account": "a", "version": 3, "oauth": {"t": 3}})
    broker.channel.basic_publish(broker.exchange, broker.routing_keys["updateKeys"], update)
    keys = str(tmp_path / "keys.sqlite")
    done = run_cli(
        ["keys", "serve", "--store", keys, "--queue", broker.queues["updateKeys"], "--burst"],
        env={
            "ELASTICIO_AMQP_URI": tls_proxy.uri(),
            "ELASTICIO_AMQP_TLS_CA_FILE": ca_file(pki),
            "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": broker.password or "",
            "ELASTICIO_MESSAGE_CRYPTO_IV": broker.iv or "",
        },
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"stored": 1, "refused": 0, "rejected": 0}
    stored = open_store(keys).get("a")
    assert stored is not None and stored.version == 3
    assert tls_proxy.accepted == 2


def test_keys_serve_with_a_wrong_ca_is_one_line(
    broker: BrokerSandbox, tls_proxy: BrokerProxy, pki: dict[str, Ca | Issued], tmp_path: Path
) -> None:
    done = run_cli(
        ["keys", "serve", "--store", str(tmp_path / "k.sqlite"), "--queue", broker.queues["updateKeys"], "--burst"],
        env={"ELASTICIO_AMQP_URI": tls_proxy.uri(), "ELASTICIO_AMQP_TLS_CA_FILE": ca_file(pki, "wrong_ca")},
    )
    assert done.returncode == 3, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"oarlock: cannot connect to the broker at 127.0.0.1:{tls_proxy.port} (vhost /): TLS ")
    assert "guest" not in line
