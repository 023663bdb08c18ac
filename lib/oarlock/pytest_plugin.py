"""oarlock's pytest plugin for component authors (entry point ``pytest11``: active wherever oarlock is installed).

Fixtures (none is autouse; each does nothing until a test asks for it):

- ``dev_provider``: a live :class:`~oarlock.devprovider.DevProvider` on 127.0.0.1, stopped after the
  test. Its options come from ``@pytest.mark.dev_provider(ttl=60, rotation="single-use", fail_first=2,
  routes={("GET", "/me"): {"json": {"id": 1}}})`` on the test, its class or its module: any
  ``DevProvider`` option, ``routes`` a mapping, a list or a JSON file (relative to the test file's
  folder), and ``clock``: ``"manual"`` (the default: a :class:`~oarlock.devprovider.ManualClock`
  that stands still, so tokens expire only on ``dev_provider.advance(seconds)``), ``"real"``,
  or any callable returning epoch seconds.
- ``dev_provider_factory``: ``dev_provider_factory(**options)`` starts another provider with the same
  options (several providers, or options computed in the test); all are stopped after the test.
- ``oarlock_call``: ``oarlock_call(function, messages, cfg, snapshot=None, component=".")`` runs a
  function in-process through the executor of ``oarlock call`` (cfg from the newest stored credential,
  component.json's oauth2 defaults, metadata.in check, snapshot carried from message to message,
  refreshes stored) and returns a :class:`CallEvents`.
- ``oarlock_verify``: ``oarlock_verify(cfg, component=".")`` runs verify_credentials.py as
  ``oarlock verify`` does and returns what it prints: ``{"verified": …, "reason": …}``.
- ``oarlock_keys``: the path of the test's own SQLite keys store, which both of them use.
- ``broker``: a :class:`~oarlock.testing.BrokerSandbox` on the RabbitMQ of ``OARLOCK_TEST_AMQP_URI``
  (default ``amqp://guest:guest@127.0.0.1:5672/%2F``). When no broker answers there the test is
  skipped, saying so; when the ``CI`` environment variable is set (not empty, 0, false or no) it fails
  instead, so a CI job without its broker cannot pass by skipping. Tests using it are marked ``amqp``.

Markers registered: ``dev_provider`` (the options above) and ``amqp`` (needs the broker), so a project
running with ``--strict-markers`` needs no configuration of its own.

oarlock's own modules are imported inside the fixtures: loading the plugin costs a project nothing.
"""

from __future__ import annotations

import functools
import io
import json
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from oarlock.devprovider.server import DevProvider
    from oarlock.keys.store import KeyStore
    from oarlock.protocol.events import Event, EventSink
    from oarlock.protocol.message import Message
    from oarlock.runtime.executor import CallResult
    from oarlock.testing import BrokerSandbox

DEFAULT_TEST_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/%2F"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "dev_provider(**options): options of the dev_provider fixture: DevProvider's (ttl, rotation, fail_first,"
        " throttle_first, omit_refresh_token, …), routes (a mapping, a list or a JSON file) and clock"
        " ('manual', 'real' or a callable)",
    )
    if not any(str(line).split(":")[0].strip() == "amqp" for line in config.getini("markers")):
        config.addinivalue_line("markers", "amqp: needs a RabbitMQ broker (the broker fixture)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test using the ``broker`` fixture is an ``amqp`` test (``-m "not amqp"`` leaves it out)."""
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()) and item.get_closest_marker("amqp") is None:
            item.add_marker(pytest.mark.amqp)


# -- the dev provider -------------------------------------------------------------------------------


def _provider_options(options: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    from oarlock.devprovider.state import ManualClock

    resolved = dict(options)
    clock = resolved.pop("clock", "manual")
    if clock == "manual":
        resolved["clock"] = ManualClock()
    elif callable(clock):
        resolved["clock"] = clock
    elif clock != "real":
        pytest.fail(f"dev_provider: clock must be 'manual', 'real' or a callable, not {clock!r}", pytrace=False)
    routes = resolved.get("routes")
    if isinstance(routes, (str, os.PathLike)) and not Path(routes).is_absolute():
        resolved["routes"] = folder / routes
    return resolved


@pytest.fixture
def dev_provider_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., DevProvider]]:
    """``dev_provider_factory(**options)``: a started DevProvider (options as the ``dev_provider`` marker's)."""
    from oarlock.devprovider.server import DevProvider

    started: list[DevProvider] = []

    def start(**options: Any) -> DevProvider:
        provider = DevProvider(**_provider_options(options, request.path.parent))
        started.append(provider.start())
        return provider

    yield start
    for provider in reversed(started):
        provider.stop()


@pytest.fixture
def dev_provider(request: pytest.FixtureRequest, dev_provider_factory: Callable[..., DevProvider]) -> DevProvider:
    """A live local OAuth2 provider and API; ``@pytest.mark.dev_provider(...)`` sets its options."""
    marker = request.node.get_closest_marker("dev_provider")
    if marker is not None and marker.args:
        pytest.fail("@pytest.mark.dev_provider takes keyword options only, e.g. dev_provider(ttl=60)", pytrace=False)
    return dev_provider_factory(**(marker.kwargs if marker is not None else {}))


