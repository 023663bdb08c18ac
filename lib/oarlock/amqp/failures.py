"""A failed broker connection in one line: what went wrong, whether trying again can help, and pika hushed.

pika reports a failed connection attempt as a nest of exceptions (``AMQPConnectionError`` around
``AMQPConnectionWorkflowFailed`` around one ``AMQPConnector*Error`` per address tried, around the
socket's or TLS's own error) and logs some seven ERROR lines on the way, for each of the two
connections of a transport. :func:`describe_failure` digs out the cause as one line and says
whether it is permanent (a certificate that does not verify, a refused login or virtual host:
trying again cannot help). :class:`Attempts` counts a transport's attempts in a row, gives the
backoff, logs one line per failed attempt and decides how a start ends. :func:`hush_pika` turns
pika's own log lines off while a transport lives (``ELASTICIO_LOG_LEVEL=debug`` keeps them).
:func:`broker_name` names a broker in messages by host, port and vhost, never user or password.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import pika.exceptions
from pika.adapters.utils import connection_workflow

from oarlock.errors import TransportError

log = logging.getLogger("oarlock.amqp")
START_POLL_SECONDS = 0.05  # how often a start looks at its stop event while it waits for the broker


@dataclass(frozen=True)
class Failure:
    reason: str  # one line, no secret
    permanent: bool = False  # the same attempt fails the same way again


def broker_name(amqp_uri: str) -> str:
    """``host:port (vhost v)`` of an AMQP URI, fit for messages: no user, no password."""
    try:
        parts = urlsplit(amqp_uri)
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        host = parts.hostname or "localhost"
    except ValueError:
        return "(unparsable AMQP URI)"
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return f"{host}:{port} (vhost {vhost})"


def describe_failure(error: BaseException | str) -> Failure:
    """The cause of a failed connection attempt (or of a lost connection), in one line."""
    if not isinstance(error, BaseException):
        return Failure(_line(str(error)) or "no reason given")
    cause = _cause(error)
    if isinstance(cause, ssl.SSLCertVerificationError):
        detail = cause.verify_message or ssl_reason(cause)
        return Failure(f"TLS certificate verify failed: {detail.rstrip('.')}", permanent=True)
    if isinstance(cause, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return Failure("the TLS connection was closed during the handshake")
    if isinstance(cause, ssl.SSLError):
        hint = " (is the port a TLS port?)" if "WRONG_VERSION_NUMBER" in str(cause) else ""
        return Failure(f"TLS handshake failed: {ssl_reason(cause)}{hint}", permanent=True)
    if isinstance(cause, pika.exceptions.ProbableAuthenticationError | pika.exceptions.AuthenticationError):
        return Failure(f"the broker refused the user name or password{_broker_text(cause)}", permanent=True)
    if isinstance(cause, pika.exceptions.ProbableAccessDeniedError):
        return Failure(f"the broker refused access to the virtual host{_broker_text(cause)}", permanent=True)
    if isinstance(cause, pika.exceptions.ConnectionClosedByBroker):
        return Failure(f"the broker closed the connection: {cause.reply_code} {_line(cause.reply_text)}")
    if isinstance(cause, socket.gaierror):
        return Failure(f"the host name does not resolve ({_line(cause.strerror or str(cause))})")
    if isinstance(cause, connection_workflow.AMQPConnectorStackTimeout | socket.timeout | TimeoutError):
        return Failure("no answer within the connect timeout")
    if isinstance(cause, pika.exceptions.IncompatibleProtocolError | pika.exceptions.StreamLostError):
        inner = "; ".join(_line(str(arg)) for arg in cause.args if str(arg))[:200]
        if isinstance(cause, pika.exceptions.StreamLostError):
            return Failure(inner or "the connection was lost")
        return Failure(f"the connection was lost during the handshake{f' ({inner})' if inner else ''}")
    if isinstance(cause, OSError) and cause.strerror:
        return Failure(cause.strerror[0].lower() + cause.strerror[1:])
    text = _line(str(cause))[:200]
    return Failure(f"{type(cause).__name__}: {text}" if text else type(cause).__name__)


def _cause(error: BaseException) -> BaseException:
    """The innermost error: the last address tried, the phase error's own exception."""
    for _ in range(8):
        if isinstance(error, connection_workflow.AMQPConnectionWorkflowFailed) and error.exceptions:
            error = error.exceptions[-1]
        elif isinstance(error, connection_workflow.AMQPConnectorPhaseErrorBase) and error.exception is not None:
            error = error.exception
        elif type(error) is pika.exceptions.AMQPConnectionError and error.args:
            inner = error.args[0]
            if not isinstance(inner, BaseException):
                break
            error = inner
        else:
            break
    return error


