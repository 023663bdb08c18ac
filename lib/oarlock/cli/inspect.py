"""``oarlock decrypt [FILE|-]`` and ``oarlock peek QUEUE --count N``: read messages as the worker would.

Both decrypt with the crypto settings of the environment (``ELASTICIO_MESSAGE_CRYPTO_PASSWORD`` /
``_IV``, and while rotating ``_PREVIOUS``) and print JSON lines, secrets masked (oarlock.redact)
unless ``--reveal``. A body is read as the worker reads its kind (docs/protocol.md §3, §5):

- encrypted by the ``protocolVersion`` header (data, updateKeys, rebound copies, error replies);
- else JSON in clear: snapshots, and error messages ``{"error", "errorInput"}``, whose ``error``
  (and ``errorInput``, when it decrypts) are decrypted in place.

A body that is neither is reported with the reason (``"error"``) and the command exits 1; ``peek``
still prints every other message. ``peek`` takes up to N messages with ``basic.get`` and puts them
back (nack with requeue) before printing: they stay in the queue, marked redelivered.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any, BinaryIO

import click

from oarlock.errors import ConfigurationError, DecodeError, TransportError
from oarlock.jsonlimits import loads
from oarlock.protocol.crypto import (
    IV_ENV,
    PASSWORD_ENV,
    PREVIOUS_IV_ENV,
    PREVIOUS_PASSWORD_ENV,
    MessageCipher,
)
from oarlock.protocol.outgoing import protocol_version_of
from oarlock.redact import redact, register_secret

DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/%2F"
MAX_BODY_BYTES = 64 * 1024 * 1024  # a file larger than this is not a message body


def cipher_from_env(env: Mapping[str, str]) -> MessageCipher:
    """The worker's cipher from the environment; its passwords registered for masking by value."""
    for name in (PASSWORD_ENV, PREVIOUS_PASSWORD_ENV):
        register_secret(env.get(name) or None)
    return MessageCipher(
        env.get(PASSWORD_ENV) or None,
        env.get(IV_ENV) or None,
        previous_password=env.get(PREVIOUS_PASSWORD_ENV) or None,
        previous_iv=env.get(PREVIOUS_IV_ENV) or None,
    )


def open_body(cipher: MessageCipher, body: bytes, headers: Mapping[str, Any]) -> dict[str, Any]:
    """``{"body": value, "encrypted": bool}`` of one message; DecodeError naming why it cannot be read."""
    version = protocol_version_of(headers)
    try:
        return {"body": cipher.decrypt(body, version), "encrypted": cipher.enabled}
    except DecodeError as encrypted_error:
        if not cipher.enabled:
            raise
        try:  # snapshots and error messages travel in clear
            value = loads(body.decode("utf-8"), what="message", invalid="not JSON")
        except (DecodeError, UnicodeDecodeError):
            raise encrypted_error from None
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        value = dict(value)
        value["error"] = _decrypted_field(cipher, value["error"])
        if isinstance(value.get("errorInput"), str):
            value["errorInput"] = _decrypted_field(cipher, value["errorInput"])
    return {"body": value, "encrypted": False}


def _decrypted_field(cipher: MessageCipher, text: str) -> Any:
    """An error message's field (always protocol 1): its decrypted JSON, or the text itself when it does not decrypt."""
    try:
        return cipher.decrypt(text.encode("utf-8"), 1)
    except DecodeError:
        return text


def _out(line: dict[str, Any], reveal: bool) -> None:
    click.echo(json.dumps(line if reveal else redact(line), ensure_ascii=False, default=str))


def _read_headers(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            value = loads(handle.read(MAX_BODY_BYTES), what="headers file", invalid=f"headers file {path} is not JSON")
    except OSError as exc:
        raise ConfigurationError(f"cannot read headers file {path}: {exc.strerror or exc}") from None
    except DecodeError as exc:
        raise ConfigurationError(str(exc)) from None
    if isinstance(value, dict) and isinstance(value.get("headers"), dict) and "protocolVersion" not in value:
        value = value["headers"]  # a properties object, or a line printed by `oarlock peek`
    if not isinstance(value, dict):
        raise ConfigurationError(f"headers file {path} must hold a JSON object (the AMQP headers)")
    return value


reveal_option = click.option("--reveal", is_flag=True, help="Show secrets instead of masking them.")


@click.command("decrypt")
@click.argument("source", default="-", type=click.File("rb"))
@click.option("--headers", "headers_path", help="JSON file with the message's AMQP headers (for protocolVersion).")
@click.option(
    "--protocol-version", type=int, help="protocolVersion of the body (wins over --headers; default 1: base64)."
)
@reveal_option
def decrypt_command(source: BinaryIO, headers_path: str | None, protocol_version: int | None, reveal: bool) -> None:
    """Decrypt one message body from FILE (or stdin: -) with the crypto settings of the environment.

    Prints one JSON line {"headers", "body", "encrypted"}, secrets masked unless --reveal. Exit 1 when the
    body does not decrypt (the reason on stderr), 2 on a usage or configuration error.
    """
    name = getattr(source, "name", "-")
    name = "stdin" if name in ("<stdin>", "-") or not isinstance(name, str) else name
    try:
        cipher = cipher_from_env(os.environ)
        headers = _read_headers(headers_path)
        if protocol_version is not None:
            headers["protocolVersion"] = protocol_version
        body = source.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise ConfigurationError(f"{name} is larger than {MAX_BODY_BYTES} bytes: not a message body")
    except ConfigurationError as exc:
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(2)
    try:
        opened = open_body(cipher, body, headers)
    except DecodeError as exc:
        click.echo(f"oarlock: the message in {name} does not decrypt: {exc}", err=True)
        sys.exit(1)
    _out({"headers": headers, **opened}, reveal)


@click.command("peek")
@click.argument("queue")
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 10_000), help="At most this many.")
@click.option(
    "--amqp-uri",
    default=lambda: os.environ.get("ELASTICIO_AMQP_URI", DEFAULT_AMQP_URI),
    show_default="ELASTICIO_AMQP_URI or the local broker",
)
@reveal_option
def peek_command(queue: str, count: int, amqp_uri: str, reveal: bool) -> None:
    """Print up to COUNT messages at the head of QUEUE without consuming them (get, then requeue).

    One JSON line per message {"queue", "index", "exchange", "routing_key", "redelivered", "properties",
    "headers", "body", "encrypted"}, or with "error" instead of "body" when it does not decrypt; secrets
    masked unless --reveal. Exit 1 when any did not decrypt, 2 on a configuration error, 3 on a broker
    error (e.g. no such queue).
    """
    from oarlock.amqp.admin import BrokerAdmin

    try:
        cipher = cipher_from_env(os.environ)
    except ConfigurationError as exc:
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(2)
    try:
        with BrokerAdmin(amqp_uri, name="oarlock peek") as admin:
            messages = admin.peek(queue, count)
    except ConfigurationError as exc:
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(2)
    except TransportError as exc:
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(3)
    failed = 0
    for index, message in enumerate(messages):
        line: dict[str, Any] = {
            "queue": queue,
            "index": index,
            "exchange": message.exchange,
            "routing_key": message.routing_key,
            "redelivered": message.redelivered,
            "properties": message.properties,
            "headers": message.headers,
        }
        try:
            line.update(open_body(cipher, message.body, message.headers))
        except DecodeError as exc:
            failed += 1
            line["error"] = f"does not decrypt: {exc}"
        _out(line, reveal)
    if failed:
        click.echo(f"oarlock: {failed} of {len(messages)} messages in {queue} did not decrypt", err=True)
        sys.exit(1)
