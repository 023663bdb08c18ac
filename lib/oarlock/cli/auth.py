"""``oarlock auth login``: a first real token from a real provider, into the cfg and the keys store.

The flow is :func:`oarlock.credentials.login.login` (authorization code with PKCE, a loopback
listener on 127.0.0.1); this module wires it: the settings are component.json's
``credentials.oauth2`` completed by the cfg's ``oauth2`` (the rule of ``oarlock call``:
:meth:`~oarlock.component.model.Component.oauth2_for`), the URL to open goes to stderr (and to a
browser when there is a desktop and ``--no-browser`` is not given), and the token set is written
into the cfg file (``oauth``, 0600, atomically) and into the keys store as a re-authorization
(:func:`oarlock.keys.reauth.store_authorization`), so every run of the account starts from it.
stdout gets one JSON line at the end, the tokens masked. Exit 1 with one line when the flow fails
(the provider refused, a state mismatch, no answer in time, the code exchange failed), 2 on a usage
or configuration error.
"""

from __future__ import annotations

import json
import os
import sys
import webbrowser
from pathlib import Path
from typing import Any

import click

from oarlock.cli.main import DEFAULT_KEYS, component_option, fail, read_cfg
from oarlock.credentials.login import DEFAULT_TIMEOUT_SECONDS
from oarlock.errors import ConfigurationError, CredentialError, KeyStoreError
from oarlock.redact import redact, redact_text

#: the credentials.oauth2 keys the flow cannot go without (a placeholder nothing fills is an error)
LOGIN_KEYS = ("auth_uri", "token_uri", "client_id", "client_secret")


@click.group("auth", context_settings={"help_option_names": ["-h", "--help"]})
def auth_group() -> None:
    """Get credentials from a real OAuth2 provider."""


@auth_group.command("login")
@component_option
@click.option("--cfg", "cfg_path", required=True, help="The cfg file to write the token set into (created if missing).")
@click.option(
    "--keys",
    "keys_path",
    default=str(DEFAULT_KEYS),
    show_default=True,
    help="Keys store (SQLite file or postgresql:// URL) that gets the token set as the account's newest version.",
)
@click.option(
    "--port",
    default=0,
    type=click.IntRange(0, 65535),
    help="Port of the redirect listener on 127.0.0.1 (default: an ephemeral port).",
)
@click.option("--no-browser", is_flag=True, help="Only print the URL to open, do not start a browser.")
@click.option(
    "--timeout",
    default=DEFAULT_TIMEOUT_SECONDS,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to wait for the provider's answer.",
)
@click.option(
    "--account", default=None, help="Account name (default: the cfg's _account, else the component's folder)."
)
def login_command(
    component_dir: str,
    cfg_path: str,
    keys_path: str,
    port: int,
    no_browser: bool,
    timeout: float,
    account: str | None,
) -> None:
    """The authorization-code flow with PKCE against component.json's credentials.oauth2 auth_uri/token_uri.

    Prints the URL to open on stderr, waits for the redirect to http://127.0.0.1:PORT/callback, exchanges
    the code, writes the token set (with obtained_at) into the cfg and the keys store; one JSON line on
    stdout, tokens masked. Exit 0, 1 (the flow failed), 2 (usage or configuration error).
    """
    from oarlock.component.model import Component
    from oarlock.credentials.login import LoginSettings, login

    try:
        component = Component.load(component_dir)
        cfg = read_cfg(cfg_path) if Path(cfg_path).exists() else {}
        name = account or _text(cfg.get("_account")) or component.root.name
        oauth2 = component.oauth2_for(cfg, os.environ, required=LOGIN_KEYS)
        settings = LoginSettings.from_oauth2(oauth2)
    except ConfigurationError as exc:
        fail(redact_text(str(exc)))
        return

    def show(url: str) -> None:
        click.echo(f"oarlock: open this URL to authorize account {name}:\n{url}", err=True)
        click.echo(f"oarlock: waiting up to {timeout:g} s for the answer", err=True)
        if not no_browser and _has_desktop():
            webbrowser.open(url, new=2)

    try:
        oauth = login(settings, show_url=show, account=name, port=port, timeout=timeout)
    except CredentialError as exc:
        fail(redact_text(str(exc)), 1)
        return
    except ConfigurationError as exc:
        fail(redact_text(str(exc)))
        return
    _store(cfg, cfg_path, name, oauth, oauth2=oauth2, keys_path=keys_path)


def _store(
    cfg: dict[str, Any], cfg_path: str, account: str, oauth: dict[str, Any], *, oauth2: dict[str, Any], keys_path: str
) -> None:
    """The token set into the keys store (with the refresh settings, never the client secret), then the cfg."""
    from oarlock.keys.accounts import refresh_settings
    from oarlock.keys.private import write_private
    from oarlock.keys.reauth import store_authorization
    from oarlock.keys.store import open_store, safe_url

    try:
        store = open_store(keys_path)
        try:
            # versioned as obtained: the cfg written below holds the same credential, not an older one
            moment = float(oauth["obtained_at"])
            done = store_authorization(store, account, oauth, settings=refresh_settings(oauth2), now=moment)
        finally:
            store.close()
    except (KeyStoreError, ConfigurationError) as exc:
        fail(
            f"the token set was obtained but the keys store {safe_url(keys_path)} did not take it: {redact_text(str(exc))}"
        )
        return
    written = {**cfg, "_account": account, "oauth": done.oauth}
    try:
        write_private(Path(cfg_path), json.dumps(written, ensure_ascii=False, indent=2) + "\n")
    except OSError as exc:
        fail(
            f"the token set is stored in the keys store but cfg file {cfg_path} cannot be written: {exc.strerror or exc}"
        )
        return
    line = {
        "account": account,
        "cfg": cfg_path,
        "keys": safe_url(keys_path),
        "stored": done.written,
        "version": done.version,
        "oauth": redact(done.oauth),
    }
    click.echo(json.dumps(line, ensure_ascii=False))
    if not done.written:
        fail(f"a newer version of account {account} was stored meanwhile: the keys store kept it")


def _has_desktop() -> bool:
    """A browser can be shown: not a Linux/BSD session without a display (console browsers would take the terminal)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
