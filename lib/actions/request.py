"""Action `request`: one HTTP request against cfg.baseUrl with the account's OAuth2 token.

Message body: {"method", "path", "query", "headers", "json", "timeout"}.
Emits data {"status", "headers", "body"}; a non-2xx answer (after oarlock's own 401
handling: refresh and one resend) is an error naming the status and a body excerpt.
"""

from __future__ import annotations

from typing import Any

import requests

EXCERPT = 300


class HTTPStatusError(Exception):
    """The API answered with a non-2xx status."""


class RequestFailed(Exception):
    """The request could not be sent or answered (connection refused, timeout, …)."""


def target_url(cfg: dict[str, Any], path: str) -> str:
    if path.startswith(("http://", "https://")):
        return path
    base = str(cfg.get("baseUrl") or "").rstrip("/")
    if not base:
        raise ValueError("cfg.baseUrl is required when path is not an absolute URL")
    return f"{base}/{path.lstrip('/')}"


def decode_body(response: requests.Response) -> Any:
    if not response.content:
        return None
    if "json" in response.headers.get("Content-Type", ""):
        try:
            return response.json()
        except ValueError:
            pass
    return response.text


def process(msg: Any, cfg: dict[str, Any], snapshot: dict[str, Any], ctx: Any) -> dict[str, Any]:
    body = msg.body
    method = str(body.get("method") or "GET").upper()
    url = target_url(cfg, str(body["path"]))
    try:
        response = ctx.http.request(
            method,
            url,
            params=body.get("query"),
            headers=body.get("headers"),
            json=body.get("json"),
            timeout=float(body.get("timeout") or 30),
        )
    except requests.ConnectionError as exc:
        raise RequestFailed(f"cannot connect to {method} {url}: {_reason(exc)}") from None
    except requests.Timeout:
        raise RequestFailed(f"{method} {url} timed out") from None
    if not 200 <= response.status_code < 300:
        excerpt = response.text[:EXCERPT]
        raise HTTPStatusError(f"{response.status_code} from {method} {url}: {excerpt}")
    return {"body": {"status": response.status_code, "headers": dict(response.headers), "body": decode_body(response)}}


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "getaddrinfo" in text:
        return "host name not resolved"
    return type(exc).__name__
