"""Worker throughput: oarlock vs the raw pika ceiling, and an I/O-bound case. Prints markdown tables.

    .venv/bin/python bench/throughput.py [--messages 20000] [--prefetch 100] [--rounds 3]

Two like-for-like pairs, each on 1 KB messages, prefetch 100, publisher confirms on:

1. Plaintext (no ELASTICIO_MESSAGE_CRYPTO_PASSWORD: docs/protocol.md §5 lets the JSON text pass):
   the raw pika ceiling, a minimal SelectConnection consumer that publishes each message and
   acks it after the broker's confirm, against `oarlock run --burst` with a pass-through action.
2. Encrypted (sailor's AES scheme): the same raw loop also doing what the wire contract requires
   of any runtime (decrypt, re-encrypt, publish with sailor's header set), against oarlock on the
   same messages. oarlock's encrypted rate is also given against the bare ceiling of pair 1.

For context: oarlock at concurrency 1, oarlock with its AMQP hot path off
(``OARLOCK_AMQP_HOT_PATH=off``: plain pika for every frame; the ratio off / on is printed per
round), oarlock with its metrics on (``ELASTICIO_METRICS_ADDR``: every input counted and timed,
every confirm timed; the ratio on / off is printed per round), and the raw loop using oarlock's transport techniques (coalesced writes, multiple acks). Then one updateKeys per message, through the AMQP route and through sailor's PUT route (a
keep-alive stub of the platform API in this process), next to raw pika. Then the I/O-bound case: an action making one call to the dev
provider's API with 50 ms added latency, at concurrency 1, 16 and 64.

``--runners oarlock,oarlock_metrics`` measures only those runners (names of :data:`RUNNERS`) and
``--throughput-only`` leaves out the updateKeys and I/O-bound cases: a quick A/B of one change.

Every runner is measured ``--rounds`` times, the rounds interleaved (a 2-core machine's speed
drifts by 20% from minute to minute); the tables show medians, and each pair's ratio is also
given per round (its two runners measured back to back).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pika
import pika.spec

from oarlock.amqp.connection import CoalescingConnection
from oarlock.devprovider import DevProvider
from oarlock.testing import BrokerSandbox

COMPONENT = Path(__file__).resolve().parent / "component"


def prefill(broker: BrokerSandbox, count: int, size: int = 1024) -> None:
    body = {"body": {"payload": "x" * (size - 60)}}
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_uri))
    channel = connection.channel()
    content = broker.cipher.encrypt(body)  # plaintext JSON when the sandbox has no password
    for n in range(count):
        channel.basic_publish(
            "",
            broker.input_queue,
            content,
            pika.BasicProperties(
                content_type="application/json", headers={"messageId": f"m-{n}", "protocolVersion": 1}
            ),
        )
    connection.close()
    while broker.count("in") < count:
        time.sleep(0.05)


def wait_empty(broker: BrokerSandbox, name: str) -> None:
    while broker.count(name):
        time.sleep(0.2)


def run_oarlock(
    broker: BrokerSandbox,
    function: str,
    count: int,
    *,
    prefetch: int,
    concurrency: int,
    cfg: dict[str, Any] | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[float, float]:
    """msgs/s over the output span (see :func:`output_span`) and peak RSS in MB."""
    cfg_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"oarlock-bench-cfg-{os.getpid()}.json"
    cfg_path.write_text(json.dumps(cfg or {}))
    env = {
        **os.environ,
        **broker.env(function),
        "ELASTICIO_RABBITMQ_PREFETCH_SAILOR": str(prefetch),
        "ELASTICIO_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    if BASELINE_LIB[0] and env.get(BASELINE_MARK):
        env["PYTHONPATH"] = BASELINE_LIB[0]  # another checkout's lib/: the same runner on older code
    env.pop(BASELINE_MARK, None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    cpu_before = children_cpu()
    done = burst(cfg_path, env, concurrency=concurrency)
    cpu = children_cpu() - cpu_before
    fixed_cost(broker, function, cfg_path, env)
    LAST_CPU_US[0] = (cpu - _FIXED_CPU[fixed_key(function, env)]) / count * 1e6
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode != 0:
        raise SystemExit(f"worker failed: {done.stderr[-2000:]}")
    span = output_span(broker, count)
    return count / span, max(peak, before) / 1024


def output_span(broker: BrokerSandbox, count: int) -> float:
    """Seconds from the first input's ``start`` header to the last output's ``end`` header (the data queue drained).

    Every data message oarlock publishes carries sailor's ``start`` (when its input was taken up, ms)
    and ``end`` (when it was encoded, ms). Timing that span leaves out what a burst run adds around
    the work: the interpreter's start, the connect, and the empty-queue detection (a 0.25 s poll
    after 0.5 s idle, which would move a 3 s run's rate in ~8 % steps).
    """
    first, last, seen = float("inf"), 0.0, 0
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_uri))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=2000)
        for _method, props, _body in channel.consume(broker.queues["data"], auto_ack=True, inactivity_timeout=5):
            if props is None:
                break
            headers = props.headers or {}
            first, last = min(first, float(headers["start"])), max(last, float(headers["end"]))
            seen += 1
            if seen == count:
                break
        channel.cancel()
    finally:
        connection.close()
    if seen != count:
        raise SystemExit(f"expected {count} outputs, found {seen}")
    return max(last - first, 1.0) / 1000


SAILOR_HEADERS = {
    "execId": "exec-1",
    "taskId": "flow-1",
    "workspaceId": "workspace-1",
    "containerId": "container-1",
    "userId": "user-1",
    "stepId": "step_1",
    "compId": "comp-1",
    "function": "passthrough",
    "protocolVersion": 1,
    "threadId": "6ce502d8-d335-43de-8390-f7fa5e155d93",
}
_FIXED: dict[str, float] = {}
#: ``--baseline-lib``: another checkout's lib/ folder; runners whose env carries BASELINE_MARK run oarlock from there
BASELINE_LIB = [""]
BASELINE_MARK = "OARLOCK_BENCH_BASELINE"
_FIXED_CPU: dict[str, float] = {}  # CPU seconds of the same empty run
#: CPU microseconds per message of the last oarlock run (its process's user + system time, the fixed cost's removed)
LAST_CPU_US = [0.0]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fixed_key(function: str, env: dict[str, str]) -> str:
    return (
        function
        + ("+metrics" if env.get("ELASTICIO_METRICS_ADDR") else "")
        + ("+baseline" if env.get("PYTHONPATH") == BASELINE_LIB[0] and BASELINE_LIB[0] else "")
    )


def burst(cfg_path: Path, env: dict[str, str], *, concurrency: int) -> subprocess.CompletedProcess[str]:
    """``oarlock run --burst`` on the bench component as a subprocess."""
    command = [
        sys.executable,
        "-m",
        "oarlock",
        "run",
        "--component",
        str(COMPONENT),
        "--cfg",
        str(cfg_path),
        "--burst",
        "--concurrency",
        str(concurrency),
    ]
    return subprocess.run(command, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def fixed_cost(broker: BrokerSandbox, function: str, cfg_path: Path, env: dict[str, str]) -> float:
    """Seconds a burst run over an empty queue takes: interpreter start, connect, empty-queue detection, close.

    Measured apart with metrics on (importing prometheus_client and starting the server is part of it).
    """
    key = fixed_key(function, env)
    if key not in _FIXED:
        walls, cpus = [], []
        with BrokerSandbox() as empty:
            empty_env = {**env, "ELASTICIO_LISTEN_MESSAGES_ON": empty.input_queue}
            for _ in range(3):  # the median of three: one slow start would skew every rate of the runner
                started, cpu = time.perf_counter(), children_cpu()
                burst(cfg_path, empty_env, concurrency=1)
                walls.append(time.perf_counter() - started)
                cpus.append(children_cpu() - cpu)
        _FIXED[key], _FIXED_CPU[key] = statistics.median(walls), statistics.median(cpus)
    return _FIXED[key]


def run_raw(
    broker: BrokerSandbox, count: int, *, prefetch: int, sailor_work: bool = False, tuned: bool = False
) -> float:
    """The ceiling: consume, publish, ack after the confirm, nothing else (SelectConnection, pipelined).

    With ``sailor_work`` the same loop also does what the wire contract requires of any runtime:
    decrypt, re-encrypt, and publish with sailor's header set (still no function, no threads).
    With ``tuned`` it uses oarlock's CoalescingConnection and one multiple ack per confirm batch.
    """
    state: dict[str, Any] = {"acked": 0, "next_tag": 0, "pending": {}}
    params = pika.URLParameters(broker.amqp_uri)

    def on_open(connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=lambda ch: on_channel(connection, ch))

    def on_channel(connection: pika.SelectConnection, channel: Any) -> None:
        state["channel"] = channel
        channel.confirm_delivery(on_confirm, callback=lambda _f: start(channel))

    def start(channel: Any) -> None:
        channel.basic_qos(prefetch_count=prefetch)
        state["started"] = time.perf_counter()
        channel.basic_consume(broker.input_queue, on_message)

    def on_message(channel: Any, method: Any, props: Any, body: bytes) -> None:
        if sailor_work:
            message = broker.cipher.decrypt(body, 1)
            headers = {
                **SAILOR_HEADERS,
                "messageId": str(uuid.uuid4()),
                "parentMessageId": props.headers["messageId"],
                "start": int(time.time() * 1000),
                "end": int(time.time() * 1000),
            }
            body = broker.cipher.encrypt(message, 1)
            props = pika.BasicProperties(
                content_type="application/json", content_encoding="utf8", headers=headers, delivery_mode=1
            )
        channel.basic_publish(broker.exchange, broker.routing_keys["data"], body, props, mandatory=True)
        state["next_tag"] += 1
        state["pending"][state["next_tag"]] = method.delivery_tag

    def on_confirm(frame: Any) -> None:
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        tags = [t for t in state["pending"] if t <= tag] if multiple else [tag]
        channel = state["channel"]
        last = None
        for t in sorted(tags):
            delivery = state["pending"].pop(t, None)
            if delivery is not None:
                if tuned:  # deliveries are acked in order here, so the highest tag covers the batch
                    last = delivery
                else:
                    channel.basic_ack(delivery)
                state["acked"] += 1
        if last is not None:
            channel.basic_ack(last, multiple=True)
        if state["acked"] >= count:
            state["elapsed"] = time.perf_counter() - state["started"]
            connection.close()

    connection_class = CoalescingConnection if tuned else pika.SelectConnection
    connection = connection_class(params, on_open_callback=on_open, on_close_callback=lambda c, r: c.ioloop.stop())
    connection.ioloop.start()
    broker.channel.queue_purge(broker.queues["data"])
    return count / float(state["elapsed"])


def io_bound(counts: dict[int, int]) -> list[tuple[int, float]]:
    rows = []
    with DevProvider(latency_ms=50) as provider:
        token = provider.mint()
        cfg = {
            "_account": "bench",
            "baseUrl": provider.url,
            "oauth": {**token, "expires_at": time.time() + 3600},
            "oauth2": {
                "token_uri": provider.token_url,
                "client_id": "oarlock-dev",
                "client_secret": "oarlock-dev-secret",
            },
        }
        for concurrency, count in counts.items():
            with BrokerSandbox() as broker:
                prefill(broker, count, size=256)
                rate, _ = run_oarlock(
                    broker, "api", count, prefetch=max(concurrency, 1), concurrency=concurrency, cfg=cfg
                )
                rows.append((concurrency, rate))
    return rows


class _AcceptPuts(BaseHTTPRequestHandler):
    """The platform's account route as a sailor platform serves it: every PUT answered 200."""

    protocol_version = "HTTP/1.1"
    puts = 0

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).puts += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


