"""``oarlock keys``: what the keys store holds (secrets masked unless --reveal), operator edits, the updateKeys consumer.

``put ACCOUNT --oauth FILE`` stores the token set of FILE (an object with ``access_token`` /
``refresh_token``, or a cfg whose ``oauth`` holds one) as the newest version of ACCOUNT: a
re-authorization every worker adopts at its next look at the store (``obtained_at`` is stamped
when missing, and the superseded credential's lineage is carried so it never comes back).
``delete ACCOUNT`` removes it. Both print one JSON line, secrets masked; exit 1 when delete finds
no such account, 2 on a usage, configuration or store error.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import click

from oarlock.errors import KeyStoreError, OarlockError, TransportError
from oarlock.keys.accounts import ACTIVE, AccountState
from oarlock.keys.store import KeyStore, StoredCredential, open_store, safe_url
from oarlock.redact import redact, register_credential

DEFAULT_KEYS = os.path.join(".oarlock", "keys.sqlite")
TOKEN_FIELDS = ("access_token", "refresh_token")
store_option = click.option(
    "--keys",
    "--store",
    "store_url",
    default=DEFAULT_KEYS,
    show_default=True,
    help="SQLite file or postgresql:// URL of the keys store.",
)


def _open(url: str, *, existing: int | None = None) -> KeyStore:
    """The store at URL, or exit 2 naming why; ``existing``: a SQLite file that is not there is not created, exit with it."""
    if existing is not None and "://" not in url and not Path(url).exists():
        click.echo(f"oarlock: no keys store at {url} (nothing stored there yet; check --keys)", err=True)
        sys.exit(existing)
    try:
        return open_store(url)
    except OarlockError as exc:
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(2)


def _iso(epoch: Any) -> str | None:
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def describe(
    stored: StoredCredential,
    reveal: bool,
    state: AccountState | None = None,
    secrets: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One account as an operator reads it: version, expiry, state, last refresh, whether its client secret is known."""
    oauth = stored.oauth if reveal else redact(stored.oauth)
    settings = stored.settings or {}
    effective = state.effective(stored.version) if state is not None else ACTIVE
    failing = state is not None and effective != ACTIVE
    last_refresh = state.last_refresh if state is not None and state.last_refresh else stored.oauth.get("obtained_at")
    client_id = settings.get("client_id")
    return {
        "account": stored.account,
        "state": effective,
        "version": stored.version,
        "updated_at": _iso(stored.updated_at),
        "expires_at": _iso(stored.oauth.get("expires_at")),
        "last_refresh": _iso(last_refresh),
        "failures": state.failures if failing and state is not None else 0,
        "reason": state.reason if failing and state is not None else None,
        "since": _iso(state.since) if failing and state is not None else None,
        "provider": settings.get("provider"),
        "token_uri": settings.get("token_uri"),
        "client_id": client_id,
        # null: no --client-secrets given; false: the service could not refresh this account (no secret for its
        # client_id, or one bound to other token endpoints than the stored token_uri's)
        "client_secret_known": None if secrets is None else _secret_usable(secrets, client_id, settings),
        "oauth": oauth,
    }


def _secret_usable(secrets: Mapping[str, str], client_id: Any, settings: Mapping[str, Any]) -> bool:
    from oarlock.keys.secrets import ClientSecrets, permits

    if not isinstance(client_id, str) or client_id not in secrets:
        return False
    allowed = secrets.allowed_origins(client_id) if isinstance(secrets, ClientSecrets) else None
    return permits(allowed, settings.get("token_uri"))  # the keep-alive's own rule


def _secrets(path: str | None) -> Mapping[str, str] | None:
    if path is None:
        return None
    from oarlock.keys.secrets import load_client_secrets

    try:
        return load_client_secrets(path)
    except OarlockError as exc:
        _usage(str(exc))


secrets_option = click.option(
    "--client-secrets",
    "secrets_path",
    default=None,
    help="JSON file mapping client_id to client secret: say whether each account's secret is known.",
)


@click.group("keys")
def keys_group() -> None:
    """The keys store: refreshed credentials, newest version per account."""


@keys_group.command("list")
@store_option
@click.option("--reveal", is_flag=True, help="Show tokens instead of masking them.")
@secrets_option
def list_command(store_url: str, reveal: bool, secrets_path: str | None) -> None:
    """One JSON line per stored account: state, version, expiry, last refresh, last failure (secrets masked)."""
    secrets = _secrets(secrets_path)
    store = _open(store_url, existing=2)
    try:
        listed = store.list()
        states = {state.account: state for state in store.states()}
    except OarlockError as exc:  # sealed rows without the key, a store that went away, …
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(2)
    finally:
        store.close()
    for stored in listed:
        summary = describe(stored, reveal, states.get(stored.account), secrets)
        summary["fields"] = sorted(stored.oauth)
        if not reveal:
            summary.pop("oauth")
        click.echo(json.dumps(summary, ensure_ascii=False))


