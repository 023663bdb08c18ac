"""Metrics and health: the definitions, the no-op hooks, label bounds, the server's routes (no broker, no sleeping)."""

from __future__ import annotations

import collections
import http.client
import socket
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from oarlock.component.model import Component
from oarlock.credentials.endpoint import TokenClient
from oarlock.credentials.manager import CredentialManager
from oarlock.credentials.presets import RefreshSettings
from oarlock.devprovider import DevProvider
from oarlock.errors import ConfigurationError, CredentialNeedsReauthorization, KeyStoreError, TokenEndpointError
from oarlock.metrics import hooks
from oarlock.metrics.address import parse_address
from oarlock.metrics.health import Health, LoopHealth
from oarlock.metrics.keys import KeysServeMetrics
from oarlock.metrics.run import OUTCOMES, STORE_OPERATIONS, WorkerMetrics, outcome_of
from oarlock.metrics.server import start_metrics_server
from oarlock.metrics.store import MeteredStore
from oarlock.protocol.stepconfig import StepConfig
from oarlock.runtime.executor import FunctionRunner
from oarlock.runtime.memory_transport import MemoryTransport
from oarlock.runtime.metered import MeteredRun, MeteredWorker, accounts_in_cooldown
from oarlock.runtime.runkit import PlainRun, run_kit
from oarlock.runtime.worker import Worker
from tests.support import TEST_COMPONENTS
from tests.unit.test_worker_rules import CIPHER, settings_for


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    assert found is not None, f"no sample {name}{labels}"
    return found


def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, dict(s.labels), s.value) for family in registry.collect() for s in family.samples]


# -- the definitions --------------------------------------------------------------------------------
def test_each_worker_metrics_has_a_registry_of_its_own_and_the_global_one_stays_untouched() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    first.bind("echo")
    second.bind("echo")
    first.broker_reconnected()
    assert value(first.registry, "oarlock_broker_reconnects_total") == 1
    assert value(second.registry, "oarlock_broker_reconnects_total") == 0
    assert not any(name.startswith("oarlock_") for name, _, _ in samples(REGISTRY))


def test_every_labelled_series_is_there_at_zero_from_the_start() -> None:
    metrics = WorkerMetrics()
    metrics.bind("echo")
    for outcome in OUTCOMES:
        assert value(metrics.registry, "oarlock_messages_total", function="echo", outcome=outcome) == 0
    for outcome in hooks.REFRESH_OUTCOMES:
        assert value(metrics.registry, "oarlock_token_refreshes_total", outcome=outcome) == 0
    for operation in STORE_OPERATIONS:
        assert value(metrics.registry, "oarlock_keys_store_errors_total", operation=operation) == 0
    assert value(metrics.registry, "oarlock_message_duration_seconds_count", function="echo") == 0


def job(*, decoded: bool = True, errored: bool = False) -> Any:
    return SimpleNamespace(view=SimpleNamespace(message=object() if decoded else None), errored=errored)


@pytest.mark.parametrize(
    ("settle", "decoded", "errored", "rebounded", "expected"),
    [
        ("ack", True, False, False, "data"),
        ("ack", True, False, True, "rebound"),
        ("reject", True, True, False, "error"),
        ("reject", True, True, True, "error"),  # past the rebound limit: an error
        ("reject", False, True, False, "bad_input"),
        ("requeue", True, False, False, "requeued"),
        (None, True, False, False, "redelivery"),
    ],
)
def test_an_input_s_outcome_follows_how_it_was_settled(
    settle: str | None, decoded: bool, errored: bool, rebounded: bool, expected: str
) -> None:
    assert outcome_of(job(decoded=decoded, errored=errored), settle, rebounded=rebounded) == expected


def test_a_settled_input_is_counted_and_timed_on_the_injected_clock() -> None:
    now = [100.0]
    metrics = WorkerMetrics(monotonic=lambda: now[0])
    metrics.bind("echo")
    now[0] = 100.25
    metrics.message_settled(job(), "ack", 100.0, rebounded=False)
    metrics.publish_confirmed(100.2)
    registry = metrics.registry
    assert value(registry, "oarlock_messages_total", function="echo", outcome="data") == 1
    assert value(registry, "oarlock_message_duration_seconds_sum", function="echo") == pytest.approx(0.25)
    assert value(registry, "oarlock_message_duration_seconds_bucket", function="echo", le="0.25") == 1
    assert value(registry, "oarlock_message_duration_seconds_bucket", function="echo", le="0.1") == 0
    assert value(registry, "oarlock_publish_confirm_seconds_sum") == pytest.approx(0.05)


