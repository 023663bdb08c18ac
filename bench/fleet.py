"""A fleet of workers sharing one single-use OAuth2 credential, with and without a shared keys store.

    .venv/bin/python bench/fleet.py [--workers 4] [--concurrency 8] [--messages 800] [--ttl 1]

W ``oarlock run --burst`` workers (each ``--concurrency C``, prefetch C) consume one input queue
(competing consumers); every message makes one call to the dev provider's API with the same
credential, whose access token lives ``--ttl`` seconds and whose refresh token is single-use
(rotated at every refresh, the old one answered ``invalid_grant``). Two runs:

1. no keys store: each worker refreshes on its own from the refresh token of its start-up cfg;
2. one PostgreSQL keys store (``ELASTICIO_KEYS_STORE``, a throwaway table): refreshes are
   serialised across the workers by ``pg_advisory_lock`` and each reads the newest rotation.

Prints one markdown row per run: messages in, data out, error events (by error name), token
calls, invalid_grant answers and the wall time. Uses the local RabbitMQ and PostgreSQL.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pika

from oarlock.devprovider import DevProvider
from oarlock.testing import BrokerSandbox

COMPONENT = Path(__file__).resolve().parent / "component"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def prefill(broker: BrokerSandbox, count: int) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_uri))
    channel = connection.channel()
    for n in range(count):
        channel.basic_publish(
            "",
            broker.input_queue,
            broker.cipher.encrypt({"body": {"n": n}}),
            pika.BasicProperties(headers={"messageId": f"m-{n}", "protocolVersion": 1}),
        )
    connection.close()


def drain(broker: BrokerSandbox, queue: str) -> list[bytes]:
    """Every message body of a queue (taken)."""
    bodies = []
    while True:
        method, _props, body = broker.channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def error_name(broker: BrokerSandbox, body: bytes) -> str:
    """The error event's name: the error queue's envelope is clear JSON, its ``error`` field encrypted."""
    try:
        return str(broker.cipher.decrypt(json.loads(body)["error"].encode()).get("name", "?"))
    except Exception as exc:  # a benchmark: say what could not be read rather than stop
        return f"unreadable ({type(exc).__name__})"


def one_run(args: argparse.Namespace, store: str | None) -> dict[str, Any]:
    with (
        DevProvider(ttl=args.ttl, rotation="single-use", latency_ms=args.latency_ms) as provider,
        BrokerSandbox() as broker,
    ):
        invalid_queue = f"{broker.input_queue}-credentialInvalid"
        broker.channel.queue_declare(invalid_queue)
        broker.channel.queue_bind(invalid_queue, broker.exchange, routing_key="credentialInvalid")
        cfg = provider.cfg(account="acct-fleet")
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(cfg, handle)
        prefill(broker, args.messages)
        env = {
            **os.environ,
            **broker.env("api"),
            "ELASTICIO_RABBITMQ_PREFETCH_SAILOR": str(args.concurrency),
            "ELASTICIO_LOG_LEVEL": "warning",
        }
        if store:
            env["ELASTICIO_KEYS_STORE"] = store
        command = [sys.executable, "-m", "oarlock", "run", "--component", str(COMPONENT), "--cfg", handle.name]
        command += ["--burst", "--concurrency", str(args.concurrency)]
        started = time.perf_counter()
        workers = [
            subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for _ in range(args.workers)
        ]
        codes = [worker.wait(600) for worker in workers]
        for worker in workers:
            assert worker.stderr is not None
            worker.stderr.close()
        elapsed = time.perf_counter() - started
        stats = provider.stats()
        data = drain(broker, broker.queues["data"])
        errors = collections.Counter(error_name(broker, body) for body in drain(broker, broker.queues["error"]))
        reports = len(drain(broker, invalid_queue))
        broker.channel.queue_delete(invalid_queue)
        Path(handle.name).unlink()
    return {
        "codes": codes,
        "data": len(data),
        "errors": dict(errors),
        "token_calls": stats["token_calls"],
        "refresh_calls": stats["refresh_calls"],
        "invalid_grant": stats["invalid_grant"],
        "reports": reports,
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--messages", type=int, default=800)
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--latency-ms", type=int, default=20)
    args = parser.parse_args()
    table = f"oarlock_bench_fleet_{uuid.uuid4().hex[:10]}"
    runs = {"no keys store": one_run(args, None)}
    try:
        runs["one PostgreSQL keys store"] = one_run(args, f"{POSTGRES}?table={table}")
    finally:
        from oarlock.keys.postgres import PostgresKeyStore

        PostgresKeyStore(POSTGRES, table=table).drop()
    print(
        f"\n### {args.workers} workers x concurrency {args.concurrency}, one single-use credential "
        f"({args.messages} messages, access token {args.ttl:g} s, API latency {args.latency_ms} ms)\n"
    )
    print(
        "| keys store | data out | lost (error events) | token calls | invalid_grant | credentialInvalid reports | s | exit codes |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for label, run in runs.items():
        lost = sum(run["errors"].values())
        kinds = ", ".join(f"{count} {name}" for name, count in sorted(run["errors"].items())) or "none"
        share = f"{lost} of {args.messages} ({100 * lost / args.messages:.0f} %): {kinds}"
        row = [label, str(run["data"]), share, str(run["token_calls"]), str(run["invalid_grant"])]
        row += [str(run["reports"]), f"{run['seconds']:.1f}", " ".join(map(str, run["codes"]))]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
