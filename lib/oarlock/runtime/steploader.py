"""Where a worker's step config comes from: ``--cfg FILE``, else ``ELASTICIO_CFG``, else the platform API."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import requests

from oarlock.errors import ConfigurationError
from oarlock.protocol.settings import Settings
from oarlock.protocol.stepconfig import StepConfig, step_from_document


def load_step_config(settings: Settings, env: Mapping[str, str], cfg_file: str | None = None) -> StepConfig:
    """--cfg FILE, else ELASTICIO_CFG (JSON), else GET {API_URI}/v1/tasks/{FLOW_ID}/steps/{STEP_ID}."""
    if cfg_file:
        try:
            data = json.loads(Path(cfg_file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationError(f"cannot read cfg file {cfg_file}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ConfigurationError(f"cfg file {cfg_file} is not valid JSON: {exc}") from None
        return step_from_document(data, f"cfg file {cfg_file}", wrapped=False)
    raw = env.get("ELASTICIO_CFG")
    if raw is not None:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ConfigurationError(f"ELASTICIO_CFG is not valid JSON: {exc}") from None
        return step_from_document(data, "ELASTICIO_CFG", wrapped=False)
    if not settings.api_uri:
        raise ConfigurationError(
            "no step config: set ELASTICIO_API_URI (with API_USERNAME/API_KEY), ELASTICIO_CFG or --cfg"
        )
    url = f"{settings.api_uri.rstrip('/')}/v1/tasks/{settings.flow_id}/steps/{settings.step_id}"
    try:
        response = requests.get(url, auth=(settings.api_username or "", settings.api_key or ""), timeout=30)
    except requests.RequestException as exc:
        raise ConfigurationError(f"cannot fetch the step config from {url}: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise ConfigurationError(f"GET {url} answered {response.status_code}: cannot load the step config")
    try:
        data = response.json()
    except ValueError:
        raise ConfigurationError(f"GET {url} did not answer JSON") from None
    step = step_from_document(data, url, wrapped=True)
    step.from_platform_api = True
    return step
