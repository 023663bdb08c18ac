"""Credential check of the reference component: call a configured endpoint with the credential.

Reports why it failed in words a user can act on: "401 from GET …", "token endpoint said
invalid_grant …" (the refresh engine's own message), "cannot connect … connection refused".
"""

from __future__ import annotations

from typing import Any

import requests


def verify(cfg: dict[str, Any], ctx: Any) -> dict[str, Any]:
    base = str(cfg.get("baseUrl") or "").rstrip("/")
    if not base:
        return {"verified": False, "reason": "cfg.baseUrl is missing"}
    url = f"{base}/{str(cfg.get('verifyPath') or '/api/me').lstrip('/')}"
    try:
        response = ctx.http.get(url, timeout=15)
    except requests.ConnectionError as exc:
        reason = "connection refused" if "Connection refused" in str(exc) else type(exc).__name__
        return {"verified": False, "reason": f"cannot connect to GET {url}: {reason}"}
    except requests.Timeout:
        return {"verified": False, "reason": f"GET {url} timed out"}
    if response.status_code == 401:
        return {"verified": False, "reason": f"401 from GET {url}: the API rejects the credential"}
    if not 200 <= response.status_code < 300:
        return {"verified": False, "reason": f"{response.status_code} from GET {url}: {response.text[:200]}"}
    return {"verified": True}
