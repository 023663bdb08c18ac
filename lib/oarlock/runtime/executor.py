"""Run one function call: hooks, metadata.in check, return value, errors -> events.

The executor knows nothing about transports: the caller hands it an
:class:`~oarlock.protocol.events.EventSink`; for each call it wraps that sink in a
:class:`CallSink` (normalised payloads, error events redacted, everything collected in the
:class:`CallResult`) and gives that one object to the context and, through it, to the
credential manager. Events reach the caller's sink the moment they are emitted, so a
transport can publish while the function still runs.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from oarlock.awaitables import run_maybe_async
from oarlock.component.inputschema import InputValidator
from oarlock.component.model import Component, FunctionSpec
from oarlock.errors import ComponentError, KeyStoreError, OarlockError
from oarlock.jsoncopy import copy_json
from oarlock.protocol.events import Event, EventName, EventSink, error_payload, normalise
from oarlock.protocol.message import Message
from oarlock.redact import (
    redact,
    redact_text,
    register_credential,
    register_password_fields,
    register_secret_keys,
)
from oarlock.runtime.context import Context

if TYPE_CHECKING:
    from oarlock.credentials.manager import CredentialManager

log = logging.getLogger("oarlock.executor")


@dataclass(slots=True)
class CallResult:
    """What one call produced."""

    events: list[Event] = field(default_factory=list)
    errored: bool = False
    rebound: bool = False
    snapshot: dict[str, Any] = field(default_factory=dict)
    duration_ms: float = 0.0
    #: an infrastructure failure (the keys store cannot be reached): not the message's fault, no error
    #: event was emitted; the worker leaves the input for redelivery
    retry_later: KeyStoreError | None = None

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
        # component.json's PasswordFieldView fields are secrets: masked under their keys and by value
        self._password_fields = component.password_fields()
        register_secret_keys(self._password_fields)
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
            return run_maybe_async(hook(*args))
        except Exception as exc:
            raise ComponentError(f"{name}() of {self.spec.main} failed: {redact_text(str(exc))}") from None

    # -- cfg ---------------------------------------------------------------------------------------
    def prepare_cfg(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """A private copy of cfg with the newest known credential and component.json's oauth2 defaults."""
        prepared = self.credentials.newest_cfg(dict(cfg)) if self.credentials else copy_json(dict(cfg))
        if self._has_oauth2_defaults and isinstance(prepared.get("oauth"), dict):
            prepared["oauth2"] = self.component.oauth2_for(prepared, self._env)  # the cfg's own values first
        if cfg is not self._registered_cfg:  # a worker passes the same cfg for every message: its secrets once
            register_credential(prepared)
            register_password_fields(prepared, self._password_fields)
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
        events = CallSink(result, sink)

        try:
            call_cfg = self.prepare_cfg(cfg)
            self._validator.check(message.body)
            ctx = Context(
                sink=events,
                message=message,
                cfg=call_cfg,
                snapshot=result.snapshot,
                logger=self.logger,
                credentials=self.credentials,
                refresh_hook=self._refresh_hook,
            )
            try:
                args = (message, call_cfg, result.snapshot, ctx)[: self._params]
                returned = self._process(*args)
                if returned is not None and type(returned) is not Message:  # what most functions return: no await
                    returned = run_maybe_async(returned)
            finally:
                ctx.close()
            if returned is not None:
                events.emit(normalise("data", returned))
        except BaseException as exc:  # a function's failure is an event, never a crash of the runtime
            if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
                raise  # Ctrl-C of a local run; on a function thread it can only be the function's own
            infrastructure = infrastructure_cause(exc)
            if infrastructure is not None:
                result.retry_later = infrastructure
                log.warning(
                    "function %s failed because the keys store cannot be used (%s): not an error of the message",
                    self.spec.name,
                    redact_text(str(infrastructure)),
                )
            else:
                if not isinstance(exc, OarlockError):
                    log.debug("function %s raised", self.spec.name, exc_info=True)
                try:
                    events.emit(Event(EventName.ERROR, error_payload(exc)))
                except Exception as failed:  # the error itself cannot be sent as it is: a plain one instead
                    log.warning("the error of function %s could not be sent as raised: %s", self.spec.name, failed)
                    plain = ComponentError(f"{type(exc).__name__} (its error message could not be encoded)")
                    events.emit(
                        Event(EventName.ERROR, {"name": type(exc).__name__, "message": str(plain), "stack": ""})
                    )
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
            sink.emit(event)
        return CallResult(events=[event], errored=True, snapshot=dict(snapshot or {}))


def infrastructure_cause(exc: BaseException) -> KeyStoreError | None:
    """The KeyStoreError behind an exception (itself, or its cause or context, as a function re-raised it)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        if isinstance(current, KeyStoreError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class CallSink:
    """One call's sink: error events redacted, every event recorded in the result, then passed on.

    A function may emit from several threads: appending an event and setting a flag are single
    steps, a snapshot's clear-and-update is done under a lock (shared by all calls: snapshot
    events are rare, and one lock less is built per message).
    """

    __slots__ = ("_outer", "_result")
    _snapshot_lock = threading.Lock()

    def __init__(self, result: CallResult, outer: EventSink | None) -> None:
        self._result = result
        self._outer = outer

    def emit(self, event: Event) -> None:
        name, result = event.name, self._result
        if name is EventName.ERROR:
            event = Event(name, redact(event.payload))
            result.errored = True
        elif name is EventName.REBOUND:
            result.rebound = True
        elif name is EventName.SNAPSHOT or name is EventName.UPDATE_SNAPSHOT:
            with self._snapshot_lock:
                if name is EventName.SNAPSHOT:
                    result.snapshot.clear()
                result.snapshot.update(event.payload)
        result.events.append(event)
        if self._outer is not None:
            self._outer.emit(event)


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
