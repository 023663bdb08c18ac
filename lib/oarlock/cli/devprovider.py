"""``oarlock dev-provider``: run the dev provider until SIGTERM/SIGINT."""

from __future__ import annotations

import json
import signal
import sys
import time
from types import FrameType
from typing import cast

import click

from oarlock.credentials.token import LINEAGE_FIELD
from oarlock.devprovider.server import DevProvider
from oarlock.devprovider.state import Rotation
from oarlock.keys.private import write_private


@click.command("dev-provider")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, help="0 = any free port.")
@click.option("--ttl", default=3600.0, show_default=True, help="Access-token lifetime in seconds.")
@click.option("--rotation", type=click.Choice(["none", "rotate", "single-use"]), default="none", show_default=True)
@click.option("--no-expires-in", is_flag=True, help="Salesforce-like: no expires_in; instance_url and issued_at.")
@click.option("--expires-in-as-string", is_flag=True, help='Send "expires_in": "3600" as a string.')
@click.option("--omit-refresh-token", is_flag=True, help="Google-like: refresh answers carry no refresh_token.")
@click.option("--fail-first", default=0, show_default=True, help="The first N token requests answer 503.")
@click.option("--throttle-first", default=0, show_default=True, help="The next N token requests answer 429.")
@click.option("--rate-limit", default=0.0, show_default=True, help="At most N token requests per second (429).")
@click.option("--retry-after", default=1.0, show_default=True, help="Retry-After seconds sent with a 429.")
@click.option("--latency-ms", default=0.0, show_default=True, help="Added to every /api call.")
@click.option("--token-latency-ms", default=0.0, show_default=True, help="Added to every /token call.")
@click.option("--client-id", default="oarlock-dev", show_default=True)
@click.option("--client-secret", default="oarlock-dev-secret", show_default=True)
@click.option(
    "--mint-to",
    type=click.Path(dir_okay=False),
    help="Write a ready oarlock cfg with a live token (and its obtained_at) here.",
)
@click.option("--log-requests", is_flag=True, help="Log method, path and status of every request to stderr.")
def dev_provider_command(
    host: str,
    port: int,
    ttl: float,
    rotation: str,
    no_expires_in: bool,
    expires_in_as_string: bool,
    omit_refresh_token: bool,
    fail_first: int,
    throttle_first: int,
    rate_limit: float,
    retry_after: float,
    latency_ms: float,
    token_latency_ms: float,
    client_id: str,
    client_secret: str,
    mint_to: str | None,
    log_requests: bool,
) -> None:
    """A local OAuth2 authorization server (/token, /authorize) and protected API (/api/me, /api/items)."""
    provider = DevProvider(
        host=host,
        port=port,
        log_requests=log_requests,
        ttl=ttl,
        rotation=cast(Rotation, rotation),
        expires_in=not no_expires_in,
        expires_in_as_string=expires_in_as_string,
        omit_refresh_token=omit_refresh_token,
        fail_first=fail_first,
        throttle_first=throttle_first,
        rate_limit=rate_limit,
        retry_after=retry_after,
        latency_ms=latency_ms,
        token_latency_ms=token_latency_ms,
        client_id=client_id,
        client_secret=client_secret,
    )

    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        provider.stop()

    # installed before anything is printed: a supervisor may signal as soon as it reads the line
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        provider.start()
    except OSError as exc:
        click.echo(f"oarlock: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        sys.exit(2)
    if stopping:  # signalled while binding
        provider.stop()
        return
    if mint_to:
        cfg = provider.cfg(account="dev-user-1")
        # a version of its own (newer than anything stored) and an empty lineage: a fresh authorization
        cfg["oauth"] = {LINEAGE_FIELD: [], **cfg["oauth"], "obtained_at": time.time()}
        try:
            write_private(mint_to, json.dumps(cfg, indent=2) + "\n")
        except OSError as exc:
            provider.stop()
            click.echo(f"oarlock: cannot write {mint_to}: {exc.strerror or exc}", err=True)
            sys.exit(2)
    line = {
        "url": provider.url,
        "token_url": provider.token_url,
        "client_id": client_id,
        "client_secret": client_secret,
    }
    click.echo(json.dumps(line))
    sys.stdout.flush()
    provider.serve_forever()
