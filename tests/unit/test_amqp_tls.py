"""ELASTICIO_AMQP_TLS_* -> pika.SSLOptions, and what a failed connect becomes: no broker, no network."""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pika.exceptions
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pika.adapters.utils import connection_workflow

from oarlock.amqp.failures import Attempts, Failure, describe_failure, hush_pika
from oarlock.amqp.tls import CA_FILE_ENV, CERT_FILE_ENV, KEY_FILE_ENV, SERVER_NAME_ENV, AmqpTls, url_parameters
from oarlock.errors import ConfigurationError, TransportError
from tests.brokerproxy import Ca, Issued, make_ca

AMQPS = "amqps://guest:s3cret-pw@127.0.0.1:5671/%2F"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ca, Issued]:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "unit")
    return ca, ca.issue("worker-1", client=True)


def test_the_tls_variables_become_a_verifying_context_for_the_host_of_the_uri(pki: tuple[Ca, Issued]) -> None:
    ca, client = pki
    tls = AmqpTls.from_env(
        {CA_FILE_ENV: str(ca.cert_file), CERT_FILE_ENV: str(client.cert_file), KEY_FILE_ENV: f" {client.key_file} "}
    )
    assert tls == AmqpTls(str(ca.cert_file), str(client.cert_file), str(client.key_file), None)
    params = url_parameters(AMQPS, tls)
    options = params.ssl_options
    assert options is not None and options.server_hostname == "127.0.0.1"
    context = options.context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    trusted = [dict(part[0] for part in cert["subject"]) for cert in context.get_ca_certs()]
    assert trusted == [{"commonName": "oarlock test CA unit"}]  # only the given CA, not the system's
    assert (params.host, params.port, params.virtual_host) == ("127.0.0.1", 5671, "/")


def test_the_server_name_variable_is_what_the_certificate_must_name(pki: tuple[Ca, Issued]) -> None:
    tls = AmqpTls.from_env({CA_FILE_ENV: str(pki[0].cert_file), SERVER_NAME_ENV: "rabbit.internal"})
    options = url_parameters(AMQPS, tls).ssl_options
    assert options is not None and options.server_hostname == "rabbit.internal"


def test_amqps_without_tls_variables_verifies_against_the_system_certificates() -> None:
    options = url_parameters("amqps://guest:guest@broker.example:5671/%2F", AmqpTls.from_env({})).ssl_options
    assert options is not None and options.server_hostname == "broker.example"
    assert options.context.verify_mode == ssl.CERT_REQUIRED and options.context.check_hostname
    assert "system's CA certificates" in AmqpTls().trust()


def test_plain_amqp_has_no_tls() -> None:
    assert url_parameters("amqp://guest:guest@127.0.0.1:5672/%2F", AmqpTls()).ssl_options is None


@pytest.mark.parametrize("variable", [CA_FILE_ENV, CERT_FILE_ENV, KEY_FILE_ENV])
def test_a_file_that_does_not_exist_is_a_configuration_error_naming_the_variable(
    variable: str, pki: tuple[Ca, Issued], tmp_path: Path
) -> None:
    env = {CERT_FILE_ENV: str(pki[1].cert_file), KEY_FILE_ENV: str(pki[1].key_file)}
    env[variable] = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigurationError) as raised:
        url_parameters(AMQPS, AmqpTls.from_env(env))
    assert str(raised.value) == f"{variable}={tmp_path / 'missing.pem'}: no such file"


