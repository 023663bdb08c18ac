"""Routes of one's own for the dev provider: an author's API answers beside ``/api/me`` and ``/api/items``.

A route is a method, a path and a fixed answer (status, JSON body, headers), behind the provider's
bearer-token check unless ``"auth": false``. :func:`load_routes` reads them from a mapping, a list,
or a JSON file (``DevProvider(routes=...)``, the ``dev_provider`` pytest fixture).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oarlock.errors import ConfigurationError

ROUTE_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: the provider's own paths: a route of one's own cannot take them
OWN_PATHS = ("/token", "/authorize", "/revoke", "/__")


@dataclass(frozen=True)
class Route:
    """The fixed answer of one route of one's own."""

    status: int = 200
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    auth: bool = True


RouteKey = tuple[str, str]


def load_routes(spec: Any) -> dict[RouteKey, Route]:
    """Routes from ``{("GET", "/me"): {"status": 200, "json": {...}}}`` (keys may be ``"GET /me"``), a list of
    ``{"method", "path", "status", "json", "headers", "auth"}``, or the path of a JSON file holding either.

    ``status`` defaults to 200, ``json`` (the body) to null, ``auth`` (a valid bearer token needed) to true.
    A malformed route is a ConfigurationError naming it.
    """
    if spec is None:
        return {}
    if isinstance(spec, (str, os.PathLike)):
        try:
            spec = json.loads(Path(spec).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationError(
                f"dev provider routes file {spec}: cannot be read: {exc.strerror or exc}"
            ) from None
        except ValueError as exc:
            raise ConfigurationError(f"dev provider routes file {spec}: not valid JSON: {exc}") from None
    if isinstance(spec, Mapping):
        entries = [(*_split_key(key), answer) for key, answer in spec.items()]
    elif isinstance(spec, list):
        entries = [
            (e.get("method"), e.get("path"), {k: v for k, v in e.items() if k not in ("method", "path")})
            if isinstance(e, Mapping)
            else (None, None, e)
            for e in spec
        ]
    else:
        raise ConfigurationError(
            f"dev provider routes must be a mapping, a list or a JSON file, not {type(spec).__name__}"
        )
    return dict(_route(method, path, answer) for method, path, answer in entries)


def _split_key(key: Any) -> tuple[Any, Any]:
    """``("GET", "/me")`` or ``"GET /me"``."""
    if isinstance(key, tuple) and len(key) == 2:
        return key[0], key[1]
    method, _, path = str(key).strip().partition(" ")
    return method, path.strip() or None


def _route(method: Any, path: Any, answer: Any) -> tuple[RouteKey, Route]:
    name = f"dev provider route {method} {path}"
    method = str(method or "").upper()
    if method not in ROUTE_METHODS:
        raise ConfigurationError(f"{name}: the method must be one of {', '.join(ROUTE_METHODS)}")
    if not isinstance(path, str) or not path.startswith("/") or path.startswith(OWN_PATHS):
        raise ConfigurationError(f"{name}: the path must start with / and not be one of the provider's own")
    if not isinstance(answer, Mapping):
        raise ConfigurationError(f"{name}: the answer must be an object with status, json, headers, auth")
    unknown = sorted(set(answer) - {"status", "json", "headers", "auth"})
    if unknown:
        raise ConfigurationError(f"{name}: unknown field(s) {', '.join(unknown)} (known: status, json, headers, auth)")
    status, headers = answer.get("status", 200), answer.get("headers") or {}
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        raise ConfigurationError(f"{name}: status must be an integer from 200 to 599, not {status!r}")
    if not isinstance(headers, Mapping) or not all(isinstance(v, str) for v in headers.values()):
        raise ConfigurationError(f"{name}: headers must map names to strings")
    try:
        json.dumps(answer.get("json"))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{name}: json is not JSON: {exc}") from None
    route = Route(status, answer.get("json"), {str(k): v for k, v in headers.items()}, bool(answer.get("auth", True)))
    return (method, path.rstrip("/") or "/"), route