def test_a_lock_free_histogram_counts_a_value_on_a_bound_into_that_bound_s_bucket() -> None:
    from oarlock.metrics.local import LocalHistogram

    histogram = LocalHistogram((0.1, 1.0))
    for seen in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(seen)
    (family,) = [histogram.family("x_seconds", "x")]
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "x_seconds_bucket"}
    assert buckets == {"0.1": 2, "1.0": 4, "+Inf": 5}  # cumulative, as Prometheus reads them
    totals = {s.name: s.value for s in family.samples if "bucket" not in s.name}
    assert totals == {"x_seconds_count": 5, "x_seconds_sum": pytest.approx(8.65)}


def test_scrape_time_gauges_read_their_functions_only_when_collected() -> None:
    metrics = WorkerMetrics()
    calls = []
    metrics.watch(in_flight=lambda: calls.append(1) or 3, cooldown=lambda: 2, connected=lambda: False)
    assert calls == []
    assert value(metrics.registry, "oarlock_messages_in_flight") == 3 and calls == [1]
    assert value(metrics.registry, "oarlock_accounts_reauthorization_cooldown") == 2
    assert value(metrics.registry, "oarlock_broker_connected") == 0


# -- the credential engine's hooks ---------------------------------------------------------------
def test_without_metrics_the_hooks_are_one_module_level_no_op_object() -> None:
    assert hooks.active is hooks.NOOP and type(hooks.NOOP) is hooks.Hooks
    assert hooks.Hooks.__slots__ == ()  # nothing to set up, nothing kept
    assert hooks.NOOP.token_refresh("ok", 1) is None and hooks.NOOP.token_request(0.1) is None


def test_installed_hooks_are_the_process_s_until_the_block_ends() -> None:
    metrics = WorkerMetrics()
    with hooks.installed(metrics):
        assert hooks.active is metrics
    assert hooks.active is hooks.NOOP


def refresh_settings(provider: DevProvider) -> RefreshSettings:
    return RefreshSettings.from_cfg(
        {"token_uri": provider.token_url, "client_id": "oarlock-dev", "client_secret": "oarlock-dev-secret"}
    )


def test_token_refreshes_are_counted_by_outcome_with_retries_and_every_request_timed() -> None:
    metrics = WorkerMetrics()
    client = TokenClient(sleep=lambda seconds: None)  # the backoff is not waited out
    with DevProvider(fail_first=2) as provider, hooks.installed(metrics):
        token = provider.mint()
        client.refresh(refresh_settings(provider), dict(token), account="acct-1")  # 503, 503, then a token
        provider.revoke()
        with pytest.raises(CredentialNeedsReauthorization):
            client.refresh(refresh_settings(provider), dict(token), account="acct-1")
        provider.configure(fail_first=10)
        with pytest.raises(TokenEndpointError):
            TokenClient(sleep=lambda s: None, max_attempts=2).refresh(
                refresh_settings(provider), dict(token), account="acct-1"
            )
    registry = metrics.registry
    assert value(registry, "oarlock_token_refreshes_total", outcome="ok") == 1
    assert value(registry, "oarlock_token_refreshes_total", outcome="retried") == 2 + 1
    assert value(registry, "oarlock_token_refreshes_total", outcome="needs_reauthorization") == 1
    assert value(registry, "oarlock_token_refreshes_total", outcome="failed") == 1
    assert value(registry, "oarlock_token_request_seconds_count") == 3 + 1 + 2


def test_a_token_the_api_rejects_right_after_its_refresh_is_counted_as_rejected() -> None:
    metrics = WorkerMetrics()
    manager = CredentialManager()
    cfg = {"_account": "acct-1", "oauth": {"access_token": "a1", "refresh_token": "r1"}, "oauth2": {}}
    bound = manager.credential(cfg, sink=SimpleNamespace(emit=lambda event: None))
    with hooks.installed(metrics):
        bound.rejected_after_refresh("a1")
    assert value(metrics.registry, "oarlock_token_refreshes_total", outcome="rejected") == 1


def test_accounts_in_the_reauthorization_cooldown_are_counted_from_the_manager_s_states() -> None:
    now = [1000.0]
    manager = CredentialManager(clock=lambda: now[0], cooldown_seconds=30)
    for account in ("a", "b"):
        manager.seed(account, {"access_token": f"t-{account}"}, 1)
    manager._states["a"].dead_until = 1030.0
    assert accounts_in_cooldown(manager) == 1
    now[0] = 1031.0
    assert accounts_in_cooldown(manager) == 0