# -- calling a function in-process ------------------------------------------------------------------


@dataclass
class CallEvents:
    """What one ``oarlock_call`` emitted, by kind, in order (over all its messages)."""

    #: the data events, as the Messages the platform would receive (``.body``, ``.headers``, …)
    data: list[Message] = field(default_factory=list)
    #: the error events: ``{"name", "message", "stack"}``, secrets masked
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: the updateKeys events (``{"oauth", "response", "account", "version"}``), tokens masked unless ``reveal``
    updateKeys: list[dict[str, Any]] = field(default_factory=list)  # the event's name
    #: the payloads of the snapshot and updateSnapshot events
    snapshot: list[dict[str, Any]] = field(default_factory=list)
    #: every event in order, rebound, httpReply and end included
    events: list[Event] = field(default_factory=list)
    #: the snapshot after the last message (what ``oarlock call --snapshot`` writes back): pass it to the next call
    final_snapshot: dict[str, Any] = field(default_factory=dict)

    @property
    def bodies(self) -> list[Any]:
        """The bodies of the data events."""
        return [message.body for message in self.data]


class OarlockCall(Protocol):
    """The ``oarlock_call`` fixture."""

    def __call__(
        self,
        function: str,
        messages: Iterable[Any] | Mapping[str, Any],
        cfg: Mapping[str, Any] | str | Path,
        snapshot: Mapping[str, Any] | None = None,
        component: str | Path = ".",
        *,
        keys: str | Path | None = None,
        no_keys: bool = False,
        reveal: bool = False,
    ) -> CallEvents: ...


class OarlockVerify(Protocol):
    """The ``oarlock_verify`` fixture."""

    def __call__(
        self,
        cfg: Mapping[str, Any] | str | Path,
        component: str | Path = ".",
        *,
        keys: str | Path | None = None,
        no_keys: bool = False,
    ) -> dict[str, Any]: ...


def call_function(
    function: str,
    messages: Iterable[Any] | Mapping[str, Any],
    cfg: Mapping[str, Any] | str | Path,
    snapshot: Mapping[str, Any] | None = None,
    component: str | Path = ".",
    *,
    keys: str | Path | None = None,
    reveal: bool = False,
) -> CallEvents:
    """Run FUNCTION of the component for each message, in order, as ``oarlock call`` does, in this process.

    ``messages``: Messages or message dicts ``{"body": …, "headers": …}`` (``{}`` is an empty message);
    ``cfg``: a dict or the path of a JSON file; ``keys``: a keys store (SQLite path or postgresql:// URL),
    None for none. A component that cannot be loaded raises its ComponentError; a function's failure is an
    error event in the result, as on a platform.
    """
    from oarlock.component.model import Component
    from oarlock.credentials.manager import CredentialManager, start_from_stored
    from oarlock.protocol.events import EventName
    from oarlock.redact import redact
    from oarlock.runtime.local import LocalRun

    inputs = _messages(messages)
    store = _open_keys(keys)
    try:
        start_cfg = start_from_stored(_cfg(cfg), store)
        credentials = CredentialManager(coordinator=store)
        try:
            runner = _recording_runner()(Component.load(component), function, credentials=credentials)
            runner.init(start_cfg)
            local = LocalRun(runner, start_cfg, out=_Discard(), snapshot=dict(snapshot or {}), keys=store)
            for index, message in enumerate(inputs):
                local.run_message(index, message)
        finally:
            credentials.close()
    finally:
        if store is not None:
            store.close()
    outcome = CallEvents(final_snapshot=dict(local.snapshot))
    for result in runner.results:
        if result.retry_later is not None:  # not the function's fault: the keys store failed
            raise result.retry_later
        for event in result.events:
            outcome.events.append(event)
            if event.name is EventName.DATA:
                outcome.data.append(event.payload)
            elif event.name is EventName.ERROR:
                outcome.errors.append(dict(event.payload))
            elif event.name is EventName.UPDATE_KEYS:
                outcome.updateKeys.append(event.payload if reveal else redact(event.payload))
            elif event.name in (EventName.SNAPSHOT, EventName.UPDATE_SNAPSHOT):
                outcome.snapshot.append(dict(event.payload))
    return outcome


def verify_component(
    cfg: Mapping[str, Any] | str | Path, component: str | Path = ".", *, keys: str | Path | None = None
) -> dict[str, Any]:
    """Run the component's verify_credentials.py as ``oarlock verify`` does; returns what it prints."""
    from oarlock.component.model import Component
    from oarlock.redact import redact
    from oarlock.runtime.verify import verify_with_keys

    loaded = Component.load(component)
    store = _open_keys(keys)
    try:
        result = verify_with_keys(loaded.verifier_path(), _cfg(cfg), keys=store, component=loaded)
    finally:
        if store is not None:
            store.close()
    result.pop("updateKeys", None)
    answer: dict[str, Any] = redact(result)
    return answer