def _broker_text(error: BaseException) -> str:
    """``("ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused…'",)`` -> ``: 403 ACCESS_REFUSED …``."""
    found = re.search(r"\((\d+)\) '(.*)'", " ".join(str(arg) for arg in error.args))
    return f": {found.group(1)} {_line(found.group(2))[:200]}" if found else ""


def ssl_reason(error: BaseException) -> str:
    """``[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)`` -> ``wrong version number``."""
    if not isinstance(error, ssl.SSLError) and isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error.args[1] if isinstance(error, ssl.SSLError) and len(error.args) > 1 else error)
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text) or type(error).__name__


def _line(text: str) -> str:
    return " ".join(text.split())


class Attempts:
    """A transport's connection attempts since it was last connected: backoff, log lines, the start's end."""

    def __init__(self, broker: str, *, max_delay: float, trust: str) -> None:
        self.broker = broker
        self.max_delay = max_delay
        self.trust = trust  # what the broker's certificate is checked against, for a verify failure
        self.count = 0  # failures in a row (attempts, and lost connections): the backoff grows with them
        self.attempts = 0  # failed attempts since the last connection
        self.last: Failure | None = None
        self.permanent: Failure | None = None  # set before the first connection: start() gives up

    def failed(self, failure: Failure | None, *, connected_before: bool) -> float:
        """Count a failed attempt (``failure``) or a lost connection (None); the seconds to wait before the next."""
        self.count += 1
        delay = min(self.max_delay, 0.2 * 2.0 ** min(self.count, 10))
        if failure is not None:  # one line per attempt; before the first connection at debug level only
            self.last = failure
            self.attempts += 1
            log.log(
                logging.WARNING if connected_before else logging.DEBUG,
                "cannot connect to the broker at %s: %s (attempt %s, next in %.1f s)",
                self.broker,
                failure.reason,
                self.attempts,
                delay,
                extra={"attempt": self.attempts},
            )
        return delay

    def connected(self) -> None:
        self.count = self.attempts = 0

    def wait(self, connected: threading.Event, timeout: float, stop: threading.Event | None) -> bool:
        """True once connected, False once ``stop`` is set; TransportError past ``timeout`` or on a permanent
        failure, naming the broker and the reason."""
        deadline = time.monotonic() + timeout
        while not connected.wait(START_POLL_SECONDS):
            if stop is not None and stop.is_set():
                log.info("stopped while connecting to the broker at %s", self.broker)
                return False
            permanent = self.permanent
            if permanent is not None:
                hint = f" ({self.trust})" if permanent.reason.startswith("TLS certificate") else ""
                raise TransportError(f"cannot connect to the broker at {self.broker}: {permanent.reason}{hint}")
            if time.monotonic() >= deadline:
                reason = self.last.reason if self.last is not None else "no answer"
                attempts = f" ({self.attempts} attempts)" if self.attempts > 1 else ""
                raise TransportError(
                    f"cannot connect to the broker at {self.broker} within {timeout:g} s: {reason}{attempts}"
                )
        return True


# -- pika's own log lines ----------------------------------------------------------------------------
_hush_lock = threading.Lock()
_hush_holders = 0
_hush_saved_level = logging.NOTSET


def hush_pika() -> Callable[[], None]:
    """pika's log lines off until the returned function is called (by every holder); at debug level, kept."""
    global _hush_holders, _hush_saved_level
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        return lambda: None
    pika_log = logging.getLogger("pika")
    with _hush_lock:
        if _hush_holders == 0:
            _hush_saved_level = pika_log.level
            pika_log.setLevel(logging.CRITICAL + 1)
        _hush_holders += 1
    released = False

    def release() -> None:
        global _hush_holders
        nonlocal released
        with _hush_lock:
            if released:
                return
            released = True
            _hush_holders -= 1
            if _hush_holders == 0:
                pika_log.setLevel(_hush_saved_level)

    return release


@contextlib.contextmanager
def pika_quiet() -> Iterator[None]:
    """:func:`hush_pika` for the length of a ``with`` block."""
    release = hush_pika()
    try:
        yield
    finally:
        release()