def update_keys_case(count: int, prefetch: int) -> list[tuple[str, float]]:
    """msgs/s with one updateKeys per message through the AMQP route and through sailor's PUT route."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AcceptPuts)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}"
    cfg = {"_account": "bench", "oauth": {"access_token": "bench-access", "refresh_token": "bench-refresh"}}
    rows = []
    try:
        with BrokerSandbox() as broker:
            prefill(broker, count)
            rows.append(("raw pika (the ceiling, no update)", run_raw(broker, count, prefetch=prefetch)))
            for label, routes in (("oarlock, updateKeys over AMQP", "amqp"), ("oarlock, updateKeys PUT", "api")):
                prefill(broker, count)
                extra = {"ELASTICIO_UPDATE_KEYS_ROUTES": routes, "ELASTICIO_API_URI": api}
                rate, _ = run_oarlock(
                    broker, "keys", count, prefetch=prefetch, concurrency=prefetch, cfg=cfg, extra_env=extra
                )
                broker.channel.queue_purge(broker.queues["updateKeys"])
                rows.append((label, rate))
    finally:
        server.shutdown()
        server.server_close()
    return rows


RUNNERS = {
    "raw": "raw pika (consume, publish, ack after confirm)",
    "oarlock_plain": "oarlock run, concurrency {prefetch} (the default: the prefetch)",
    "raw_sailor": "raw pika + decrypt, encrypt, sailor headers",
    "oarlock": "oarlock run, concurrency {prefetch} (the default: the prefetch)",
    "oarlock_1": "oarlock run, concurrency 1",
    "oarlock_plain_pika": "oarlock run, concurrency {prefetch}, hot path off (OARLOCK_AMQP_HOT_PATH=off)",
    "oarlock_metrics": "oarlock run, concurrency {prefetch}, metrics on (ELASTICIO_METRICS_ADDR)",
    "raw_tuned": "raw pika + coalesced writes, multiple acks",
    "baseline_plain": "oarlock run from --baseline-lib, concurrency {prefetch}",
    "baseline": "oarlock run from --baseline-lib, concurrency {prefetch}",
}
RATIOS = {  # printed per round: each like-for-like pair, then encrypted oarlock against the bare ceiling
    "plaintext: oarlock / raw pika": ("oarlock_plain", "raw"),
    "encrypted: oarlock / raw pika": ("oarlock", "raw_sailor"),
    "encrypted oarlock / plaintext raw pika": ("oarlock", "raw"),
    "encrypted oarlock, hot path off / on": ("oarlock_plain_pika", "oarlock"),
    "encrypted oarlock, metrics on / off": ("oarlock_metrics", "oarlock"),
    "plaintext: oarlock / --baseline-lib": ("oarlock_plain", "baseline_plain"),
    "encrypted: oarlock / --baseline-lib": ("oarlock", "baseline"),
    "plaintext: --baseline-lib / raw pika": ("baseline_plain", "raw"),
    "encrypted: --baseline-lib / raw pika": ("baseline", "raw_sailor"),
}
ENCRYPTED = {"raw_sailor", "oarlock", "oarlock_1", "oarlock_plain_pika", "oarlock_metrics", "baseline"}
EXTRA_ENV = {
    "oarlock_plain_pika": {"OARLOCK_AMQP_HOT_PATH": "off"},
    "oarlock_metrics": {"ELASTICIO_METRICS_ADDR": "127.0.0.1:0"},  # served, not scraped: the cost of counting
    "baseline_plain": {BASELINE_MARK: "1"},
    "baseline": {BASELINE_MARK: "1"},
}


def one_round(
    plain: BrokerSandbox, encrypted: BrokerSandbox, messages: int, prefetch: int, runners: list[str]
) -> dict[str, tuple[float, float, float]]:
    """msgs/s, peak RSS and CPU µs per message (0 for the raw loops) of every runner, once, pairs back to back."""
    results: dict[str, tuple[float, float, float]] = {}
    for name in runners:
        broker = encrypted if name in ENCRYPTED else plain
        prefill(broker, messages)
        if name.startswith("raw"):
            rate = run_raw(
                broker, messages, prefetch=prefetch, sailor_work=name == "raw_sailor", tuned=name == "raw_tuned"
            )
            results[name] = (rate, 0.0, 0.0)
        else:
            concurrency = 1 if name == "oarlock_1" else prefetch
            extra = EXTRA_ENV.get(name)
            rate, rss = run_oarlock(
                broker, "passthrough", messages, prefetch=prefetch, concurrency=concurrency, extra_env=extra
            )
            results[name] = (rate, rss, LAST_CPU_US[0])
    return results


def print_throughput(rounds: list[dict[str, tuple[float, float, float]]], messages: int, prefetch: int) -> None:
    runners = [name for name in RUNNERS if name in rounds[0]]
    median = {name: statistics.median(r[name][0] for r in rounds) for name in runners}
    print(f"\n### Throughput, {messages} messages of 1 KB, prefetch {prefetch}, confirms on\n")
    print(
        f"(medians of {len(rounds)} interleaved rounds; an oarlock rate is timed over its output span, the first "
        "input's start header to the last output's end header, so the process start, the connect and the "
        "empty-queue detection of --burst are not in it; CPU per message has an empty run's CPU removed)\n"
    )
    print(
        "| messages | runner | msgs/s | peak RSS (MB) | CPU µs/msg | ratio to its raw pika loop | ratio to bare raw pika |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    cpu = {name: statistics.median(r[name][2] for r in rounds) for name in runners}
    for name in runners:
        kind = "encrypted" if name in ENCRYPTED else "plaintext"
        measured = name.startswith(("oarlock", "baseline"))
        rss = f"{max(r[name][1] for r in rounds):.1f}" if measured else "-"
        own = "raw_sailor" if name in ENCRYPTED else "raw"
        row = [kind, RUNNERS[name].format(prefetch=prefetch), f"{median[name]:,.0f}", rss]
        row.append(f"{cpu[name]:.0f}" if measured else "-")
        row += [f"{median[name] / median[base]:.2f}" if base in median else "-" for base in (own, "raw")]
        print("| " + " | ".join(row) + " |")
    print()
    for label, (ours, theirs) in RATIOS.items():
        if ours not in median or theirs not in median:
            continue
        per_round = [r[ours][0] / r[theirs][0] for r in rounds]
        print(
            f"{label} per round {', '.join(f'{x:.2f}' for x in per_round)} (median {statistics.median(per_round):.2f})"
        )
        if not ours.startswith("raw") and not theirs.startswith("raw"):  # the same runtime: CPU per message too
            per_round = [r[ours][2] / r[theirs][2] for r in rounds]
            print(
                f"{label}, CPU per message, per round {', '.join(f'{x:.2f}' for x in per_round)} "
                f"(median {statistics.median(per_round):.2f})"
            )
    peak_rss = max(r[name][1] for r in rounds for name in runners)
    print(f"peak RSS of any oarlock run {peak_rss:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--io-messages", type=int, default=400)
    parser.add_argument("--keys-messages", type=int, default=5000)
    parser.add_argument("--runners", default="", help="comma list of runners (default: all)")
    parser.add_argument("--throughput-only", action="store_true", help="leave out the updateKeys and I/O cases")
    parser.add_argument(
        "--baseline-lib",
        help="another checkout's lib/ folder (say a git worktree of an older commit): its oarlock is measured too, "
        "as the runners baseline_plain and baseline, each ratio per round",
    )
    args = parser.parse_args()
    default_runners = ",".join(name for name in RUNNERS if not name.startswith("baseline") or args.baseline_lib)
    runners = [name for name in (args.runners or default_runners).split(",") if name]
    if args.baseline_lib:
        BASELINE_LIB[0] = str(Path(args.baseline_lib).resolve())
    elif any(name.startswith("baseline") for name in runners):
        parser.error("the baseline runners need --baseline-lib")
    unknown = sorted(set(runners) - set(RUNNERS))
    if unknown or not runners:
        parser.error(f"unknown runners {unknown}: choose from {', '.join(RUNNERS)}")
    rounds = []
    with BrokerSandbox(password=None, iv=None) as plain, BrokerSandbox() as encrypted:
        for _ in range(args.rounds):
            rounds.append(one_round(plain, encrypted, args.messages, args.prefetch, runners))
    print_throughput(rounds, args.messages, args.prefetch)
    if args.throughput_only:
        return
    rows_keys = update_keys_case(args.keys_messages, args.prefetch)
    print(f"\n### One updateKeys per message ({args.keys_messages} messages, prefetch {args.prefetch})\n")
    print("| runner | msgs/s | ratio to raw pika |")
    print("| --- | ---: | ---: |")
    for label, rate_keys in rows_keys:
        print(f"| {label} | {rate_keys:,.0f} | {rate_keys / rows_keys[0][1]:.2f} |")
    counts = {1: max(40, args.io_messages // 10), 16: args.io_messages, 64: args.io_messages * 2}
    rows = io_bound(counts)
    print("\n### I/O-bound: one API call with 50 ms latency per message\n")
    print("| concurrency | messages | msgs/s |")
    print("| ---: | ---: | ---: |")
    for concurrency, rate_io in rows:
        print(f"| {concurrency} | {counts[concurrency]} | {rate_io:,.1f} |")


if __name__ == "__main__":
    main()
