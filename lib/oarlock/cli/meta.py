"""``oarlock meta FUNCTION`` and ``oarlock select FUNCTION METHOD``: dynamic metadata and select models, locally.

Both call a method of the function's module through :class:`oarlock.runtime.service.ModelCall`
(what ``oarlock service getMetaModel|selectModel`` runs too), with the cfg ``oarlock call`` would
give ``process`` (the newest stored credential, component.json's oauth2 defaults) and, when the
method takes a second parameter, a ``ctx`` whose ``ctx.http`` keeps the token alive. The result
is printed as JSON on stdout with every secret of the cfg masked.

The contracts: ``getMetaModel(cfg[, ctx])`` returns ``{"in": SCHEMA, "out": SCHEMA}`` (either may
be left out), each a JSON Schema; a select model method returns a JSON object mapping each
option's value to its label. Exit 0 with the JSON; 1 with one line on stderr when the method
raised or returned something outside its contract; 2 with one line on a usage error (no such
function or method, an unreadable cfg, a broken component).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from oarlock import logs
from oarlock.cli.main import component_option, fail, keys_option, log_level_option, no_keys_option, read_cfg
from oarlock.component.inputschema import schema_error
from oarlock.errors import ConfigurationError, KeyStoreError
from oarlock.redact import redact_text, register_credential

cfg_option = click.option("--cfg", "cfg_path", required=True, help="JSON file with the step configuration (cfg).")


@click.command("meta")
@click.argument("function")
@component_option
@cfg_option
@keys_option
@no_keys_option
@log_level_option
def meta_command(
    function: str, component_dir: str, cfg_path: str, keys_path: str, no_keys: bool, log_level: str
) -> None:
    """Print FUNCTION's dynamic metadata: what its module's getMetaModel(cfg) returns, as JSON.

    Exit 0 with the metadata, 1 when getMetaModel raised or returned no {"in", "out"} JSON Schemas,
    2 on a usage error (no such function, no getMetaModel).
    """
    _run(function, "getMetaModel", component_dir, cfg_path, None if no_keys else keys_path, log_level)


@click.command("select")
@click.argument("function")
@click.argument("method")
@component_option
@cfg_option
@keys_option
@no_keys_option
@log_level_option
def select_command(
    function: str, method: str, component_dir: str, cfg_path: str, keys_path: str, no_keys: bool, log_level: str
) -> None:
    """Print the options of a select field: what METHOD(cfg) of FUNCTION's module returns, as JSON.

    METHOD is the field's "model" in component.json. Exit 0 with the options ({value: label}), 1 when
    the method raised or returned no JSON object, 2 on a usage error (no such function or method).
    """
    _run(function, method, component_dir, cfg_path, None if no_keys else keys_path, log_level)


def _run(function: str, method: str, component_dir: str, cfg_path: str, keys_url: str | None, log_level: str) -> None:
    from oarlock.component.model import Component
    from oarlock.keys.store import open_store
    from oarlock.runtime.service import ModelCall, mask_values

    logs.configure(log_level)
    keys = None
    try:
        cfg = read_cfg(cfg_path)
        register_credential(cfg)
        keys = open_store(keys_url) if keys_url else None
        call = ModelCall(Component.load(component_dir), function, method, cfg, keys=keys)
    except (ConfigurationError, KeyStoreError) as exc:
        if keys is not None:
            keys.close()
        fail(_line(str(exc)))
        return
    try:
        result = call.run()
    except Exception as exc:  # the method's own failure: its message, masked, on one line
        fail(_line(f"{method} of {function} raised {type(exc).__name__}: {exc}"), 1)
        return
    finally:
        call.close()
        if keys is not None:
            keys.close()
    problem = contract_problem(method, result)
    if problem is not None:
        fail(_line(f"{method} of {function} {problem}"), 1)
        return
    click.echo(json.dumps(mask_values(result), ensure_ascii=False, indent=2, default=str))
    sys.exit(0)


def contract_problem(method: str, result: Any) -> str | None:
    """Why ``result`` breaks the method's contract (see the module docstring), or None."""
    if method != "getMetaModel":
        if not isinstance(result, dict):
            return f"returned {_kind(result)}: a select model returns a JSON object {{value: label}}"
        return None
    if not isinstance(result, dict) or not ({"in", "out"} & set(result)):
        return f'returned {_kind(result)}: getMetaModel returns {{"in": JSON Schema, "out": JSON Schema}}'
    for direction in ("in", "out"):
        if direction in result:
            error = schema_error(result[direction])
            if error is not None:
                return f"returned an {direction!r} that {error}"
    return None


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object without 'in' or 'out'"
    return "null" if value is None else f"a {type(value).__name__}"


def _line(text: str) -> str:
    return " ".join(redact_text(text).split())