# -- the worker ----------------------------------------------------------------------------------------
@pytest.fixture
def metered() -> Iterator[Callable[[str], tuple[MemoryTransport, WorkerMetrics]]]:
    """A metered worker of one function of the test component, on a memory transport."""
    workers: list[Worker] = []

    def start(function: str) -> tuple[MemoryTransport, WorkerMetrics]:
        metrics, transport = WorkerMetrics(), MemoryTransport()
        runner = FunctionRunner(Component.load(TEST_COMPONENTS / "amqp"), function, credentials=CredentialManager())
        worker = MeteredWorker(
            settings_for(function), runner, StepConfig({}), transport, concurrency=1, metrics=metrics
        )
        assert isinstance(worker, Worker)
        worker.start()
        workers.append(worker)
        return transport, metrics

    yield start
    for worker in workers:
        worker.stop()


def send(transport: MemoryTransport, n: int) -> None:
    transport.deliver(CIPHER.encrypt({"id": f"m-{n}", "body": {"n": n}, "headers": {}}), {"messageId": f"m-{n}"})


def settled(transport: MemoryTransport, metrics: WorkerMetrics, count: int) -> dict[str, float]:
    """The inputs counted by outcome, once ``count`` are."""

    def counted() -> dict[str, float]:
        registry, function = metrics.registry, str(metrics.function)
        return {o: value(registry, "oarlock_messages_total", function=function, outcome=o) for o in OUTCOMES}

    transport.wait_for(lambda: sum(counted().values()) >= count)
    return {outcome: n for outcome, n in counted().items() if n}


def test_the_metered_worker_counts_its_inputs_by_outcome_with_bounded_labels(
    metered: Callable[[str], tuple[MemoryTransport, WorkerMetrics]],
) -> None:
    transport, metrics = metered("echo")
    for n in range(3):
        send(transport, n)
    transport.deliver(b"this is not an encrypted message", {"messageId": "bad-1"})
    assert settled(transport, metrics, 4) == {"data": 3, "bad_input": 1}
    registry = metrics.registry
    assert value(registry, "oarlock_message_duration_seconds_count", function="echo") == 4
    assert value(registry, "oarlock_messages_in_flight") == 0
    labels = {(key, v) for _, found, _ in samples(registry) for key, v in found.items() if key != "le"}
    allowed = {("function", "echo")} | {("outcome", o) for o in (*OUTCOMES, *hooks.REFRESH_OUTCOMES)}
    allowed |= {("operation", o) for o in STORE_OPERATIONS}
    assert labels <= allowed  # no message id, no account, nothing that grows with the traffic


def test_rebounds_errors_and_lost_confirms_are_outcomes_of_their_own(
    metered: Callable[[str], tuple[MemoryTransport, WorkerMetrics]],
) -> None:
    rebound, rebound_metrics = metered("rebound")
    send(rebound, 1)
    rebound.deliver(
        CIPHER.encrypt({"id": "m-2", "body": {}, "headers": {}}), {"messageId": "m-2", "reboundIteration": 20}
    )  # past the limit: an error
    assert settled(rebound, rebound_metrics, 2) == {"rebound": 1, "error": 1}
    failing, failing_metrics = metered("fail")
    send(failing, 1)
    assert settled(failing, failing_metrics, 1) == {"error": 1}
    echo, echo_metrics = metered("echo")
    echo.hold_confirms()
    send(echo, 1)
    echo.wait_for(lambda: echo.published)
    echo.lose_connection()
    echo.release_confirms()
    assert settled(echo, echo_metrics, 2) == {"redelivery": 1, "data": 1}  # the copy the broker redelivered ran


def test_a_worker_of_a_function_component_json_does_not_define_is_labelled_unloadable() -> None:
    from oarlock.errors import ComponentError
    from oarlock.runtime.executor import UnloadableFunction

    metrics = WorkerMetrics()
    unloadable = UnloadableFunction(ComponentError("no such function"))
    MeteredWorker(settings_for("made-up-name"), unloadable, StepConfig({}), MemoryTransport(), metrics=metrics)
    assert metrics.function == "unloadable"
    assert not any(found.get("function") == "made-up-name" for _, found, _ in samples(metrics.registry))


def test_with_metrics_off_oarlock_run_builds_the_plain_worker_transport_and_store() -> None:
    kit = run_kit(None, {})
    assert type(kit) is PlainRun
    store = object()
    assert kit.store(store) is store
    assert type(kit.worker(settings_for("echo"), None, StepConfig({}), MemoryTransport())) is Worker
    assert type(run_kit("", {"ELASTICIO_METRICS_ADDR": "  "})) is PlainRun
    assert isinstance(run_kit(None, {"ELASTICIO_METRICS_ADDR": ":9100"}), MeteredRun)
    assert run_kit("9200", {"ELASTICIO_METRICS_ADDR": ":9100"}).address == ("127.0.0.1", 9200)  # type: ignore[attr-defined]


