"""``oarlock run --metrics`` on the real broker: scraped values equal what happened; /readyz follows the connection."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from oarlock.devprovider import DevProvider
from oarlock.testing import BrokerSandbox
from tests.integration.test_amqp_resilience import close_worker_connections, wait_for
from tests.support import run_cli

pytestmark = pytest.mark.amqp

WORK = """
def process(msg, cfg, snapshot, ctx):
    kind = msg.body.get("kind")
    if kind == "fail":
        raise ValueError("asked to fail")
    if kind == "rebound":
        ctx.emit("rebound", {"body": {"why": "busy"}})
        return None
    answer = ctx.http.get(f"{cfg['baseUrl']}/api/me", timeout=30)
    answer.raise_for_status()
    return {"body": {"n": msg.body.get("n"), "me": answer.json()["subject"]}}
"""


def write_component(folder: Path) -> Path:
    (folder / "lib").mkdir(parents=True)
    (folder / "lib" / "work.py").write_text(WORK)
    functions = {"work": {"title": "Work", "main": "lib/work.py", "metadata": {"in": {}, "out": {}}}}
    (folder / "component.json").write_text(json.dumps({"title": "Metrics test", "actions": functions}))
    return folder


LISTENING = re.compile(r"metrics and health on http://127\.0\.0\.1:(\d+)")


class Routes:
    """/metrics, /healthz and /readyz of a process on 127.0.0.1:``port``."""

    def __init__(self, port: int = 0) -> None:
        self.port = port

    def get(self, path: str) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path)
            answer = connection.getresponse()
            return answer.status, answer.read().decode()
        finally:
            connection.close()

    def scrape(self) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
        status, text = self.get("/metrics")
        assert status == 200
        values = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        return text, values


def listening_port(process: subprocess.Popen[bytes], log: Path) -> int:
    """The port the process logged it serves its routes on (it was given port 0)."""

    def logged() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        return LISTENING.search(log.read_text()) is not None

    wait_for(logged, timeout=60)
    found = LISTENING.search(log.read_text())
    assert found is not None
    return int(found.group(1))


class MeteredWorker(Routes):
    """``oarlock run --metrics 127.0.0.1:0`` as a subprocess."""

    def __init__(self, broker: BrokerSandbox, component: Path, cfg: dict[str, Any], tmp: Path, **env: str) -> None:
        cfg_path = tmp / f"cfg-{time.monotonic_ns()}.json"
        cfg_path.write_text(json.dumps(cfg))
        self.log = tmp / f"worker-{time.monotonic_ns()}.log"
        command = [sys.executable, "-m", "oarlock", "run", "--component", str(component), "--cfg", str(cfg_path)]
        with self.log.open("w") as sink:
            self.process = subprocess.Popen(
                [*command, "--metrics", "127.0.0.1:0"],
                env={**os.environ, **broker.env("work"), **env},
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        super().__init__(listening_port(self.process, self.log))

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        log = self.log.read_text()
        assert code == 0, log[-3000:]
        return log


def metric(values: dict[Any, float], name: str, **labels: str) -> float:
    return values[(name, tuple(sorted(labels.items())))]


def test_scraped_values_after_a_known_run_equal_what_happened_and_carry_no_secret(
    broker: BrokerSandbox, tmp_path: Path
) -> None:
    component = write_component(tmp_path / "component")
    account = f"acct-secret-{broker.id}"
    with DevProvider(ttl=1) as provider:  # every token lives 1 s: a message a second later refreshes first
        cfg = provider.cfg(account=account)
        worker = MeteredWorker(broker, component, cfg, tmp_path, ELASTICIO_RABBITMQ_PREFETCH_SAILOR="1")

        def one(body: Any = None, *, queue: str = "data", raw: bytes | None = None) -> None:
            before = broker.count(queue)
            broker.publish_input({"body": body} if raw is None else None, raw=raw)
            wait_for(lambda: broker.count(queue) > before)

        for n in range(3):
            time.sleep(1.1)  # past the token's lifetime: this message's call refreshes it
            one({"n": n})
        one({"kind": "fail"}, queue="error")
        one({"kind": "rebound"}, queue="rebound")
        one(raw=b"this is not an encrypted message", queue="error")
        assert provider.revoke() == 1  # the account's grant is revoked at the provider
        time.sleep(1.1)
        one({"n": 3}, queue="error")  # the refresh meets invalid_grant: re-authorization needed
        one({"n": 4}, queue="error")  # in the cooldown: no token request, an error at once

        def settled() -> float:
            values = worker.scrape()[1]
            outcomes = ("data", "error", "rebound", "bad_input", "requeued", "redelivery")
            return sum(metric(values, "oarlock_messages_total", function="work", outcome=o) for o in outcomes)

        wait_for(lambda: settled() == 8)
        text, values = worker.scrape()
        stats = provider.stats()
        assert worker.get("/healthz") == (200, "ok\n") and worker.get("/readyz") == (200, "ok\n")
        updates = [m.decrypted() for m in broker.take("updateKeys", broker.count("updateKeys"))]
        log = worker.stop()

    counted = {
        o: metric(values, "oarlock_messages_total", function="work", outcome=o)
        for o in ("data", "error", "rebound", "bad_input", "requeued", "redelivery")
    }
    assert counted == {"data": 3, "error": 3, "rebound": 1, "bad_input": 1, "requeued": 0, "redelivery": 0}
    assert metric(values, "oarlock_message_duration_seconds_count", function="work") == 8
    assert metric(values, "oarlock_messages_in_flight") == 0
    token_calls = stats["token_calls_by_grant"]["refresh_token"]
    refreshed = token_calls - stats["invalid_grant"]
    assert refreshed >= 3 and stats["invalid_grant"] == 1  # K refreshes, then the one refused grant
    assert metric(values, "oarlock_token_refreshes_total", outcome="ok") == refreshed == len(updates)
    assert metric(values, "oarlock_token_refreshes_total", outcome="needs_reauthorization") == 1
    assert metric(values, "oarlock_token_refreshes_total", outcome="retried") == 0
    assert metric(values, "oarlock_token_refreshes_total", outcome="failed") == 0
    assert metric(values, "oarlock_token_request_seconds_count") == token_calls
    assert metric(values, "oarlock_accounts_reauthorization_cooldown") == 1
    # data, errors, the bad input's error, the rebound, every updateKeys; not the credentialInvalid report (the
    # sandbox binds no queue to its key: it comes back unroutable, an answer that is not a confirm)
    outputs = 3 + 3 + 1 + 1 + len(updates)
    assert metric(values, "oarlock_publish_confirm_seconds_count") == outputs
    assert metric(values, "oarlock_broker_reconnects_total") == 0 and metric(values, "oarlock_broker_connected") == 1
    assert "_created" not in text
    secrets = {account, cfg["oauth"]["access_token"], cfg["oauth"]["refresh_token"], "oarlock-dev-secret"}
    secrets |= {u["oauth"]["access_token"] for u in updates} | {str(broker.password)}
    assert not [secret for secret in secrets if secret in text]
    assert "metrics and health on http://127.0.0.1:" in log


def test_readyz_is_503_while_the_broker_closed_the_connection_and_200_after_the_reconnect(
    broker: BrokerSandbox, tmp_path: Path
) -> None:
    component = write_component(tmp_path / "component")
    step = f"step-metrics-{broker.id}"
    worker = MeteredWorker(broker, component, {}, tmp_path, ELASTICIO_STEP_ID=step)
    wait_for(lambda: worker.get("/readyz") == (200, "ok\n"))
    seen: list[tuple[int, int]] = []  # (readyz, healthz) status while the connection is closed and reopened
    polling = threading.Event()

    def poll() -> None:
        while not polling.is_set():
            seen.append((worker.get("/readyz")[0], worker.get("/healthz")[0]))
            time.sleep(0.01)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        assert close_worker_connections(step) == 2  # the consuming and the publishing connection
        wait_for(lambda: any(ready == 503 for ready, _ in seen), timeout=60)
        wait_for(lambda: metric(worker.scrape()[1], "oarlock_broker_reconnects_total") == 1, timeout=60)
        wait_for(lambda: worker.get("/readyz") == (200, "ok\n"), timeout=60)
    finally:
        polling.set()
        poller.join(10)
    status, body = worker.get("/readyz")
    assert (status, body) == (200, "ok\n")
    assert all(healthy == 200 for _, healthy in seen)  # a broker outage is not a dead process
    broker.publish_input({"body": {"kind": "rebound"}})  # consuming again on the new connection
    wait_for(lambda: broker.count("rebound") == 1)
    log = worker.stop()
    assert "reconnecting" in log


def test_a_metrics_address_that_does_not_parse_is_one_line_and_exit_2(broker: BrokerSandbox, tmp_path: Path) -> None:
    component = write_component(tmp_path / "component")
    env = {**broker.env("work"), "ELASTICIO_CFG": "{}", "ELASTICIO_METRICS_ADDR": "localhost:http"}
    done = run_cli(["run", "--component", str(component)], env=env, timeout=60)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "ELASTICIO_METRICS_ADDR" in line and "'localhost:http' is not HOST:PORT" in line


def test_keys_serve_metrics_count_updates_by_result_and_accounts_by_state(
    broker: BrokerSandbox, tmp_path: Path
) -> None:
    keys = str(tmp_path / "keys.sqlite")
    key = broker.routing_keys["updateKeys"]
    for account, version in (("acct-a", 5), ("acct-a", 4), ("acct-b", 1)):  # the second is older than the first
        oauth = {"access_token": f"AT-secret-{account}-{version}"}
        body = broker.cipher.encrypt({"account": account, "version": version, "oauth": oauth})
        broker.channel.basic_publish(broker.exchange, key, body)
    broker.channel.basic_publish(broker.exchange, key, b"garbage that is not encrypted")
    env = {
        **os.environ,
        "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": broker.password or "",
        "ELASTICIO_MESSAGE_CRYPTO_IV": broker.iv or "",
        "ELASTICIO_AMQP_URI": broker.amqp_uri,
    }
    log = tmp_path / "serve.log"
    command = [
        sys.executable,
        "-m",
        "oarlock",
        "keys",
        "serve",
        "--store",
        keys,
        "--queue",
        broker.queues["updateKeys"],
    ]
    with log.open("w") as sink:
        service = subprocess.Popen([*command, "--metrics", ":0"], env=env, stdout=subprocess.DEVNULL, stderr=sink)
    try:
        probe = Routes(listening_port(service, log))

        def updates() -> dict[str, float]:
            values = probe.scrape()[1]
            return {r: metric(values, "oarlock_keys_updates_total", result=r) for r in ("stored", "older", "malformed")}

        wait_for(lambda: updates() == {"stored": 2, "older": 1, "malformed": 1})
        wait_for(lambda: probe.get("/readyz") == (200, "ok\n"))
        text, values = probe.scrape()
        assert probe.get("/healthz") == (200, "ok\n")
    finally:
        service.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0, log.read_text()[-3000:]
    assert metric(values, "oarlock_keys_accounts", state="active") == 2
    assert metric(values, "oarlock_keys_accounts", state="needs_reauthorization") == 0
    assert metric(values, "oarlock_keys_store_errors_total", operation="update") == 0
    assert metric(values, "oarlock_keys_keepalive_refreshes_total", outcome="ok") == 0
    assert metric(values, "oarlock_broker_connected") == 1
    assert "AT-secret" not in text and "acct-" not in text