@pytest.fixture
def oarlock_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The path of the test's SQLite keys store (the file appears on first use): ``oarlock_call``'s and ``oarlock_verify``'s."""
    return tmp_path_factory.mktemp("oarlock-keys") / "keys.sqlite"


@pytest.fixture
def oarlock_call(oarlock_keys: Path) -> OarlockCall:
    """``oarlock_call(function, messages, cfg, snapshot=None, component=".")`` -> :class:`CallEvents`.

    The calls of one test share the keys store ``oarlock_keys`` (``keys=`` another one, ``no_keys=True`` none),
    so a credential refreshed by one call is where the next call starts, as with ``oarlock call``.
    """

    def call(
        function: str,
        messages: Iterable[Any] | Mapping[str, Any],
        cfg: Mapping[str, Any] | str | Path,
        snapshot: Mapping[str, Any] | None = None,
        component: str | Path = ".",
        *,
        keys: str | Path | None = None,
        no_keys: bool = False,
        reveal: bool = False,
    ) -> CallEvents:
        store = None if no_keys else (keys or oarlock_keys)
        return call_function(function, messages, cfg, snapshot, component, keys=store, reveal=reveal)

    return call


@pytest.fixture
def oarlock_verify(oarlock_keys: Path) -> OarlockVerify:
    """``oarlock_verify(cfg, component=".")`` -> ``{"verified": …, "reason": …}`` (keys store: ``oarlock_keys``)."""

    def verify(
        cfg: Mapping[str, Any] | str | Path,
        component: str | Path = ".",
        *,
        keys: str | Path | None = None,
        no_keys: bool = False,
    ) -> dict[str, Any]:
        return verify_component(cfg, component, keys=None if no_keys else (keys or oarlock_keys))

    return verify


@functools.cache
def _recording_runner() -> Any:
    """The executor's FunctionRunner keeping each call's result (defined on first use: imports are lazy here)."""
    from oarlock.runtime.executor import FunctionRunner

    class RecordingRunner(FunctionRunner):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.results: list[CallResult] = []

        def call(
            self,
            message: Message,
            cfg: Mapping[str, Any],
            snapshot: Mapping[str, Any] | None = None,
            sink: EventSink | None = None,
        ) -> CallResult:
            result = super().call(message, cfg, snapshot, sink)
            self.results.append(result)
            return result

    return RecordingRunner


class _Discard(io.StringIO):
    """The JSON-lines output of LocalRun, not needed here (the results carry the events)."""

    def write(self, text: str) -> int:
        return len(text)


def _messages(messages: Iterable[Any] | Mapping[str, Any]) -> list[Message]:
    from oarlock.errors import ConfigurationError
    from oarlock.protocol.message import Message

    items = [messages] if isinstance(messages, (Mapping, Message)) else list(messages)
    out: list[Message] = []
    for index, item in enumerate(items):
        if isinstance(item, Message):
            out.append(item)
        elif isinstance(item, Mapping) and (not item or "body" in item):
            out.append(Message.from_dict(dict(item), where=f"message {index}"))
        else:
            raise ConfigurationError(
                f"message {index} must be a Message or a dict with a 'body' key ({{}} for an empty message),"
                f" not {item!r:.80}"
            )
    return out


def _cfg(cfg: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    from oarlock.errors import ConfigurationError

    if isinstance(cfg, Mapping):
        try:  # a private copy: the run rewrites its credential
            copied: dict[str, Any] = json.loads(json.dumps(dict(cfg)))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"the cfg must be JSON: {exc}") from None
        return copied
    try:
        data = json.loads(Path(cfg).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cfg file {cfg} cannot be read as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"cfg file {cfg} must hold a JSON object")
    return data


def _open_keys(keys: str | Path | None) -> KeyStore | None:
    from oarlock.keys.store import open_store

    return open_store(str(keys)) if keys is not None else None


# -- the broker -------------------------------------------------------------------------------------


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _broker_absent(uri: str) -> str | None:
    """Why no broker answers at ``uri`` (host and port only: the URI may hold a password), or None."""
    parts = urlsplit(uri)
    host, port = parts.hostname or "127.0.0.1", parts.port or (5671 if parts.scheme == "amqps" else 5672)
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as exc:
        return f"no RabbitMQ broker answers on {host}:{port} ({exc.strerror or type(exc).__name__})"


@pytest.fixture
def broker() -> Iterator[BrokerSandbox]:
    """A throwaway exchange, input queue and output queues on a real RabbitMQ (skipped without one, unless CI)."""
    uri = os.environ.get("OARLOCK_TEST_AMQP_URI") or DEFAULT_TEST_AMQP_URI
    absent = _broker_absent(uri)
    if absent is not None:
        if _in_ci():
            pytest.fail(
                f"{absent}; CI is set, so a missing broker fails the test instead of skipping it", pytrace=False
            )
        pytest.skip(f"{absent}: start one, or set OARLOCK_TEST_AMQP_URI (with CI set this is a failure)")
    from oarlock.testing import BrokerSandbox

    with BrokerSandbox(uri) as sandbox:
        yield sandbox
