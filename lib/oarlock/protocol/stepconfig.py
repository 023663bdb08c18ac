"""Step config and snapshot (docs/protocol.md §2): what a step document holds. No I/O.

Where the document comes from (``--cfg FILE``, ``ELASTICIO_CFG``, the platform API) is
:mod:`oarlock.runtime.steploader`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from oarlock.errors import ConfigurationError
from oarlock.redact import register_credential


@dataclass
class StepConfig:
    cfg: dict[str, Any]
    snapshot: dict[str, Any] = field(default_factory=dict)
    is_passthrough: bool = False
    variables: dict[str, Any] = field(default_factory=dict)
    source: str = "api"
    from_platform_api: bool = False  # fetched with GET /v1/tasks/{flow}/steps/{step}: a sailor platform


def step_from_document(data: Any, where: str, *, wrapped: bool) -> StepConfig:
    if not isinstance(data, dict):
        raise ConfigurationError(f"{where} must hold a JSON object")
    if wrapped or ("config" in data and isinstance(data.get("config"), dict)):
        cfg = data.get("config") or {}
        snapshot = data.get("snapshot") or {}
        step = StepConfig(
            cfg=dict(cfg),
            snapshot=dict(snapshot) if isinstance(snapshot, dict) else {},
            is_passthrough=bool(data.get("is_passthrough")),
            variables=dict(data.get("variables") or {}),
            source=where,
        )
    else:
        step = StepConfig(cfg=dict(data), source=where)
    register_credential(step.cfg)
    return step
