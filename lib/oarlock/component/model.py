"""Load a component folder: component.json, its functions and their metadata.

``Component.load`` is lenient about the quirks real components carry (see
``oarlock.validate`` for the full list of checks) but strict about what oarlock needs to
run a function: valid JSON, the structural schema, and a Python ``main`` that defines
``process``.

Whatever breaks while loading is a ComponentError naming the file: JSON that is not JSON or is
nested deeper than :data:`oarlock.jsonlimits.MAX_DEPTH` levels (never a RecursionError), and a
module that raises anything at import, ``sys.exit()`` (argparse's too) and KeyboardInterrupt
included (``lib/a.py called sys.exit(0) while being imported``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import jsonschema

from oarlock.errors import ComponentError, DecodeError
from oarlock.jsonlimits import MAX_DEPTH, check_depth
from oarlock.jsontypes import json_type
from oarlock.redact import redact_text

#: the credentials.oauth2 keys refreshing needs: a run cannot go without them (Component.oauth2_for)
OAUTH2_REFRESH_KEYS = ("token_uri", "client_id", "client_secret")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
JAVA_CLASS = re.compile(r"^[a-z][\w]*(\.[\w$]+)+$")
#: the viewClass of a credentials field whose value is a secret (masked in the UI, redacted by oarlock)
PASSWORD_VIEW_CLASS = "PasswordFieldView"
_import_lock = threading.Lock()


@dataclass(frozen=True)
class Problem:
    """One validation finding, with the JSON path it concerns."""

    path: str
    message: str
    level: Literal["error", "warning"] = "error"
    #: the key or name that was probably meant (a did-you-mean), when one is close
    suggestion: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The finding for ``oarlock validate --format json``."""
        return {"path": self.path, "message": self.message, "suggestion": self.suggestion}

    def __str__(self) -> str:
        prefix = "warning: " if self.level == "warning" else ""
        return f"{prefix}{self.path}: {self.message}" if self.path else f"{prefix}{self.message}"


@dataclass(frozen=True)
class FunctionSpec:
    """An action or trigger as component.json declares it."""

    name: str
    kind: Literal["action", "trigger"]
    main: str
    title: str
    metadata_in: dict[str, Any] | None = None
    metadata_out: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def json_path(self) -> str:
        return f"{self.kind}s.{self.name}"