@keys_group.command("show")
@click.argument("account")
@store_option
@click.option("--reveal", is_flag=True, help="Show tokens instead of masking them.")
@secrets_option
def show_command(account: str, store_url: str, reveal: bool, secrets_path: str | None) -> None:
    """The stored credential of ACCOUNT and its state as one JSON object."""
    secrets = _secrets(secrets_path)
    store = _open(store_url, existing=1)  # like an account the store does not hold
    try:
        stored = store.get(account)
        state = store.state(account) if stored is not None else None
    except OarlockError as exc:
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(2)
    finally:
        store.close()
    if stored is None:
        click.echo(f"oarlock: no credential stored for account {account}", err=True)
        sys.exit(1)
    click.echo(json.dumps(describe(stored, reveal, state, secrets), ensure_ascii=False, indent=2))


def _token_set(path: str) -> dict[str, Any]:
    """The token set of FILE, or exit 2 naming what is wrong (never a value)."""
    try:
        data: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        _usage(f"cannot read {path}: {exc.strerror or exc}")
    except json.JSONDecodeError as exc:
        _usage(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})")
    except ValueError:
        _usage(f"{path} is not valid JSON")
    if isinstance(data, dict) and "access_token" not in data and "refresh_token" not in data:
        data = data.get("oauth")  # a cfg file, e.g. one written by dev-provider --mint-to
    if not isinstance(data, dict) or not any(isinstance(data.get(k), str) and data[k] for k in TOKEN_FIELDS):
        _usage(f"{path} must hold a token set: a JSON object with access_token or refresh_token (or a cfg with oauth)")
    register_credential(data)
    return dict(data)


def _usage(message: str) -> NoReturn:
    click.echo(f"oarlock: {message}", err=True)
    sys.exit(2)


@keys_group.command("put")
@click.argument("account")
@click.option("--oauth", "oauth_path", required=True, help="JSON file with the token set (or a cfg holding oauth).")
@store_option
def put_command(account: str, oauth_path: str, store_url: str) -> None:
    """Store the token set of FILE as the newest version of ACCOUNT (a re-authorization every worker adopts)."""
    from oarlock.keys.reauth import store_authorization

    oauth = _token_set(oauth_path)
    store = _open(store_url)
    try:
        done = store_authorization(store, account, oauth)
    except OarlockError as exc:
        _usage(str(exc))
    finally:
        store.close()
    line = {
        "account": account,
        "stored": done.written,
        "version": done.version,
        "replaced_version": done.replaced_version,
        "oauth": redact(done.oauth),
    }
    click.echo(json.dumps(line, ensure_ascii=False))
    if not done.written:
        _usage(f"a newer version of account {account} was stored meanwhile: nothing written")


@keys_group.command("delete")
@click.argument("account")
@store_option
def delete_command(account: str, store_url: str) -> None:
    """Remove the stored credential of ACCOUNT; exit 1 if there is none."""
    store = _open(store_url)
    try:
        delete: Callable[[str], object] | None = getattr(store, "delete", None)
        if not callable(delete):
            _usage(f"the keys store {safe_url(store_url)} cannot delete credentials (it has no delete method)")
        deleted = bool(delete(account))
    except OarlockError as exc:
        _usage(str(exc))
    finally:
        store.close()
    click.echo(json.dumps({"account": account, "deleted": deleted}, ensure_ascii=False))
    if not deleted:
        click.echo(f"oarlock: no credential stored for account {account}", err=True)
        sys.exit(1)


