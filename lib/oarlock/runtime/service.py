"""sailor's service mode (docs/protocol.md §8): verifyCredentials, getMetaModel, selectModel.

Reads cfg from ``ELASTICIO_CFG`` (JSON) and POSTs ``{"status": "success", "data": …}`` or
``{"status": "error", "data": {"message": …}}`` to ``ELASTICIO_POST_RESULT_URL``.
getMetaModel calls ``getMetaModel(cfg)`` of the function named by
``ELASTICIO_ACTION_OR_TRIGGER``; selectModel calls the method named by
``ELASTICIO_GET_MODEL_METHOD`` in that function's module.

Every service uses the keys store like ``oarlock call`` (``keys_url``; the CLI's ``--keys``,
``ELASTICIO_KEYS_STORE`` or ``.oarlock/keys.sqlite``): it starts from the newest stored
credential and stores what it refreshes. getMetaModel and selectModel run through
:class:`ModelCall`, which ``oarlock meta`` and ``oarlock select`` use too: the method gets the cfg
``process`` would get, and a ``ctx`` when it takes a second parameter. The result document is
masked before anyone sees it:
a verifyCredentials result through :func:`oarlock.redact.redact` (secret keys and values), a
model's result by value only (known secrets, bearer/basic credentials, secret fields inside
text), so a metadata schema with a ``password`` property keeps its definition.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import requests

from oarlock.awaitables import run_maybe_async
from oarlock.component.model import Component
from oarlock.errors import ConfigurationError, EnvironmentConfigError, KeyStoreError, OarlockError
from oarlock.protocol.events import EventList, EventName
from oarlock.protocol.message import Message
from oarlock.redact import redact, redact_text, register_credential
from oarlock.runtime.context import Context
from oarlock.runtime.executor import FunctionRunner
from oarlock.runtime.verify import verify_with_keys

if TYPE_CHECKING:
    from oarlock.keys.store import KeyStore

SERVICES = ("verifyCredentials", "getMetaModel", "selectModel")
log = logging.getLogger("oarlock.service")


def read_service_cfg(env: Mapping[str, str]) -> dict[str, Any]:
    raw = env.get("ELASTICIO_CFG")
    if raw is None:
        raise EnvironmentConfigError("ELASTICIO_CFG is required in service mode (the step's cfg as JSON)")
    try:
        cfg = json.loads(raw)
    except ValueError as exc:
        raise EnvironmentConfigError(f"ELASTICIO_CFG is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise EnvironmentConfigError("ELASTICIO_CFG must be a JSON object")
    register_credential(cfg)
    return cfg


def run_service(
    name: str, component: Component, env: Mapping[str, str], *, keys_url: str | None = None
) -> dict[str, Any]:
    """Run one service and return the result document that is posted, masked (never raises OarlockError)."""
    try:
        if name not in SERVICES:
            raise ConfigurationError(f"unknown service {name!r}: use one of {', '.join(SERVICES)}")
        cfg = read_service_cfg(env)
        data = _dispatch(name, component, cfg, env, keys_url)
        masked = redact(data) if name == "verifyCredentials" else mask_values(data)
        return {"status": "success", "data": masked}
    except OarlockError as exc:
        return {"status": "error", "data": {"message": redact_text(str(exc))}}
    except Exception as exc:
        return {"status": "error", "data": {"message": redact_text(f"{type(exc).__name__}: {exc}")}}


def mask_values(value: Any) -> Any:
    """Secrets masked inside every string; keys and structure kept (a model's result)."""
    if isinstance(value, dict):
        return {k: mask_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_values(v) for v in value]
    return redact_text(value) if isinstance(value, str) else value


def _dispatch(
    name: str, component: Component, cfg: dict[str, Any], env: Mapping[str, str], keys_url: str | None
) -> Any:
    function = method = ""
    if name != "verifyCredentials":
        function = env.get("ELASTICIO_ACTION_OR_TRIGGER") or ""
        if not function:
            raise EnvironmentConfigError(f"ELASTICIO_ACTION_OR_TRIGGER is required for {name}")
        method = "getMetaModel" if name == "getMetaModel" else env.get("ELASTICIO_GET_MODEL_METHOD") or ""
        if not method:
            raise EnvironmentConfigError("ELASTICIO_GET_MODEL_METHOD is required for selectModel")
    from oarlock.keys.store import open_store

    keys = open_store(keys_url) if keys_url else None
    try:
        if name == "verifyCredentials":
            return verify_with_keys(component.verifier_path(), cfg, keys=keys, component=component, env=env)
        call = ModelCall(component, function, method, cfg, keys=keys, env=env)
        try:
            return call.run()
        finally:
            call.close()
    finally:
        if keys is not None:
            keys.close()


class ModelCall:
    """One getMetaModel or select-model call of a function, given what ``oarlock call`` gives ``process``.

    The cfg starts from the newest stored credential of its ``_account`` (with a keys store), gets
    component.json's ``credentials.oauth2`` defaults and has its secrets registered for masking
    (:meth:`FunctionRunner.prepare_cfg`). The method is called as ``method(cfg)``, or as
    ``method(cfg, ctx)`` when it takes a second parameter: ``ctx.http`` keeps the token alive and
    what it refreshes is stored. The constructor raises ComponentError / ConfigurationError when
    the function, its module or the method cannot be found; :meth:`run` lets the method's own
    exception through.
    """

    def __init__(
        self,
        component: Component,
        function: str,
        method: str,
        cfg: dict[str, Any],
        *,
        keys: KeyStore | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        from oarlock.credentials.manager import CredentialManager, start_from_stored

        self.keys = keys
        self.credentials = CredentialManager(coordinator=keys)
        try:
            self.runner = FunctionRunner(component, function, credentials=self.credentials, env=env)
            target = getattr(self.runner.module, method, None)
            if not callable(target):
                raise ConfigurationError(f"function {function!r} does not define {method}(cfg)")
            self.target: Callable[..., Any] = target
            self.cfg = self.runner.prepare_cfg(start_from_stored(cfg, keys))
        except BaseException:
            self.credentials.close()
            raise

    def run(self) -> Any:
        """The method's return value (awaited if it is a coroutine), not masked."""
        events = EventList()
        ctx = Context(
            sink=events,
            message=Message(),
            cfg=self.cfg,
            snapshot={},
            logger=self.runner.logger,
            credentials=self.credentials,
            refresh_hook=getattr(self.runner.module, "refresh_credentials", None),
        )
        try:
            return run_maybe_async(self.target(self.cfg, ctx) if _takes_ctx(self.target) else self.target(self.cfg))
        finally:
            ctx.close()
            self._store(events)

    def _store(self, events: EventList) -> None:
        """An updateKeys the refresh engine could not store itself (or the method emitted) goes to the store."""
        if self.keys is None:
            return
        from oarlock.keys.store import apply_update_keys

        for event in list(events.events):
            if event.name is EventName.UPDATE_KEYS and not event.persisted:
                try:
                    apply_update_keys(self.keys, event.payload)
                except KeyStoreError as exc:
                    log.error("the refreshed credential could not be stored: %s", redact_text(str(exc)))

    def close(self) -> None:
        self.credentials.close()


def _takes_ctx(method: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 2


def post_result(url: str, result: dict[str, Any]) -> None:
    try:
        response = requests.post(url, json=result, timeout=30)
    except requests.RequestException as exc:
        raise ConfigurationError(f"cannot POST the service result to {url}: {type(exc).__name__}") from None
    if response.status_code >= 400:
        raise ConfigurationError(f"POST of the service result to {url} answered {response.status_code}")