def test_a_ca_file_that_is_not_pem_is_a_configuration_error_naming_the_variable(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(ConfigurationError, match=f"^{CA_FILE_ENV}=.*ca.pem is not a file of PEM CA certificates: "):
        url_parameters(AMQPS, AmqpTls(ca_file=str(bogus)))


def test_a_key_without_its_certificate_is_a_configuration_error(pki: tuple[Ca, Issued]) -> None:
    with pytest.raises(ConfigurationError, match=f"{KEY_FILE_ENV} is set but {CERT_FILE_ENV} is not"):
        url_parameters(AMQPS, AmqpTls(key_file=str(pki[1].key_file)))


def test_a_key_that_does_not_match_or_is_encrypted_is_refused_without_asking_for_a_password(
    pki: tuple[Ca, Issued], tmp_path: Path
) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    with pytest.raises(ConfigurationError, match="is not a usable PEM client certificate and unencrypted key"):
        url_parameters(AMQPS, AmqpTls(cert_file=str(pki[1].cert_file), key_file=str(other)))


def test_tls_variables_beside_a_plain_amqp_uri_are_an_error_rather_than_a_silent_plaintext_connection(
    pki: tuple[Ca, Issued],
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        url_parameters("amqp://guest:guest@10.0.0.5:5672/prod", AmqpTls(ca_file=str(pki[0].cert_file)))
    assert str(raised.value) == (
        f"{CA_FILE_ENV} set, but the AMQP URI of 10.0.0.5:5672 (vhost prod) is amqp://: use amqps:// for TLS"
    )


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("amqp://guest:s3cret-pw@127.0.0.1:notaport/%2F", "Port could not be cast to integer"),
        ("http://guest:s3cret-pw@127.0.0.1/", "the scheme must be amqp:// or amqps://, not 'http'"),
        ("amqps://guest:s3cret-pw@127.0.0.1/?ssl_options=%7B%7D", "TLS is set up by the ELASTICIO_AMQP_TLS_CA_FILE"),
    ],
)
def test_a_bad_uri_is_a_configuration_error_without_the_password(uri: str, reason: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        url_parameters(uri, AmqpTls())
    assert reason in str(raised.value) and "s3cret-pw" not in str(raised.value)


# -- what a failed attempt says -----------------------------------------------------------------------
def _workflow_failed(error: BaseException) -> pika.exceptions.AMQPConnectionError:
    """The nest pika hands to on_open_error_callback."""
    phase = connection_workflow.AMQPConnectorTransportSetupError(error)
    return pika.exceptions.AMQPConnectionError(connection_workflow.AMQPConnectionWorkflowFailed([phase]))


def test_a_certificate_that_does_not_verify_is_permanent_and_says_why() -> None:
    error = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed (_ssl.c:1006)")
    error.verify_message = "unable to get local issuer certificate"
    assert describe_failure(_workflow_failed(error)) == Failure(
        "TLS certificate verify failed: unable to get local issuer certificate", permanent=True
    )


def test_a_plain_port_behind_amqps_is_a_permanent_handshake_failure_with_a_hint() -> None:
    error = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)")
    assert describe_failure(_workflow_failed(error)) == Failure(
        "TLS handshake failed: wrong version number (is the port a TLS port?)", permanent=True
    )


def test_a_refused_connection_is_worth_retrying() -> None:
    failure = describe_failure(
        pika.exceptions.AMQPConnectionError(
            connection_workflow.AMQPConnectionWorkflowFailed(
                [connection_workflow.AMQPConnectorSocketConnectError(ConnectionRefusedError(111, "Connection refused"))]
            )
        )
    )
    assert failure == Failure("connection refused", permanent=False)


def test_a_refused_login_is_permanent_and_quotes_the_broker() -> None:
    error = pika.exceptions.ProbableAuthenticationError(
        "ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN.'"
    )
    failure = describe_failure(error)
    assert failure.permanent
    assert failure.reason == (
        "the broker refused the user name or password: 403 ACCESS_REFUSED - Login was refused using "
        "authentication mechanism PLAIN."
    )


def test_a_lost_connection_is_one_line() -> None:
    lost = pika.exceptions.StreamLostError("Stream connection lost: ConnectionResetError(104, 'Connection reset')")
    assert describe_failure(lost) == Failure("Stream connection lost: ConnectionResetError(104, 'Connection reset')")