@keys_group.command("refresh-dormant")
@store_option
@click.option(
    "--client-secrets",
    "client_secrets",
    default=None,
    help="JSON file mapping client_id to client secret; each account is refreshed with its own client's.",
)
@click.option(
    "--idle",
    "idle_seconds",
    type=click.FloatRange(min=0),
    default=None,
    help="Refresh credentials not updated for this many seconds, whatever their provider (default: per preset).",
)
@click.option(
    "--idle-days",
    type=click.FloatRange(min=0),
    default=None,
    help="The same in days (default: per preset: Microsoft 14, Salesforce / no expiry 1, generic 7).",
)
@click.option("--token-uri", default=None, help="Default token endpoint, for accounts stored without refresh settings.")
@click.option("--client-id", envvar="OARLOCK_CLIENT_ID", default=None, help="Its client id (or OARLOCK_CLIENT_ID).")
@click.option(
    "--client-secret",
    envvar="OARLOCK_CLIENT_SECRET",
    default=None,
    help="Its client secret (better: OARLOCK_CLIENT_SECRET in the environment).",
)
@click.option("--client-auth", type=click.Choice(["post", "basic"]), default="post", show_default=True)
def refresh_dormant_command(
    store_url: str,
    client_secrets: str | None,
    idle_seconds: float | None,
    idle_days: float | None,
    token_uri: str | None,
    client_id: str | None,
    client_secret: str | None,
    client_auth: str,
) -> None:
    """Refresh stored credentials that slept, before the provider's inactivity window closes (one keep-alive cycle).

    Each account is refreshed at its own stored token_uri with its own client_id and that client's
    secret from --client-secrets; --token-uri/--client-id/--client-secret are the settings of
    accounts stored without any. Prints one JSON summary line (also when nothing was due); exit 1
    when this run found an account failing, needing re-authorization or that it could not try (no
    secret, no settings), 2 on a usage, configuration or store error.
    """
    from oarlock import logs
    from oarlock.keys.keepalive import Keepalive
    from oarlock.keys.secrets import load_client_secrets
    from oarlock.redact import redact_text, register_secret

    logs.configure(os.environ.get("ELASTICIO_LOG_LEVEL", "warning"))
    register_secret(client_secret)
    if idle_seconds is not None and idle_days is not None:
        _usage("give --idle SECONDS or --idle-days DAYS, not both")
    if (token_uri is None) != (client_id is None):
        _usage("--token-uri and --client-id go together (the default settings of accounts stored without any)")
    default_oauth2 = None
    if token_uri is not None:
        default_oauth2 = {
            "token_uri": token_uri,
            "client_id": client_id,
            "client_secret": client_secret,
            "client_auth": client_auth,
        }
    try:
        secrets = load_client_secrets(client_secrets) if client_secrets is not None else {}
    except OarlockError as exc:
        _usage(str(exc))
    override = idle_seconds if idle_seconds is not None else None if idle_days is None else idle_days * 86400
    store = _open(store_url)
    try:
        keepalive = Keepalive(store, secrets, idle_override=override, default_oauth2=default_oauth2)
        summary = keepalive.run_once()
        keepalive.close()
    except OarlockError as exc:
        _usage(str(exc))
    finally:
        store.close()
    line = summary.as_dict()
    line["reasons"] = {account: redact_text(reason) for account, reason in summary.reasons.items()}
    click.echo(json.dumps(line, ensure_ascii=False))
    sys.exit(1 if summary.problems else 0)


