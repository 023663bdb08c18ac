"""TLS to the broker: an ``amqps://`` URI, verified always, set up from ELASTICIO_AMQP_TLS_* variables.

:class:`AmqpTls` is the neutral setting (four optional strings, read by :meth:`AmqpTls.from_env`,
no file touched); :func:`url_parameters` turns an AMQP URI and those settings into pika's
connection parameters, with a ``pika.SSLOptions`` for ``amqps://``: the broker's certificate is
verified against ``ELASTICIO_AMQP_TLS_CA_FILE`` (else the system's CA certificates) and must name
``ELASTICIO_AMQP_TLS_SERVER_NAME`` (else the URI's host); TLS 1.2 at least; a client certificate
(``_CERT_FILE``, ``_KEY_FILE``) when the broker asks for one. There is no switch to turn
verification off. A file that is missing or unreadable, a key without its certificate, TLS
variables beside an ``amqp://`` URI, or a URI pika cannot parse is a ConfigurationError naming the
variable, never a connection attempt.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pika

from oarlock.amqp.failures import broker_name, ssl_reason
from oarlock.errors import ConfigurationError

CA_FILE_ENV = "ELASTICIO_AMQP_TLS_CA_FILE"
CERT_FILE_ENV = "ELASTICIO_AMQP_TLS_CERT_FILE"
KEY_FILE_ENV = "ELASTICIO_AMQP_TLS_KEY_FILE"
SERVER_NAME_ENV = "ELASTICIO_AMQP_TLS_SERVER_NAME"
TLS_ENV = (CA_FILE_ENV, CERT_FILE_ENV, KEY_FILE_ENV, SERVER_NAME_ENV)


@dataclass(frozen=True)
class AmqpTls:
    """How to verify the broker (and present a client certificate) on an ``amqps://`` connection."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None  # None: the host of the URI

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AmqpTls:
        def value(name: str) -> str | None:
            raw = env.get(name, "").strip()
            return raw or None

        return cls(value(CA_FILE_ENV), value(CERT_FILE_ENV), value(KEY_FILE_ENV), value(SERVER_NAME_ENV))

    @property
    def configured(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file, self.server_name))

    def trust(self) -> str:
        """What the broker's certificate is verified against, for error messages."""
        if self.ca_file:
            return f"verified against {CA_FILE_ENV}={self.ca_file}"
        return f"verified against the system's CA certificates ({CA_FILE_ENV} not set)"

    def ssl_options(self, host: str) -> pika.SSLOptions:
        """A verifying client context for ``host``; ConfigurationError naming the variable that is wrong."""
        if self.key_file and not self.cert_file:
            raise ConfigurationError(f"{KEY_FILE_ENV} is set but {CERT_FILE_ENV} is not: the key needs its certificate")
        for name, path in ((CA_FILE_ENV, self.ca_file), (CERT_FILE_ENV, self.cert_file), (KEY_FILE_ENV, self.key_file)):
            if path is not None and not os.path.isfile(path):
                raise ConfigurationError(f"{name}={path}: no such file")
        try:
            context = ssl.create_default_context(cafile=self.ca_file)  # CERT_REQUIRED, check_hostname
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigurationError(
                f"{CA_FILE_ENV}={self.ca_file} is not a file of PEM CA certificates: {ssl_reason(exc)}"
            ) from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file:
            try:
                context.load_cert_chain(self.cert_file, self.key_file, password=_no_password)
            except (ssl.SSLError, OSError, ValueError) as exc:
                key = f" with {KEY_FILE_ENV}={self.key_file}" if self.key_file else ""
                raise ConfigurationError(
                    f"{CERT_FILE_ENV}={self.cert_file}{key} is not a usable PEM client certificate and "
                    f"unencrypted key: {ssl_reason(exc)}"
                ) from None
        return pika.SSLOptions(context, server_hostname=self.server_name or host)


def url_parameters(amqp_uri: str, tls: AmqpTls) -> pika.URLParameters:
    """pika's parameters for an ``amqp://`` or ``amqps://`` URI, TLS set up from ``tls``."""
    where = broker_name(amqp_uri)
    try:
        parts = urlsplit(amqp_uri)
    except ValueError as exc:
        raise ConfigurationError(f"invalid AMQP URI (ELASTICIO_AMQP_URI): {exc}") from None
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigurationError(
            f"invalid AMQP URI (ELASTICIO_AMQP_URI): the scheme must be amqp:// or amqps://, not {parts.scheme[:20]!r}"
        )
    if "ssl_options" in parse_qs(parts.query):
        raise ConfigurationError(
            f"the AMQP URI of {where} carries ssl_options: TLS is set up by the {', '.join(TLS_ENV)} variables only"
        )
    if parts.scheme == "amqp" and tls.configured:
        names = ", ".join(name for name, value in zip(TLS_ENV, _values(tls), strict=True) if value)
        raise ConfigurationError(f"{names} set, but the AMQP URI of {where} is amqp://: use amqps:// for TLS")
    try:
        params = pika.URLParameters(amqp_uri)
    except Exception as exc:  # pika's parser raises ValueError, TypeError, and others on a malformed URI
        raise ConfigurationError(f"invalid AMQP URI (ELASTICIO_AMQP_URI): {_uri_reason(exc, amqp_uri)}") from None
    if parts.scheme == "amqps":
        params.ssl_options = tls.ssl_options(params.host)
    return params


def _values(tls: AmqpTls) -> tuple[str | None, ...]:
    return (tls.ca_file, tls.cert_file, tls.key_file, tls.server_name)


def _no_password() -> bytes:
    raise ValueError("the key is encrypted: give an unencrypted key file")


def _uri_reason(exc: BaseException, amqp_uri: str) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    try:
        password = urlsplit(amqp_uri).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text