# -- attempts --------------------------------------------------------------------------------------------
def test_each_failed_attempt_is_one_line_quiet_before_the_first_connection(caplog: pytest.LogCaptureFixture) -> None:
    attempts = Attempts("127.0.0.1:5672 (vhost /)", max_delay=30.0, trust=AmqpTls().trust())
    caplog.set_level(logging.DEBUG, logger="oarlock.amqp")
    delays = [attempts.failed(Failure("connection refused"), connected_before=False) for _ in range(3)]
    attempts.connected()
    assert attempts.failed(None, connected_before=True) == 0.4  # the connection was lost: no attempt line
    delays.append(attempts.failed(Failure("connection refused"), connected_before=True))
    assert delays == [0.4, 0.8, 1.6, 0.8]
    lines = [(r.levelno, r.getMessage(), r.__dict__["attempt"]) for r in caplog.records]
    assert lines == [
        (logging.DEBUG, "cannot connect to the broker at 127.0.0.1:5672 (vhost /): connection refused "
         "(attempt 1, next in 0.4 s)", 1),
        (logging.DEBUG, "cannot connect to the broker at 127.0.0.1:5672 (vhost /): connection refused "
         "(attempt 2, next in 0.8 s)", 2),
        (logging.DEBUG, "cannot connect to the broker at 127.0.0.1:5672 (vhost /): connection refused "
         "(attempt 3, next in 1.6 s)", 3),
        (logging.WARNING, "cannot connect to the broker at 127.0.0.1:5672 (vhost /): connection refused "
         "(attempt 1, next in 0.8 s)", 1),
    ]  # fmt: skip


def test_the_backoff_never_exceeds_its_maximum() -> None:
    attempts = Attempts("b", max_delay=5.0, trust="")
    assert max(attempts.failed(Failure("x"), connected_before=True) for _ in range(40)) == 5.0


def test_a_start_waits_until_connected_gives_up_on_a_permanent_failure_and_returns_when_stopped() -> None:
    connected, stop = threading.Event(), threading.Event()
    attempts = Attempts("127.0.0.1:5671 (vhost /)", max_delay=30.0, trust="verified against X=ca.pem")
    connected.set()
    assert attempts.wait(connected, 30.0, stop) is True
    connected.clear()
    stop.set()
    assert attempts.wait(connected, 30.0, stop) is False
    attempts.permanent = Failure("TLS certificate verify failed: self-signed certificate", permanent=True)
    with pytest.raises(TransportError) as raised:
        attempts.wait(connected, 30.0, None)
    assert str(raised.value) == (
        "cannot connect to the broker at 127.0.0.1:5671 (vhost /): TLS certificate verify failed: "
        "self-signed certificate (verified against X=ca.pem)"
    )


def test_a_start_past_its_deadline_names_the_broker_the_last_reason_and_the_attempts() -> None:
    attempts = Attempts("127.0.0.1:9 (vhost /)", max_delay=30.0, trust="")
    for _ in range(3):
        attempts.failed(Failure("connection refused"), connected_before=False)
    with pytest.raises(TransportError) as raised:
        attempts.wait(threading.Event(), 0.0, None)
    assert str(raised.value) == (
        "cannot connect to the broker at 127.0.0.1:9 (vhost /) within 0 s: connection refused (3 attempts)"
    )


# -- pika's own lines ------------------------------------------------------------------------------------
@pytest.fixture
def info_level() -> Iterator[None]:
    root, pika_log = logging.getLogger(), logging.getLogger("pika")
    saved = root.level, pika_log.level
    root.setLevel(logging.INFO)
    pika_log.setLevel(logging.WARNING)
    yield
    root.setLevel(saved[0])
    pika_log.setLevel(saved[1])


@pytest.mark.usefixtures("info_level")
def test_pika_stays_hushed_until_every_holder_released_it() -> None:
    pika_log = logging.getLogger("pika")
    first, second = hush_pika(), hush_pika()
    assert not pika_log.isEnabledFor(logging.CRITICAL)
    first()
    first()  # releasing twice counts once
    assert not pika_log.isEnabledFor(logging.CRITICAL)
    second()
    assert pika_log.level == logging.WARNING


@pytest.mark.usefixtures("info_level")
def test_at_debug_level_pika_speaks() -> None:
    logging.getLogger().setLevel(logging.DEBUG)
    release = hush_pika()
    assert logging.getLogger("pika").isEnabledFor(logging.ERROR)
    release()