# -- the keys store -------------------------------------------------------------------------------------
class FlakyStore:
    """A keys store whose save fails, and whose lock fails to be taken once."""

    def __init__(self) -> None:
        self.lock_failures = 1

    def get(self, account: str) -> None:
        return None

    def save(self, *args: Any) -> bool:
        raise KeyStoreError("the store is read-only")

    def lock(self, account: str, timeout: float = 30.0) -> Any:
        store = self

        class Held:
            def __enter__(self) -> None:
                if store.lock_failures:
                    store.lock_failures -= 1
                    raise KeyStoreError("lock timeout")

            def __exit__(self, *exc: object) -> None:
                return None

        return Held()

    def record_state(self, *args: Any) -> None:
        raise KeyStoreError("cannot record")

    def __repr__(self) -> str:
        return "FlakyStore(sqlite:///tmp/x)"


def test_a_keys_store_error_is_counted_by_operation_and_raised_on_unchanged() -> None:
    metrics = WorkerMetrics()
    store = MeteredStore(FlakyStore(), metrics.store_error)
    assert store.get("a") is None and repr(store) == "FlakyStore(sqlite:///tmp/x)"
    with pytest.raises(KeyStoreError, match="read-only"):
        store.save("a", {}, 1)
    with pytest.raises(KeyStoreError, match="lock timeout"), store.lock("a"):
        pass
    with pytest.raises(ValueError), store.lock("a"):  # the guarded code's own error is not the lock's
        raise ValueError("inside")
    with pytest.raises(KeyStoreError, match="cannot record"):
        store.record_state("a", "active")
    registry = metrics.registry
    counted = {op: value(registry, "oarlock_keys_store_errors_total", operation=op) for op in STORE_OPERATIONS}
    assert counted == {**dict.fromkeys(STORE_OPERATIONS, 0.0), "save": 1, "lock": 1, "record_state": 1}


# -- the address, the server, health ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9100", ("127.0.0.1", 9100)),
        (":9100", ("127.0.0.1", 9100)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9100", ("::1", 9100)),
        (" 127.0.0.1:9101 ", ("127.0.0.1", 9101)),
    ],
)
def test_the_metrics_address_is_host_port_with_the_host_127_0_0_1_by_default(
    text: str, expected: tuple[str, int]
) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "host", "host:", "host:http", ":70000", "::1:9100", "[::1]9100", "1.2.3.4:-1"])
def test_a_metrics_address_that_does_not_parse_is_an_error_naming_the_option(text: str) -> None:
    with pytest.raises(ConfigurationError, match="ELASTICIO_METRICS_ADDR") as raised:
        parse_address(text)
    assert "\n" not in str(raised.value)


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        answer = connection.getresponse()
        return answer.status, answer.getheader("Content-Type") or "", answer.read().decode()
    finally:
        connection.close()


