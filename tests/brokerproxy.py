"""Test doubles in front of the real broker: a throwaway CA, and a TCP proxy that may terminate TLS.

:class:`BrokerProxy` listens on 127.0.0.1 (a free port), accepts plain TCP or, given a server
``ssl.SSLContext``, TLS, and pipes every connection to RabbitMQ on 127.0.0.1:5672. It runs an
asyncio loop on its own thread. :meth:`BrokerProxy.go_dark` closes the listener and every piped
connection (the broker vanishes: connects are refused); :meth:`BrokerProxy.come_back` listens again
on the same port. ``accepted`` counts the connections piped through (after a completed handshake).

:func:`make_ca` and :meth:`Ca.issue` make certificates with ``cryptography``'s x509 builder (EC P-256,
valid for a day) and write them as PEM files.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

BROKER = ("127.0.0.1", 5672)


@dataclass(frozen=True)
class Issued:
    cert_file: Path
    key_file: Path


@dataclass
class Ca:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_file: Path
    folder: Path

    def issue(
        self, common_name: str, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), client: bool = False
    ) -> Issued:
        """A certificate signed by this CA (a server's, or with ``client`` a client's), as PEM files."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        stem = self.folder / f"{self.name}-{common_name}"
        cert_file, key_file = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_key_pem(key))
        return Issued(cert_file, key_file)


def make_ca(folder: Path, name: str) -> Ca:
    """A self-signed CA whose certificate is written to ``folder/{name}-ca.crt``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"oarlock test CA {name}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file = folder / f"{name}-ca.crt"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Ca(name, key, cert, cert_file, folder)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def server_context(server: Issued, *, client_ca: Ca | None = None) -> ssl.SSLContext:
    """The proxy's TLS side; with ``client_ca`` a client certificate signed by it is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server.cert_file, server.key_file)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca.cert_file)
    return context


class BrokerProxy:
    """Pipes connections on 127.0.0.1:``port`` to the broker; TLS-terminating when given a context."""

    def __init__(self, tls: ssl.SSLContext | None = None, *, upstream: tuple[str, int] = BROKER) -> None:
        self.tls = tls
        self.upstream = upstream
        self.port = 0
        self.accepted = 0  # connections piped through to the broker
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="broker-proxy", daemon=True)

    def __enter__(self) -> BrokerProxy:
        self._thread.start()
        self.come_back()
        return self

    def __exit__(self, *exc: object) -> None:
        self.go_dark()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def uri(self, *, scheme: str | None = None, host: str = "127.0.0.1", user: str = "guest:guest") -> str:
        scheme = scheme or ("amqps" if self.tls is not None else "amqp")
        return f"{scheme}://{user}@{host}:{self.port}/%2F"

    def come_back(self) -> None:
        """Listen (again, on the same port once it was chosen)."""
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)

    def go_dark(self) -> None:
        """Stop listening and cut every piped connection: the broker is gone."""
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(5)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _pipe(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        self.accepted += 1
        self._writers |= {client_writer, broker_writer}
        await asyncio.gather(
            _copy(client_reader, broker_writer), _copy(broker_reader, client_writer), return_exceptions=True
        )
        for writer in (client_writer, broker_writer):
            self._writers.discard(writer)
            writer.transport.abort()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()
