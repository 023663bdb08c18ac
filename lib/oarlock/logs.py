"""Logging: JSON lines on stderr, every record passed through secret redaction."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from oarlock.redact import redact, redact_text

#: fields a caller may attach with ``logger.info(..., extra={...})`` that go into the JSON line
CONTEXT_FIELDS = (
    "messageId",
    "threadId",
    "stepId",
    "function",
    "duration_ms",
    "account",
    "event",
    "input",
    "attempt",
    "status",
    "version",
)

LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            if name in record.__dict__:
                line[name] = redact(record.__dict__[name])
        if record.exc_info:
            line["exc"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def configure(level: str = "info", *, json_lines: bool = True) -> None:
    """Send oarlock's (and components') logs to stderr, redacted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level.lower(), logging.INFO))
    logging.getLogger("pika").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
