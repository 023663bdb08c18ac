"""``oarlock keys``: what the keys store holds (secrets masked unless --reveal), and the updateKeys consumer."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click

from oarlock.errors import OarlockError, TransportError
from oarlock.keys.store import KeyStore, StoredCredential, open_store
from oarlock.redact import redact

DEFAULT_KEYS = os.path.join(".oarlock", "keys.sqlite")
store_option = click.option(
    "--keys",
    "--store",
    "store_url",
    default=DEFAULT_KEYS,
    show_default=True,
    help="SQLite file or postgresql:// URL of the keys store.",
)


def _open(url: str) -> KeyStore:
    try:
        return open_store(url)
    except OarlockError as exc:
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(2)


def _iso(epoch: Any) -> str | None:
    if not isinstance(epoch, (int, float)):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def describe(stored: StoredCredential, reveal: bool) -> dict[str, Any]:
    oauth = stored.oauth if reveal else redact(stored.oauth)
    return {
        "account": stored.account,
        "version": stored.version,
        "updated_at": _iso(stored.updated_at),
        "expires_at": _iso(stored.oauth.get("expires_at")),
        "oauth": oauth,
    }


@click.group("keys")
def keys_group() -> None:
    """The keys store: refreshed credentials, newest version per account."""


@keys_group.command("list")
@store_option
@click.option("--reveal", is_flag=True, help="Show tokens instead of masking them.")
def list_command(store_url: str, reveal: bool) -> None:
    """One JSON line per stored account."""
    store = _open(store_url)
    for stored in store.list():
        summary = describe(stored, reveal)
        summary["fields"] = sorted(stored.oauth)
        if not reveal:
            summary.pop("oauth")
        click.echo(json.dumps(summary, ensure_ascii=False))
    store.close()


@keys_group.command("show")
@click.argument("account")
@store_option
@click.option("--reveal", is_flag=True, help="Show tokens instead of masking them.")
def show_command(account: str, store_url: str, reveal: bool) -> None:
    """The stored credential of ACCOUNT as JSON."""
    store = _open(store_url)
    stored = store.get(account)
    store.close()
    if stored is None:
        click.echo(f"oarlock: no credential stored for account {account}", err=True)
        sys.exit(1)
    click.echo(json.dumps(describe(stored, reveal), ensure_ascii=False, indent=2))


@keys_group.command("refresh-dormant")
@store_option
@click.option(
    "--idle-days",
    type=float,
    default=30.0,
    show_default=True,
    help="Refresh credentials not updated for this many days (Microsoft revokes after 90).",
)
@click.option("--token-uri", required=True, help="The provider's token endpoint.")
@click.option("--client-id", envvar="OARLOCK_CLIENT_ID", required=True, help="OAuth2 client id (or OARLOCK_CLIENT_ID).")
@click.option(
    "--client-secret",
    envvar="OARLOCK_CLIENT_SECRET",
    default=None,
    help="OAuth2 client secret (better: OARLOCK_CLIENT_SECRET in the environment).",
)
@click.option("--client-auth", type=click.Choice(["post", "basic"]), default="post", show_default=True)
def refresh_dormant_command(
    store_url: str, idle_days: float, token_uri: str, client_id: str, client_secret: str | None, client_auth: str
) -> None:
    """Refresh stored credentials that slept, before the provider's inactivity window closes."""
    from oarlock import logs
    from oarlock.keys.dormant import refresh_dormant
    from oarlock.redact import register_secret

    logs.configure(os.environ.get("ELASTICIO_LOG_LEVEL", "warning"))
    register_secret(client_secret)
    store = _open(store_url)
    oauth2 = {
        "token_uri": token_uri,
        "client_id": client_id,
        "client_secret": client_secret,
        "client_auth": client_auth,
    }
    results = refresh_dormant(store, oauth2, idle_seconds=idle_days * 86400)
    store.close()
    for result in results:
        click.echo(json.dumps({k: v for k, v in result.__dict__.items() if v is not None}, ensure_ascii=False))
    sys.exit(1 if any(not r.refreshed for r in results) else 0)


@keys_group.command("serve")
@store_option
@click.option(
    "--amqp-uri",
    default=lambda: os.environ.get("ELASTICIO_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    show_default="ELASTICIO_AMQP_URI or the local broker",
)
@click.option("--queue", required=True, help="Queue bound to the updateKeys routing key.")
@click.option("--crypto-password", envvar="ELASTICIO_MESSAGE_CRYPTO_PASSWORD", help="Message crypto password.")
@click.option("--crypto-iv", envvar="ELASTICIO_MESSAGE_CRYPTO_IV", help="Message crypto IV (16 bytes).")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
def serve_command(
    store_url: str, amqp_uri: str, queue: str, crypto_password: str | None, crypto_iv: str | None, burst: bool
) -> None:
    """Consume updateKeys messages and persist them; ack only after the store committed.

    Reconnects when the broker drops the connection. Exit 2 on a configuration or store error,
    3 when the broker cannot be reached at start or the queue cannot be consumed.
    """
    from oarlock import logs
    from oarlock.keys.consumer import KeysService
    from oarlock.protocol.crypto import MessageCipher

    logs.configure(os.environ.get("ELASTICIO_LOG_LEVEL", "info"))
    store = _open(store_url)
    try:
        service = KeysService(store, amqp_uri, queue, MessageCipher(crypto_password, crypto_iv))
        stored = service.run(burst=burst)
    except TransportError as exc:  # the broker cannot be reached, or the queue cannot be consumed
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(3)
    except OarlockError as exc:
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(2)
    finally:
        store.close()
    click.echo(json.dumps({"stored": stored, "refused": service.refused, "rejected": service.rejected}))