@keys_group.command("serve")
@store_option
@click.option(
    "--amqp-uri",
    default=lambda: os.environ.get("ELASTICIO_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    show_default="ELASTICIO_AMQP_URI or the local broker",
)
@click.option(
    "--queue", "queues", required=True, multiple=True, help="Queue of updateKeys / credentialInvalid; repeatable."
)
@click.option("--crypto-password", envvar="ELASTICIO_MESSAGE_CRYPTO_PASSWORD", help="Message crypto password.")
@click.option("--crypto-iv", envvar="ELASTICIO_MESSAGE_CRYPTO_IV", help="Message crypto IV (16 bytes).")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option(
    "--metrics",
    "metrics_addr",
    default=None,
    metavar="HOST:PORT",
    help="Serve /metrics, /healthz and /readyz on HOST:PORT, :PORT or PORT (host 127.0.0.1); off by default.",
)
@click.option("--http", "http_addr", metavar="HOST:PORT", help="Serve PUT/GET /v1/accounts/{id} and GET /healthz.")
@click.option(
    "--exchange", default=None, help="Exchange for the alerts and the keep-alive's updateKeys (default: none)."
)
@click.option("--alert-routing-key", default="credentialAlert", show_default=True, help="Routing key of the alerts.")
@click.option("--update-keys-routing-key", envvar="ELASTICIO_UPDATE_KEYS_ROUTING_KEY", default="updateKeys")
@click.option("--protocol-version", envvar="ELASTICIO_PROTOCOL_VERSION", type=int, default=1, help="Of what is sent.")
@click.option("--webhook", default=None, help="POST each alert ({account, state, reason, since}) to this URL.")
@click.option("--keepalive", is_flag=True, help="Refresh dormant credentials before their idle window closes.")
@click.option("--keepalive-idle", type=click.FloatRange(min=0), help="Idle seconds due for every preset (tests).")
@click.option("--keepalive-period", type=click.FloatRange(min=1), default=300.0, help="Seconds between cycles.")
@click.option("--client-secrets", default=None, help="JSON file mapping client_id to client secret (keep-alive).")
def serve_command(
    store_url: str,
    amqp_uri: str,
    queues: tuple[str, ...],
    crypto_password: str | None,
    crypto_iv: str | None,
    burst: bool,
    metrics_addr: str | None,
    http_addr: str | None,
    exchange: str | None,
    alert_routing_key: str,
    update_keys_routing_key: str,
    protocol_version: int,
    webhook: str | None,
    keepalive: bool,
    keepalive_idle: float | None,
    keepalive_period: float,
    client_secrets: str | None,
) -> None:
    """Consume updateKeys messages (and credentialInvalid reports) and persist them; ack only after the commit.

    Reconnects when the broker drops the connection. With --http, sailor's account route; with
    --keepalive, the keep-alive of dormant credentials; an account entering needs_reauthorization
    alerts once on --exchange and --webhook. Exit 2 on a configuration or store error, 3 when the
    broker cannot be reached at start or a queue cannot be consumed.
    """
    from oarlock import logs
    from oarlock.keys.alerts import Alerter
    from oarlock.keys.consumer import KeysService
    from oarlock.keys.http import ApiCredentials, serve_accounts
    from oarlock.protocol.crypto import PREVIOUS_IV_ENV, PREVIOUS_PASSWORD_ENV, MessageCipher

    logs.configure(os.environ.get("ELASTICIO_LOG_LEVEL", "info"))
    credentials = ApiCredentials.from_env()
    if http_addr and credentials is None:
        _usage("--http needs OARLOCK_API_USERNAME and OARLOCK_API_KEY in the environment (basic auth of the route)")
    if not keepalive and (keepalive_idle is not None or client_secrets is not None):
        _usage("--keepalive-idle and --client-secrets are options of --keepalive")
    secrets = _secrets(client_secrets) or {}
    store = _open(store_url)
    stop = threading.Event()
    closing: list[Callable[[], object]] = [store.close]
    service: KeysService | None = None
    try:
        previous = {
            "previous_password": os.environ.get(PREVIOUS_PASSWORD_ENV),
            "previous_iv": os.environ.get(PREVIOUS_IV_ENV),
        }
        cipher = MessageCipher(crypto_password, crypto_iv, **previous)

        def publisher(routing_key: str) -> Callable[[dict[str, Any]], None] | None:
            if not exchange:
                return None
            return lambda value: running.publish_json(exchange, routing_key, value)

        alerter = Alerter(publish=publisher(alert_routing_key), webhook=webhook)
        closing.insert(0, alerter.close)
        service = running = KeysService(
            store,
            amqp_uri,
            queues,
            cipher,
            alerter=alerter,
            protocol_version=protocol_version,
            store_name=store_url,
            keepalive=keepalive,
        )
        if metrics_addr:
            from oarlock.keys.metered import serve_metrics

            serve_metrics(metrics_addr, service, store)  # ConfigurationError (exit 2) when it cannot be bound
        if http_addr:
            accounts = serve_accounts(http_addr, store, credentials, broker_ok=service.consuming)
            closing.insert(0, accounts.close)
            service.http_url = accounts.url
        if keepalive:
            from oarlock.keys.keepalive import Keepalive

            keeper = Keepalive(
                store,
                secrets,
                idle_override=keepalive_idle,
                publish=publisher(update_keys_routing_key),
                alerter=alerter,
            )

            def keep_alive() -> None:
                while not stop.is_set() and not running.started.wait(0.2):
                    pass  # the first cycle publishes what it refreshes: once connected
                keeper.run_forever(stop, keepalive_period)
                keeper.close()

            thread = threading.Thread(target=keep_alive, name="oarlock-keepalive", daemon=True)
            thread.start()
            closing.insert(0, lambda: thread.join(60))
        service.run(burst=burst)
    except TransportError as exc:  # the broker cannot be reached, or the queue cannot be consumed
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(3)
    except OarlockError as exc:
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(2)
    finally:
        stop.set()
        for close in closing:  # the keep-alive, the route and the alerts first, the store last
            close()
    click.echo(json.dumps(service.counts()))


@keys_group.command("reseal")
@store_option
def reseal_command(store_url: str) -> None:
    """Seal in place the tokens stored in clear before OARLOCK_KEYS_KEY was set (versions kept)."""
    from oarlock.keys.base import ResealableStore

    store = _open(store_url)
    try:
        if not isinstance(store, ResealableStore):
            raise KeyStoreError(f"the keys store {safe_url(store_url)} cannot reseal")
        count = store.reseal()
    except OarlockError as exc:
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(2)
    finally:
        store.close()
    click.echo(json.dumps({"resealed": count}))
