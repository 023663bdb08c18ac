"""sailor's service mode (docs/protocol.md §8): verifyCredentials, getMetaModel, selectModel.

Reads cfg from ``ELASTICIO_CFG`` (JSON) and POSTs ``{"status": "success", "data": …}`` or
``{"status": "error", "data": {"message": …}}`` to ``ELASTICIO_POST_RESULT_URL``.
getMetaModel calls ``getMetaModel(cfg)`` of the function named by
``ELASTICIO_ACTION_OR_TRIGGER``; selectModel calls the method named by
``ELASTICIO_GET_MODEL_METHOD`` in that function's module.

verifyCredentials uses the keys store like ``oarlock call`` (``keys_url``; the CLI's ``--keys``,
``ELASTICIO_KEYS_STORE`` or ``.oarlock/keys.sqlite``): it starts from the newest stored
credential and stores what it refreshes. The result document is masked before anyone sees it:
a verifyCredentials result through :func:`oarlock.redact.redact` (secret keys and values), a
model's result by value only (known secrets, bearer/basic credentials, secret fields inside
text), so a metadata schema with a ``password`` property keeps its definition.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import requests

from oarlock.awaitables import run_maybe_async
from oarlock.component.model import Component
from oarlock.errors import ConfigurationError, EnvironmentConfigError, OarlockError
from oarlock.redact import redact, redact_text, register_credential
from oarlock.runtime.verify import verify_with_keys

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
        masked = redact(data) if name == "verifyCredentials" else _mask_values(data)
        return {"status": "success", "data": masked}
    except OarlockError as exc:
        return {"status": "error", "data": {"message": redact_text(str(exc))}}
    except Exception as exc:
        return {"status": "error", "data": {"message": redact_text(f"{type(exc).__name__}: {exc}")}}


def _mask_values(value: Any) -> Any:
    """Secrets masked inside every string; keys and structure kept."""
    if isinstance(value, dict):
        return {k: _mask_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask_values(v) for v in value]
    return redact_text(value) if isinstance(value, str) else value


def _dispatch(
    name: str, component: Component, cfg: dict[str, Any], env: Mapping[str, str], keys_url: str | None
) -> Any:
    if name == "verifyCredentials":
        from oarlock.keys.store import open_store

        keys = open_store(keys_url) if keys_url else None
        try:
            return verify_with_keys(component.verifier_path(), cfg, keys=keys)
        finally:
            if keys is not None:
                keys.close()
    function = env.get("ELASTICIO_ACTION_OR_TRIGGER")
    if not function:
        raise EnvironmentConfigError(f"ELASTICIO_ACTION_OR_TRIGGER is required for {name}")
    module = component.load_module(function)
    method = "getMetaModel" if name == "getMetaModel" else env.get("ELASTICIO_GET_MODEL_METHOD")
    if not method:
        raise EnvironmentConfigError("ELASTICIO_GET_MODEL_METHOD is required for selectModel")
    target = getattr(module, method, None)
    if not callable(target):
        raise ConfigurationError(f"function {function!r} does not define {method}(cfg)")
    return run_maybe_async(target(cfg))


def post_result(url: str, result: dict[str, Any]) -> None:
    try:
        response = requests.post(url, json=result, timeout=30)
    except requests.RequestException as exc:
        raise ConfigurationError(f"cannot POST the service result to {url}: {type(exc).__name__}") from None
    if response.status_code >= 400:
        raise ConfigurationError(f"POST of the service result to {url} answered {response.status_code}")
