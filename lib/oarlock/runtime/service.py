"""sailor's service mode (PROTOCOL.md §7): verifyCredentials, getMetaModel, selectModel.

Reads cfg from ``ELASTICIO_CFG`` (JSON) and POSTs ``{"status": "success", "data": …}`` or
``{"status": "error", "data": {"message": …}}`` to ``ELASTICIO_POST_RESULT_URL``.
getMetaModel calls ``getMetaModel(cfg)`` of the function named by
``ELASTICIO_ACTION_OR_TRIGGER``; selectModel calls the method named by
``ELASTICIO_GET_MODEL_METHOD`` in that function's module.
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
from oarlock.redact import redact_text, register_credential
from oarlock.runtime.verify import verify_credentials

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


def run_service(name: str, component: Component, env: Mapping[str, str]) -> dict[str, Any]:
    """Run one service and return the result document that is posted (never raises OarlockError)."""
    try:
        if name not in SERVICES:
            raise ConfigurationError(f"unknown service {name!r}: use one of {', '.join(SERVICES)}")
        cfg = read_service_cfg(env)
        data = _dispatch(name, component, cfg, env)
        return {"status": "success", "data": data}
    except OarlockError as exc:
        return {"status": "error", "data": {"message": redact_text(str(exc))}}
    except Exception as exc:
        return {"status": "error", "data": {"message": redact_text(f"{type(exc).__name__}: {exc}")}}


def _dispatch(name: str, component: Component, cfg: dict[str, Any], env: Mapping[str, str]) -> Any:
    if name == "verifyCredentials":
        from oarlock.credentials.manager import CredentialManager

        return verify_credentials(component.verifier_path(), cfg, credentials=CredentialManager())
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