@cache
def component_schema() -> dict[str, Any]:
    """The published JSON Schema of component.json (shipped in ``oarlock/schema``)."""
    text = resources.files("oarlock.component").joinpath("schema/component.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def json_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_component_json(root: Path) -> dict[str, Any]:
    """Read and parse component.json; ComponentError names the file and the line/column of a JSON error."""
    path = root / "component.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ComponentError(f"{path} does not exist: a component folder needs a component.json") from None
    except OSError as exc:
        raise ComponentError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ComponentError(f"{path} is not UTF-8 text") from None
    data = parse_json(text, shown=str(path))
    if not isinstance(data, dict):
        raise ComponentError(f"{path} must hold a JSON object")
    return data


def parse_json(text: str, *, shown: str) -> Any:
    """``json.loads(text)``, or a ComponentError naming ``shown``: not JSON (with the line and column), or
    nested deeper than MAX_DEPTH levels (every check after parsing recurses: no RecursionError anywhere)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ComponentError(f"{shown} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ComponentError(f"{shown} is nested deeper than {MAX_DEPTH} levels") from None
    try:
        check_depth(data, what=shown, text=text)
    except DecodeError as exc:
        raise ComponentError(str(exc)) from None
    return data


def schema_problems(data: Any) -> list[Problem]:
    """The structural (schema) problems of a parsed component.json, each as a plain sentence."""
    validator = jsonschema.Draft7Validator(component_schema())
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
        problems.append(Problem(json_path(error.absolute_path) or "component.json", _sentence(error)))
    return problems


def _sentence(error: jsonschema.ValidationError) -> str:
    if error.validator == "required":
        return error.message.replace("is a required property", "is required")
    if error.validator == "type":
        return f"must be of type {error.validator_value}, got {json_type(error.instance)}"
    if error.validator == "enum":
        options = error.validator_value if isinstance(error.validator_value, list) else []
        return f"must be one of {', '.join(str(o) for o in options)}, got {error.instance!r}"
    if error.validator in ("anyOf", "oneOf"):
        described = error.schema.get("description") if isinstance(error.schema, dict) else None
        return f"has the wrong form ({json_type(error.instance)}): {described or error.message}"
    return error.message


def main_problem(root: Path, main: str) -> str | None:
    """Why a ``main`` cannot be a Python file of this component, or None when it looks right."""
    if JAVA_CLASS.match(main) and not main.endswith(".py"):
        return f"{main} is a Java class name, not a Python file"
    path = root / main
    if not main.endswith(".py"):
        if path.suffix in (".js", ".ts", ".mjs", ".cjs"):
            return f"{main} is a JavaScript file, not a Python file"
        return f"{main} is not a Python file (.py)"
    if not path.is_file():
        return f"{_display(main)} does not exist"
    return None


def _display(main: str) -> str:
    return main[2:] if main.startswith("./") else main


class Component:
    """A loaded component folder."""

    def __init__(self, root: Path, raw: dict[str, Any]) -> None:
        self.root = root
        self.raw = raw
        self.title = str(raw.get("title", root.name))
        self.functions: dict[str, FunctionSpec] = {}
        kinds: tuple[Literal["action"], Literal["trigger"]] = ("action", "trigger")
        for kind in kinds:
            for name, spec in (raw.get(f"{kind}s") or {}).items():
                self.functions[name] = FunctionSpec(
                    name=name,
                    kind=kind,
                    main=str(spec.get("main", "")),
                    title=str(spec.get("title", name)),
                    metadata_in=self._metadata(spec, "in", f"{kind}s.{name}"),
                    metadata_out=self._metadata(spec, "out", f"{kind}s.{name}"),
                    raw=spec,
                )
        self._modules: dict[str, ModuleType] = {}

    @classmethod
    def load(cls, root: str | Path) -> Component:
        folder = Path(root).resolve()
        if not folder.is_dir():
            raise ComponentError(f"component folder {root} does not exist")
        raw = read_component_json(folder)
        problems = schema_problems(raw)
        if problems:
            listed = "; ".join(str(p) for p in problems[:5])
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise ComponentError(f"{folder / 'component.json'} is invalid: {listed}{more}")
        return cls(folder, raw)

    def _metadata(self, spec: Mapping[str, Any], direction: str, where: str) -> dict[str, Any] | None:
        metadata = spec.get("metadata")
        if not isinstance(metadata, dict):
            return None
        value = metadata.get(direction)
        if isinstance(value, dict):
            return value or None
        if isinstance(value, str):
            path = self.root / value
            try:
                text = path.read_text(encoding="utf-8")
            except OSError:
                raise ComponentError(f"{where}.metadata.{direction}: {_display(value)} does not exist") from None
            except UnicodeDecodeError:
                raise ComponentError(f"{where}.metadata.{direction}: {_display(value)} is not UTF-8 text") from None
            try:
                loaded = parse_json(text, shown=_display(value))
            except ComponentError as exc:
                raise ComponentError(f"{where}.metadata.{direction}: {exc}") from None
            return loaded if isinstance(loaded, dict) and loaded else None
        return None

    def function(self, name: str) -> FunctionSpec:
        spec = self.functions.get(name)
        if spec is None:
            actions = sorted(n for n, f in self.functions.items() if f.kind == "action")
            triggers = sorted(n for n, f in self.functions.items() if f.kind == "trigger")
            raise ComponentError(
                f"unknown function {name!r}: component.json defines actions {', '.join(actions) or '(none)'}"
                f" and triggers {', '.join(triggers) or '(none)'}"
            )
        return spec

    def load_module(self, name: str) -> ModuleType:
        """Import the function's ``main`` file (once) and check that it defines a callable ``process``."""
        spec = self.function(name)
        with _import_lock:
            cached = self._modules.get(spec.main)
            if cached is not None:
                return cached
            problem = main_problem(self.root, spec.main)
            if problem:
                raise ComponentError(f"{spec.json_path}.main: {problem}")
            module = import_file(self.root, self.root / spec.main, where=f"{spec.json_path}.main")
            if not callable(getattr(module, "process", None)):
                raise ComponentError(f"{spec.json_path}.main: {_display(spec.main)} does not define a function process")
            self._modules[spec.main] = module
            return module

    def oauth2_settings(self, env: Mapping[str, Any]) -> dict[str, Any]:
        """credentials.oauth2 of component.json with ``{{NAME}}`` placeholders filled from ``env``.

        ``env`` is the environment, optionally overlaid with the step's cfg values (real components
        also name credential fields, e.g. ``https://{{prodEnv}}.salesforce.com``). A placeholder that
        nothing fills is a ComponentError naming it.
        """
        oauth2 = self.oauth2_template()
        return {key: fill_placeholders(value, env, where=f"credentials.oauth2.{key}") for key, value in oauth2.items()}

    def oauth2_for(
        self, cfg: Mapping[str, Any], env: Mapping[str, Any], *, required: Collection[str] = OAUTH2_REFRESH_KEYS
    ) -> dict[str, Any]:
        """The cfg's ``oauth2`` completed from component.json's credentials.oauth2: the one rule of
        ``call``, ``run``, ``verify``, ``meta``/``select`` and ``auth login``.

        A key the cfg's oauth2 carries is used as it is: its ``{{NAME}}`` in component.json is never
        looked up. Every other key comes from component.json, its placeholders filled from ``env`` (the
        environment), then from the cfg's own values (``https://{{prodEnv}}.salesforce.com``). A
        placeholder nothing fills is a ComponentError naming the variable and the cfg key that would do
        when the key is ``required`` (by default what refreshing needs: token_uri, client_id,
        client_secret); any other such key (``auth_uri`` for a run) is left out.
        """
        given = cfg.get("oauth2")
        given = dict(given) if isinstance(given, dict) else {}
        values = {**cfg, **env}
        filled: dict[str, Any] = {}
        for key, value in self.oauth2_template().items():
            if key in given:
                continue
            try:
                filled[key] = fill_placeholders(value, values, where=f"credentials.oauth2.{key}")
            except ComponentError as exc:
                if key in required:
                    raise ComponentError(f"{exc}; or give the cfg an oauth2.{key}") from None
        return {**filled, **given}

    def oauth2_template(self) -> dict[str, Any]:
        """credentials.oauth2 as written in component.json (placeholders unfilled), {} when absent."""
        credentials = self.raw.get("credentials")
        oauth2 = credentials.get("oauth2") if isinstance(credentials, dict) else None
        return dict(oauth2) if isinstance(oauth2, dict) else {}

    def password_fields(self) -> frozenset[str]:
        """The cfg fields component.json declares as secrets: ``credentials.fields`` entries whose
        ``viewClass`` is ``PasswordFieldView`` (e.g. ``accessKeySecret``, ``passphrase``, ``apiKey``).

        Pass them with the cfg to :func:`oarlock.redact.register_password_fields`.
        """
        credentials = self.raw.get("credentials")
        fields = credentials.get("fields") if isinstance(credentials, dict) else None
        if not isinstance(fields, dict):
            return frozenset()
        return frozenset(
            str(name)
            for name, spec in fields.items()
            if isinstance(spec, dict) and spec.get("viewClass") == PASSWORD_VIEW_CLASS
        )

    def verifier_path(self) -> Path | None:
        path = self.root / "verify_credentials.py"
        return path if path.is_file() else None


def fill_placeholders(value: Any, env: Mapping[str, Any], *, where: str) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env or not isinstance(env[name], (str, int, float)):
                raise ComponentError(f"{where}: environment variable {name} is not set (used as {{{{{name}}}}})")
            return str(env[name])

        return PLACEHOLDER.sub(substitute, value)
    if isinstance(value, list):
        return [fill_placeholders(v, env, where=where) for v in value]
    if isinstance(value, dict):
        return {k: fill_placeholders(v, env, where=f"{where}.{k}") for k, v in value.items()}
    return value


def import_file(root: Path, path: Path, *, where: str) -> ModuleType:
    """Import a Python file under a module name unique to (component root, file)."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"oarlock_component_{digest}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ComponentError(f"{where}: {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    root_text = str(root)
    added = root_text not in sys.path
    if added:
        sys.path.insert(0, root_text)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except GeneratorExit:  # pragma: no cover - the interpreter closing a generator: not the module's doing
        sys.modules.pop(module_name, None)
        raise
    except BaseException as exc:  # sys.exit() (argparse's), KeyboardInterrupt: the module is as broken
        sys.modules.pop(module_name, None)
        raise ComponentError(f"{where}: {_import_failure(path.relative_to(root), exc)}") from None
    finally:
        if added:
            sys.path.remove(root_text)
    return module


def _import_failure(shown: Path, exc: BaseException) -> str:
    """What importing ``shown`` did instead of defining the module, as a sentence."""
    if isinstance(exc, SystemExit):
        code = exc.code
        hint = ": 2 is argparse's exit code, does it parse the command line at import?" if code == 2 else ""
        return f"{shown} called sys.exit({redact_text(repr(code))}) while being imported{hint}"
    if isinstance(exc, KeyboardInterrupt):
        return f"{shown} raised KeyboardInterrupt while being imported"
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ fails still names its class
        text = "(its message cannot be shown)"
    return f"importing {shown} failed: {type(exc).__name__}: {redact_text(text)}"
