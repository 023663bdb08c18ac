"""`oarlock validate`, strict enough for CI (issue 15): each rule on a broken file, the corpus under --lenient, JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from oarlock.cli.validate import validate_command
from oarlock.component.validate import validate
from tests.support import DATA, REPO, TEST_COMPONENTS

CORPUS = sorted((DATA / "corpus" / "component-json").glob("*.component.json"))
PROCESS = "def process(msg, cfg, snapshot, ctx):\n    return None\n"


def make(tmp_path: Path, descriptor: Any, files: dict[str, str] | None = None) -> Path:
    root = tmp_path / "comp"
    root.mkdir(parents=True, exist_ok=True)
    (root / "component.json").write_text(descriptor if isinstance(descriptor, str) else json.dumps(descriptor))
    for name, content in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root


def action(**spec: Any) -> dict[str, Any]:
    return {"title": "T", "actions": {"hello": {"title": "Hello", "main": "lib/a.py", "metadata": {"in": {}}, **spec}}}


def cli(*args: str) -> Result:
    return CliRunner().invoke(validate_command, list(args), catch_exceptions=False)


def report(root: Path, *args: str) -> tuple[int, dict[str, Any]]:
    done = cli(str(root), "--format", "json", *args)
    return done.exit_code, json.loads(done.stdout)


def found(root: Path, **kwargs: Any) -> dict[str, tuple[str, str, str | None]]:
    return {p.path: (p.level, p.message, p.suggestion) for p in validate(root, **kwargs)}


# -- unknown keys -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("descriptor", "path", "meant"),
    [
        ({**action(), "titel": "x"}, "titel", "title"),
        (action(dynamicMetaData=True), "actions.hello.dynamicMetaData", "dynamicMetadata"),
        (action(metdata={"in": {}}), "actions.hello.metdata", "metadata"),
        (
            action(fields={"f": {"label": "F", "viewClass": "TextFieldView", "Note": "n"}}),
            "actions.hello.fields.f.Note",
            "note",
        ),
        (
            {**action(), "credentials": {"oauth2": {"token_url": "https://t"}}},
            "credentials.oauth2.token_url",
            "token_uri",
        ),
        ({**action(), "envVars": {"A": {"requried": True}}}, "envVars.A.requried", "required"),
        (action(metadata={"in": {}, "outt": {}}), "actions.hello.metadata.outt", "out"),
    ],
)
def test_an_unknown_key_at_any_level_is_an_error_with_its_json_path_and_a_did_you_mean(
    tmp_path: Path, descriptor: dict[str, Any], path: str, meant: str
) -> None:
    root = make(tmp_path, descriptor, {"lib/a.py": PROCESS})
    code, out = report(root)
    assert code == 1 and out["valid"] is False
    (error,) = [e for e in out["errors"] if e["path"] == path]
    assert error["suggestion"] == meant and f"did you mean {meant}?" in error["message"]
    assert f"{path}: unknown key: did you mean {meant}?" in cli(str(root)).stdout


def test_an_unknown_key_with_nothing_close_lists_the_keys_known_there(tmp_path: Path) -> None:
    root = make(tmp_path, action(zzz=1), {"lib/a.py": PROCESS})
    level, message, suggestion = found(root)["actions.hello.zzz"]
    assert level == "error" and suggestion is None
    assert message.startswith("unknown key (known here: deprecated, description, dynamicMetadata, fields")


def test_keys_inside_maps_and_open_objects_are_not_unknown(tmp_path: Path) -> None:
    spec = {
        "help": {"description": "anything", "link": "https://x"},
        "fields": {"pick": {"label": "P", "viewClass": "SelectView", "model": {"a": "A", "b": "B"}}},
        "metadata": {"in": {"type": "object", "properties": {"anyName": {"type": "string"}}}, "out": {}},
    }
    descriptor = {**action(**spec), "$schema": "https://oarlock.dev/schema/component/1.json"}
    root = make(tmp_path, descriptor, {"lib/a.py": PROCESS})
    assert validate(root) == []


def test_lenient_turns_unknown_keys_into_warnings_and_exits_0(tmp_path: Path) -> None:
    root = make(tmp_path, action(dynamicMetaData=True), {"lib/a.py": PROCESS})
    code, out = report(root, "--lenient")
    assert code == 0 and out["valid"] is True and out["errors"] == []
    (warning,) = [w for w in out["warnings"] if w["path"] == "actions.hello.dynamicMetaData"]
    assert warning["suggestion"] == "dynamicMetadata"
    text = cli(str(root), "--lenient").stdout
    assert (
        "warning: actions.hello.dynamicMetaData: unknown key: did you mean dynamicMetadata? (--lenient: accepted)"
        in text
    )
    assert text.strip().endswith("component.json is valid (1 functions) with 1 warning (1 unknown keys)")


# -- metadata schemas ---------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["in", "out"])
def test_an_invalid_inline_metadata_schema_is_an_error(tmp_path: Path, direction: str) -> None:
    root = make(
        tmp_path,
        action(metadata={direction: {"type": "object", "properties": {"a": {"type": 12}}}}),
        {"lib/a.py": PROCESS},
    )
    code, out = report(root)
    assert code == 1
    (error,) = out["errors"]
    assert error["path"] == f"actions.hello.metadata.{direction}"
    assert error["message"].startswith("is not a valid JSON Schema at properties.a.type")
    assert ("would not check incoming messages" in error["message"]) is (direction == "in")


def test_an_invalid_metadata_schema_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    root = make(
        tmp_path,
        action(metadata={"in": "./schemas/in.json"}),
        {"lib/a.py": PROCESS, "schemas/in.json": '{"type": "object", "required": "name"}'},
    )
    (problem,) = validate(root)
    assert (problem.level, problem.path) == ("error", "actions.hello.metadata.in")
    assert problem.message.startswith("schemas/in.json is not a valid JSON Schema at required")


# -- one run reports everything ---------------------------------------------------------------------------
def test_every_problem_is_reported_in_one_run_file_checks_run_after_schema_errors(tmp_path: Path) -> None:
    descriptor = {
        "title": 3,
        "titel": "x",
        "actions": {
            "missing": {"main": "lib/missing.py", "metadata": {"in": {}}},
            "typed": {"main": 5},
            "fields_list": {"main": "lib/a.py", "fields": [], "metadata": {"in": {"type": 1}}},
        },
        "triggers": [],
    }
    root = make(tmp_path, descriptor, {"lib/a.py": PROCESS})
    problems = found(root)
    assert problems["title"][1] == "must be of type string, got number"
    assert problems["titel"][2] == "title"
    assert problems["actions.missing.main"][1] == "lib/missing.py does not exist"
    assert problems["actions.typed.main"][1] == "must be of type string, got number"
    assert problems["actions.fields_list.fields"][1] == "must be of type object, got array"
    assert problems["actions.fields_list.metadata.in"][1].startswith("is not a valid JSON Schema")
    assert problems["triggers"][1] == "must be of type object, got array"
    assert cli(str(root)).exit_code == 1


# -- methods in the module ----------------------------------------------------------------------------------
def test_dynamic_metadata_needs_get_meta_model_in_the_module_with_a_did_you_mean(tmp_path: Path) -> None:
    code = PROCESS + "def getMetamodel(cfg):\n    return {}\n"
    root = make(tmp_path, action(dynamicMetadata=True), {"lib/a.py": code})
    level, message, suggestion = found(root)["actions.hello.dynamicMetadata"]
    assert level == "error" and suggestion == "getMetamodel"
    assert message == "lib/a.py does not define getMetaModel(cfg), dynamicMetadata: did you mean getMetamodel?"
    fixed = make(
        tmp_path / "ok", action(dynamicMetadata=True), {"lib/a.py": PROCESS + "def getMetaModel(cfg):\n    return {}\n"}
    )
    assert validate(fixed) == []


def test_a_select_model_method_must_exist_in_the_module(tmp_path: Path) -> None:
    fields = {"pick": {"label": "P", "viewClass": "SelectView", "model": "listThings"}}
    root = make(tmp_path, action(fields=fields), {"lib/a.py": PROCESS + "def list_things(cfg):\n    return {}\n"})
    code, out = report(root)
    assert code == 1
    (error,) = out["errors"]
    assert error["path"] == "actions.hello.fields.pick.model"
    assert (
        error["message"]
        == "lib/a.py does not define listThings(cfg), the select model of field pick: did you mean list_things?"
    )
    assert error["suggestion"] == "list_things"


def test_a_model_method_re_exported_from_another_module_is_found_as_the_runtime_finds_it(tmp_path: Path) -> None:
    fields = {"pick": {"label": "P", "viewClass": "SelectView", "model": "listThings"}}
    files = {
        "lib/a.py": "from lib.shared import listThings, getMetaModel\n\n" + PROCESS,
        "lib/__init__.py": "",
        "lib/shared.py": "def listThings(cfg):\n    return {}\n\n\ndef getMetaModel(cfg):\n    return {}\n",
    }
    root = make(tmp_path, action(fields=fields, dynamicMetadata=True), files)
    assert validate(root) == []


def test_a_module_that_fails_to_import_is_named_once_and_its_methods_are_not_guessed(tmp_path: Path) -> None:
    fields = {"pick": {"label": "P", "viewClass": "SelectView", "model": "listThings"}}
    root = make(tmp_path, action(fields=fields, dynamicMetadata=True), {"lib/a.py": "import not_a_module_anywhere\n"})
    (problem,) = validate(root)
    assert problem.path == "actions.hello.main" and "ModuleNotFoundError" in problem.message


# -- lenient and legacy ---------------------------------------------------------------------------------------
def test_lenient_accepts_a_function_oarlock_cannot_run_but_not_a_missing_python_file(tmp_path: Path) -> None:
    descriptor = {
        "title": "T",
        "actions": {
            "node": {"main": "./lib/actions/node.js", "metadata": {"in": "./lib/schemas/node.in.json"}},
            "java": {"main": "io.elastic.Thing", "metadata": {"in": {}}},
            "python": {"main": "lib/gone.py", "metadata": {"in": {}}},
            "typo": {"main": "lib/a.pyy", "metadata": {"in": {}}},
        },
    }
    root = make(tmp_path, descriptor)
    strict = found(root)
    assert strict["actions.node.main"][0] == strict["actions.java.main"][0] == "error"
    lenient = found(root, lenient=True)
    assert lenient["actions.node.main"][0] == lenient["actions.node.metadata.in"][0] == "warning"
    assert lenient["actions.java.main"][1].endswith("(--lenient: accepted, oarlock cannot run this function)")
    assert lenient["actions.python.main"] == ("error", "lib/gone.py does not exist", None)
    assert lenient["actions.typo.main"] == ("error", "lib/a.pyy is not a Python file (.py)", None)


@pytest.mark.parametrize("path", CORPUS, ids=[p.name.split(".")[0] for p in CORPUS])
def test_every_real_component_json_validates_under_lenient_with_a_readable_report(path: Path, tmp_path: Path) -> None:
    root = tmp_path / "comp"
    root.mkdir()
    shutil.copy(path, root / "component.json")
    done = cli(str(root), "--lenient")
    assert done.exit_code == 0, done.stdout
    lines = done.stdout.strip().splitlines()
    raw = json.loads(path.read_text())
    functions = len(raw.get("actions") or {}) + len(raw.get("triggers") or {})
    assert lines[-1].startswith(f"component.json is valid ({functions} functions)")
    for line in lines[:-1]:  # one warning a line, each naming its JSON path
        assert line.startswith("warning: ") and ": " in line.removeprefix("warning: "), line
    assert len(lines) - 1 <= 2 * functions + 12  # a few lines per function at most


def test_the_corpus_warnings_are_counted_and_the_real_mistakes_among_them_are_named(tmp_path: Path) -> None:
    total, unknown = 0, []
    for path in CORPUS:
        root = tmp_path / path.name
        root.mkdir()
        shutil.copy(path, root / "component.json")
        problems = validate(root, lenient=True)
        assert all(p.level == "warning" for p in problems), path.name
        total += len(problems)
        unknown += [(path.name.split(".")[0], p.path, p.suggestion) for p in problems if "unknown key" in p.message]
    assert 300 < total < 600  # measured: 480 over the 40 files (12 a file), most of them JS/Java mains
    assert ("elasticio__csv-component", "actions.write_attachment.fields.includeHeaders.description", None) in unknown
    assert any(p.endswith(".Note") and s == "note" for _, p, s in unknown)  # a misspelt key in a real file


@pytest.mark.parametrize(
    "root",
    [
        REPO,
        REPO / "bench" / "component",
        *sorted(p for p in TEST_COMPONENTS.iterdir() if (p / "component.json").is_file()),
    ],
    ids=lambda p: str(p.relative_to(REPO)) or "reference",
)
def test_the_components_of_this_repository_validate_strictly(root: Path) -> None:
    assert [p for p in validate(root) if p.level == "error"] == []


def test_json_format_is_one_object_with_errors_and_warnings(tmp_path: Path) -> None:
    descriptor = {**action(dynamicMetaData=True), "env": ["A"]}
    root = make(tmp_path, descriptor, {"lib/a.py": PROCESS})
    code, out = report(root)
    assert code == 1
    assert set(out) == {"component", "valid", "functions", "errors", "warnings"}
    assert out["functions"] == 1 and out["component"] == str(root)
    assert out["errors"] == [
        {
            "path": "actions.hello.dynamicMetaData",
            "message": "unknown key: did you mean dynamicMetadata?",
            "suggestion": "dynamicMetadata",
        }
    ]
    assert [w["path"] for w in out["warnings"]] == ["env"] and out["warnings"][0]["suggestion"] is None
    clean = make(tmp_path / "clean", action(), {"lib/a.py": PROCESS})
    assert report(clean) == (0, {"component": str(clean), "valid": True, "functions": 1, "errors": [], "warnings": []})