def test_the_server_answers_metrics_healthz_and_readyz_and_404_elsewhere() -> None:
    metrics = WorkerMetrics()
    metrics.bind("echo")
    ready: list[str | None] = ["not connected to the broker and consuming"]
    server = start_metrics_server("127.0.0.1:0", metrics.registry, Health(lambda: None, lambda: ready[0]))
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        status, kind, body = get(server.port, "/metrics")
        assert status == 200 and kind.startswith("text/plain")
        assert 'oarlock_messages_total{function="echo",outcome="data"} 0.0' in body
        assert get(server.port, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
        assert get(server.port, "/readyz")[::2] == (503, "not connected to the broker and consuming\n")
        ready[0] = None
        assert get(server.port, "/readyz?verbose=1")[::2] == (200, "ok\n")
        assert get(server.port, "/readyz", "HEAD")[::2] == (200, "")
        status, _, body = get(server.port, "/admin")
        assert status == 404 and "/metrics, /healthz, /readyz" in body
    finally:
        server.close()


def test_a_port_in_use_is_a_configuration_error_naming_the_address() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(
            ConfigurationError, match=f"cannot serve metrics on 127.0.0.1:{port}: address already in use"
        ):
            start_metrics_server(f":{port}", CollectorRegistry())
    finally:
        taken.close()


class LoopStub:
    """A transport's I/O loop turned by hand: call_later keeps the callbacks, turn() runs the due ones."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self.consuming = True
        self.lock = threading.Lock()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.timers.append((self.clock() + delay, fn))

    def turn(self) -> None:
        due = [t for t in self.timers if t[0] <= self.clock()]
        self.timers = [t for t in self.timers if t[0] > self.clock()]
        for _, fn in due:
            fn()


def test_healthz_says_503_once_the_io_loop_stops_turning_and_readyz_follows_the_connection() -> None:
    now = [0.0]
    transport: list[LoopStub | None] = [None]
    loop = LoopStub(lambda: now[0])
    health = LoopHealth(lambda: transport[0], lambda t: t.consuming, clock=lambda: now[0])
    assert health.live() is None and health.ready() == "starting: not connected to the broker yet"
    transport[0] = loop
    assert health.live() is None and health.ready() is None and loop.timers  # the heartbeat is scheduled
    for _ in range(10):  # the loop turns: a beat a second
        now[0] += 1
        loop.turn()
    assert health.live() is None
    loop.consuming = False
    assert health.ready() == "not connected to the broker and consuming"
    loop.consuming = True
    now[0] += 6  # no turn for 6 s: stuck
    assert health.live() == "the I/O loop has not turned for 6.0 s"
    assert health.ready() == "the I/O loop has not turned for 6.0 s"
    loop.turn()
    assert health.live() is None and health.ready() is None


# -- keys serve ------------------------------------------------------------------------------------------
def test_keys_serve_metrics_read_the_service_counters_and_count_accounts_at_most_every_10_s() -> None:
    now = [0.0]
    counts = {"stored": 3, "older": 1, "malformed": 2, "store_errors": 4}
    reads = []

    def accounts() -> dict[str, int]:
        reads.append(now[0])
        if len(reads) == 3:
            raise KeyStoreError("the store went away")
        return {"active": 2, "needs_reauthorization": 1, "acct-secret": 99}

    states = ("active", "refresh_failing", "needs_reauthorization")
    metrics = KeysServeMetrics(lambda: counts, accounts=accounts, states=states, clock=lambda: now[0])
    registry = metrics.registry
    assert [value(registry, "oarlock_keys_updates_total", result=r) for r in ("stored", "older", "malformed")] == [
        3,
        1,
        2,
    ]
    assert value(registry, "oarlock_keys_store_errors_total", operation="update") == 4
    assert value(registry, "oarlock_keys_accounts", state="needs_reauthorization") == 1
    assert value(registry, "oarlock_keys_accounts", state="refresh_failing") == 0
    assert registry.get_sample_value("oarlock_keys_accounts", {"state": "acct-secret"}) is None  # only known states
    now[0] = 5
    value(registry, "oarlock_keys_accounts", state="active")
    assert reads == [0.0]  # served from the last count
    now[0] = 11
    assert value(registry, "oarlock_keys_accounts", state="active") == 2 and reads == [0.0, 11]
    now[0] = 12
    counts["stored"] = 4  # an update was stored since: counted again at once
    assert value(registry, "oarlock_keys_accounts", state="active") == 2  # the store failed: the last count
    assert reads == [0.0, 11, 12]
    with hooks.installed(metrics):
        hooks.active.token_refresh("ok", 2)
        hooks.active.token_request(0.5)
    assert value(registry, "oarlock_keys_keepalive_refreshes_total", outcome="ok") == 1
    assert value(registry, "oarlock_keys_keepalive_refreshes_total", outcome="retried") == 1
    assert value(registry, "oarlock_token_request_seconds_count") == 1


def test_a_run_without_metrics_never_imports_prometheus_client() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, oarlock.cli.main, oarlock.cli.run, oarlock.credentials.manager\n"
        "from oarlock.runtime.runkit import run_kit\n"
        "run_kit(None, {})\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"


def test_every_confirmed_publish_is_timed_once_on_the_io_thread_s_next_turn_and_a_refused_one_never() -> None:
    from oarlock.amqp.metered import MeteredTransport
    from oarlock.amqp.types import Outgoing
    from oarlock.errors import PublishError

    metrics = WorkerMetrics()
    transport = MeteredTransport("amqp://guest:guest@127.0.0.1:9/%2F", metrics=metrics)  # never started
    try:
        message = Outgoing("exchange", "rk", b"{}", {})
        early, late, refused = (transport.publish(message) for _ in range(3))
        early.resolve()  # answered before the I/O thread took note of it
        refused.resolve(PublishError("returned as unroutable"))
        transport._time_published()  # what the I/O thread does before its next hand-over or confirm
        late.resolve()
        transport._time_published()
    finally:
        transport.close()
    registry = metrics.registry
    assert value(registry, "oarlock_publish_confirm_seconds_count") == 2
    assert transport._published == collections.deque()
