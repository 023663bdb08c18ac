"""Run one function call: hooks, metadata.in check, return value, errors -> events.

The executor knows nothing about transports: events go to a sink callback the moment
they are emitted (so a transport can publish while the function still runs) and are
also collected in the :class:`CallResult`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from oarlock.component import Component, FunctionSpec
from oarlock.context import Context
from oarlock.credentials.redact import redact, redact_text, register_credential
from oarlock.errors import ComponentError, OarlockError
from oarlock.events import Event, EventName, EventSink, error_payload, normalise
from oarlock.inputschema import InputValidator
from oarlock.jsoncopy import copy_json
from oarlock.message import Message

if TYPE_CHECKING:
    from oarlock.credentials.manager import CredentialManager

log = logging.getLogger("oarlock.executor")


@dataclass
class CallResult:
    """What one call produced."""

    events: list[Event] = field(default_factory=list)
    errored: bool = False
    rebound: bool = False
    snapshot: dict[str, Any] = field(default_factory=dict)
    duration_ms: float = 0.0

    def of(self, name: EventName) -> list[Event]:
        return [e for e in self.events if e.name is name]


class FunctionRunner:
    """Calls one function of a component, any number of times, from any number of threads."""

    def __init__(
        self,
        component: Component,
        function: str,
        *,
        credentials: CredentialManager | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.component = component
        self.spec: FunctionSpec = component.function(function)
        self.module: ModuleType = component.load_module(function)
        self.credentials = credentials
        self._env = dict(os.environ if env is None else env)
        self._has_oauth2_defaults = bool(component.oauth2_template())
        self._validator = InputValidator(self.spec.metadata_in, function=function)
        self._process = self.module.process
        self._refresh_hook = getattr(self.module, "refresh_credentials", None)
        self._params = _positional_count(self._process)
        self.logger = logging.getLogger(f"oarlock.component.{function}")
        self._registered_cfg: Mapping[str, Any] | None = None

    # -- lifecycle hooks --------------------------------------------------------------------------
    def init(self, cfg: dict[str, Any]) -> None:
        """Module ``init(cfg)``, once per process before the first message."""
        self._hook("init", self.prepare_cfg(cfg))

    def startup(self, cfg: dict[str, Any]) -> Any:
        """Module ``startup(cfg)``, once per flow (STARTUP_REQUIRED)."""
        return self._hook("startup", self.prepare_cfg(cfg))

    def shutdown(self, cfg: dict[str, Any], data: Any) -> None:
        """Module ``shutdown(cfg, data)`` (HOOK_SHUTDOWN)."""
        self._hook("shutdown", self.prepare_cfg(cfg), data)

    def _hook(self, name: str, *args: Any) -> Any:
        hook = getattr(self.module, name, None)
        if hook is None:
            return None
        try:
            return _run_maybe_async(hook(*args))
        except Exception as exc:
            raise ComponentError(f"{name}() of {self.spec.main} failed: {redact_text(str(exc))}") from None

    # -- cfg ---------------------------------------------------------------------------------------
    def prepare_cfg(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """A private copy of cfg with the newest known credential and component.json's oauth2 defaults."""
        prepared = self.credentials.newest_cfg(dict(cfg)) if self.credentials else copy_json(dict(cfg))
        if self._has_oauth2_defaults and isinstance(prepared.get("oauth"), dict):
            defaults = self.component.oauth2_settings({**prepared, **self._env})
            prepared["oauth2"] = {**defaults, **(prepared.get("oauth2") or {})}
        if cfg is not self._registered_cfg:  # a worker passes the same cfg for every message: its secrets once
            register_credential(prepared)
            self._registered_cfg = cfg
        return prepared

    # -- one call ----------------------------------------------------------------------------------
    def call(
        self,
        message: Message,
        cfg: Mapping[str, Any],
        snapshot: Mapping[str, Any] | None = None,
        sink: EventSink | None = None,
    ) -> CallResult:
        """Run ``process`` for one message. Never raises for function errors: they become error events."""
        started = time.monotonic()
        result = CallResult(snapshot=copy_json(dict(snapshot)) if snapshot else {})
        lock = threading.Lock()

        def emit(name: str, payload: Any = None) -> None:
            event = normalise(name, payload)
            if event.name is EventName.ERROR:
                event = Event(event.name, redact(event.payload))
            with lock:
                _apply(result, event)
            if sink is not None:
                sink(event)

        try:
            call_cfg = self.prepare_cfg(cfg)
            self._validator.check(message.body)
            ctx = Context(
                emit=emit,
                message=message,
                cfg=call_cfg,
                snapshot=result.snapshot,
                logger=self.logger,
                credentials=self.credentials,
                refresh_hook=self._refresh_hook,
            )
            try:
                args = (message, call_cfg, result.snapshot, ctx)[: self._params]
                returned = _run_maybe_async(self._process(*args))
            finally:
                ctx.close()
            if returned is not None:
                emit("data", returned)
        except Exception as exc:  # a function's failure is an event, never a crash of the runtime
            if not isinstance(exc, OarlockError):
                log.debug("function %s raised", self.spec.name, exc_info=True)
            emit("error", error_payload(exc))
        result.duration_ms = (time.monotonic() - started) * 1000
        return result


class UnloadableFunction:
    """Stands in for a function whose component or module cannot be loaded.

    As sailor does, the worker still consumes: every message gets an error event naming the
    load problem and is rejected, so the platform sees why instead of a crash-looping container.
    """

    def __init__(self, error: ComponentError) -> None:
        self.error = error

    def init(self, cfg: dict[str, Any]) -> None:
        log.error("the function cannot be loaded, every message will be rejected: %s", self.error)

    def startup(self, cfg: dict[str, Any]) -> Any:
        return None

    def shutdown(self, cfg: dict[str, Any], data: Any) -> None:
        return None

    def call(
        self,
        message: Message,
        cfg: Mapping[str, Any],
        snapshot: Mapping[str, Any] | None = None,
        sink: EventSink | None = None,
    ) -> CallResult:
        event = Event(EventName.ERROR, {"name": self.error.event_name, "message": str(self.error), "stack": ""})
        if sink is not None:
            sink(event)
        return CallResult(events=[event], errored=True, snapshot=dict(snapshot or {}))


def _apply(result: CallResult, event: Event) -> None:
    result.events.append(event)
    if event.name is EventName.ERROR:
        result.errored = True
    elif event.name is EventName.REBOUND:
        result.rebound = True
    elif event.name is EventName.SNAPSHOT:
        result.snapshot.clear()
        result.snapshot.update(event.payload)
    elif event.name is EventName.UPDATE_SNAPSHOT:
        result.snapshot.update(event.payload)


def _positional_count(func: Callable[..., Any]) -> int:
    """How many of (msg, cfg, snapshot, ctx) a process function accepts (sailor's take three)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 4
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 4
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return min(len(positional), 4)


def _run_maybe_async(value: Any) -> Any:
    if inspect.isawaitable(value):
        return asyncio.run(_await(value))
    return value


async def _await(awaitable: Any) -> Any:
    return await awaitable
