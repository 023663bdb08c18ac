"""The ``oarlock`` command line: parse, configure logging, call the library.

Subcommands living in other modules are imported only when used, so ``oarlock call``
does not pay for pika and ``oarlock run`` does not pay for the dev provider.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from oarlock import logs
from oarlock.errors import ConfigurationError, KeyStoreError, OarlockError
from oarlock.redact import redact

LAZY_COMMANDS = {
    "validate": ("oarlock.cli.validate", "validate_command"),
    "new": ("oarlock.cli.new", "new_command"),
    "dev-provider": ("oarlock.cli.devprovider", "dev_provider_command"),
    "keys": ("oarlock.cli.keys", "keys_group"),
    "run": ("oarlock.cli.run", "run_command"),
    "topology": ("oarlock.cli.topology", "topology_group"),
    "decrypt": ("oarlock.cli.inspect", "decrypt_command"),
    "peek": ("oarlock.cli.inspect", "peek_command"),
    "meta": ("oarlock.cli.meta", "meta_command"),
    "select": ("oarlock.cli.meta", "select_command"),
    "auth": ("oarlock.cli.auth", "auth_group"),
}
DEFAULT_KEYS = Path(".oarlock") / "keys.sqlite"


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module), attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="oarlock")
def main() -> None:
    """oarlock: run integration components whose OAuth2 credentials keep themselves alive."""


def fail(message: str, code: int = 2) -> None:
    click.echo(f"oarlock: {message}", err=True)
    sys.exit(code)


def read_json_file(path: str, what: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"{what} {path} is not valid JSON: {exc}") from None


def read_cfg(path: str) -> dict[str, Any]:
    cfg = read_json_file(path, "cfg file")
    if not isinstance(cfg, dict):
        raise ConfigurationError(f"cfg file {path} must hold a JSON object")
    return cfg


component_option = click.option(
    "--component",
    "component_dir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder holding component.json.",
)
keys_option = click.option(
    "--keys",
    "keys_path",
    default=str(DEFAULT_KEYS),
    show_default=True,
    help="Keys store (SQLite file or postgresql:// URL): runs start from the newest stored credential, refreshes are kept.",
)
no_keys_option = click.option("--no-keys", is_flag=True, help="Do not read or write the keys store.")
log_level_option = click.option(
    "--log-level",
    default=lambda: os.environ.get("ELASTICIO_LOG_LEVEL", "info"),
    show_default="info",
    help="Log level for stderr (debug, info, warning, error).",
)


@main.command()
@click.argument("function")
@component_option
@click.option("--cfg", "cfg_path", required=True, help="JSON file with the step configuration (cfg).")
@click.option("--snapshot", "snapshot_path", help="JSON file with the snapshot; written back after the run.")
@click.option("--msg", "msg_path", help="JSON file with one message; without it, JSON lines are read from stdin.")
@keys_option
@no_keys_option
@click.option(
    "--concurrency", default=1, show_default=True, type=click.IntRange(1, 1024), help="How many messages run at once."
)
@click.option("--reveal", is_flag=True, help="Show tokens in updateKeys events instead of masking them.")
@log_level_option
def call(
    function: str,
    component_dir: str,
    cfg_path: str,
    snapshot_path: str | None,
    msg_path: str | None,
    keys_path: str,
    no_keys: bool,
    concurrency: int,
    reveal: bool,
    log_level: str,
) -> None:
    """Run FUNCTION locally, without a broker; print one JSON line per emitted event.

    Exit 0 when no error event was emitted, 1 when any was, 2 on a usage or configuration error.
    """
    from oarlock.runtime.local import LocalCall

    logs.configure(log_level)
    try:
        local = LocalCall(
            component_dir,
            function,
            read_cfg(cfg_path),
            snapshot_path=snapshot_path,
            keys_url=None if no_keys else keys_path,
            concurrency=concurrency,
            reveal=reveal,
        )
        if msg_path is not None:
            lines = [json.dumps(read_json_file(msg_path, "message file"))]
            errors = local.run(lines)
        else:  # a trigger started from a terminal does not wait for typed input: it polls once
            errors = local.run([] if local.is_trigger and sys.stdin.isatty() else sys.stdin)
    except (ConfigurationError, KeyStoreError) as exc:
        fail(str(exc))
        return
    except OarlockError as exc:
        fail(str(exc), 1)
        return
    sys.exit(1 if errors else 0)


@main.command()
@component_option
@click.option("--cfg", "cfg_path", required=True, help="JSON file with the credential cfg.")
@keys_option
@no_keys_option
@log_level_option
def verify(component_dir: str, cfg_path: str, keys_path: str, no_keys: bool, log_level: str) -> None:
    """Run the component's verify_credentials.py; print {"verified": …}; exit 0 if verified, 1 if not.

    Like `call`, it starts from the newest stored credential of the cfg's _account and stores what it refreshes.
    """
    from oarlock.component.model import Component
    from oarlock.keys.store import open_store
    from oarlock.runtime.verify import verify_with_keys

    logs.configure(log_level)
    keys = None
    try:
        component = Component.load(component_dir)
        cfg = read_cfg(cfg_path)
        keys = None if no_keys else open_store(keys_path)
        result = verify_with_keys(component.verifier_path(), cfg, keys=keys, component=component)
    except (ConfigurationError, KeyStoreError) as exc:
        fail(str(exc))
        return
    finally:
        if keys is not None:
            keys.close()
    result.pop("updateKeys", None)
    click.echo(json.dumps(redact(result), ensure_ascii=False))
    sys.exit(0 if result["verified"] else 1)


@main.command()
@click.argument("name", type=click.Choice(["verifyCredentials", "getMetaModel", "selectModel"]))
@component_option
@click.option(
    "--keys",
    "keys_path",
    envvar="ELASTICIO_KEYS_STORE",
    default=str(DEFAULT_KEYS),
    show_default=f"ELASTICIO_KEYS_STORE or {DEFAULT_KEYS}",
    help="Keys store for verifyCredentials: it starts from the newest stored credential and stores its refreshes.",
)
@no_keys_option
@log_level_option
def service(name: str, component_dir: str, keys_path: str, no_keys: bool, log_level: str) -> None:
    """sailor's service mode: cfg from ELASTICIO_CFG, result POSTed to ELASTICIO_POST_RESULT_URL (or printed).

    The result is masked: no token or secret is printed or POSTed.
    """
    from oarlock.component.model import Component
    from oarlock.runtime.service import post_result, run_service

    logs.configure(log_level)
    try:
        component = Component.load(os.environ.get("ELASTICIO_COMPONENT_PATH") or component_dir)
        result = run_service(name, component, os.environ, keys_url=None if no_keys else keys_path)
        url = os.environ.get("ELASTICIO_POST_RESULT_URL")
        if url:
            post_result(url, result)
        else:
            click.echo(json.dumps(result, ensure_ascii=False))
    except ConfigurationError as exc:
        fail(str(exc))
        return
    sys.exit(0 if result["status"] == "success" else 1)


@main.command()
@click.option("--ttl", default=3.0, show_default=True, help="Access-token lifetime the dev provider grants.")
@click.option("--workdir", default=".oarlock/demo", show_default=True, type=click.Path(file_okay=False))
def demo(ttl: float, workdir: str) -> None:
    """Local mode on embedded defaults: dev provider + the reference `request` action, token refresh shown."""
    from oarlock.cli.demo import run_demo

    sys.exit(run_demo(ttl=ttl, workdir=Path(workdir)))
