"""Logging: JSON lines on stderr, every record passed through secret redaction.

``ELASTICIO_LOG_FORMAT=bunyan`` writes the lines a sailor platform reads (node-bunyan's core
fields ``name``, ``hostname``, ``pid``, ``level`` as a number, ``msg``, ``time``, ``v``, with
oarlock's context fields beside them), redacted the same way.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
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


#: node-bunyan's level numbers
BUNYAN_LEVELS = {logging.DEBUG: 20, logging.INFO: 30, logging.WARNING: 40, logging.ERROR: 50, logging.CRITICAL: 60}


class BunyanFormatter(logging.Formatter):
    """node-bunyan's record (v 0): what sailor-nodejs writes and a sailor platform parses."""

    def __init__(self, name: str = "oarlock") -> None:
        super().__init__()
        self._name = name
        self._hostname = socket.gethostname()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "name": self._name,
            "hostname": self._hostname,
            "pid": os.getpid(),
            "level": BUNYAN_LEVELS.get(record.levelno, 10 if record.levelno < logging.DEBUG else 30),
            "logger": record.name,
        }
        for name in CONTEXT_FIELDS:
            if name in record.__dict__:
                line[name] = redact(record.__dict__[name])
        if record.exc_info:
            line["err"] = {"stack": redact_text(self.formatException(record.exc_info))}
        line["msg"] = redact_text(record.getMessage())
        line["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line["v"] = 0
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


LOG_FORMATS = ("json", "bunyan", "text")


def configure(level: str = "info", *, json_lines: bool = True, log_format: str | None = None) -> None:
    """Send oarlock's (and components') logs to stderr, redacted.

    The format is ``log_format``, else ``ELASTICIO_LOG_FORMAT`` (json, bunyan, text), else JSON lines
    (text when ``json_lines`` is false). An unknown format falls back to JSON lines and says so.
    """
    chosen = (log_format or os.environ.get("ELASTICIO_LOG_FORMAT") or ("json" if json_lines else "text")).lower()
    formatter: logging.Formatter
    if chosen == "bunyan":
        formatter = BunyanFormatter(os.environ.get("ELASTICIO_FUNCTION") or "oarlock")
    elif chosen == "text":
        formatter = TextFormatter("%(levelname)s %(name)s: %(message)s")
    else:
        formatter = JsonFormatter()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level.lower(), logging.INFO))
    logging.getLogger("pika").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    # Python warnings (a library's InsecureRequestWarning, a component's warnings.warn with a URL in it) and
    # the tracebacks of threads a function started go through the same formatter and redaction, never raw
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_exception
    if chosen not in LOG_FORMATS:
        logging.getLogger("oarlock").warning(
            "ELASTICIO_LOG_FORMAT=%s is not one of %s: writing JSON lines", chosen[:40], ", ".join(LOG_FORMATS)
        )


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception that ended a thread: one redacted log record instead of a raw traceback on stderr."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    logging.getLogger("oarlock").error("uncaught %s in thread %s", args.exc_type.__name__, name, exc_info=exc_info)
