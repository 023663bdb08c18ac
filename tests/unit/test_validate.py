"""`oarlock validate`: the 40 real component.json files, and every broken case with its sentence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from oarlock.component.model import Component, schema_problems
from oarlock.component.validate import validate
from oarlock.errors import ComponentError
from tests.support import DATA, run_cli

CORPUS = sorted((DATA / "corpus" / "component-json").glob("*.component.json"))
METADATA = DATA / "corpus" / "component-json" / "metadata"


def make(tmp_path: Path, descriptor: Any, files: dict[str, str] | None = None) -> Path:
    root = tmp_path / "comp"
    root.mkdir(parents=True, exist_ok=True)
    text = descriptor if isinstance(descriptor, str) else json.dumps(descriptor)
    (root / "component.json").write_text(text)
    for name, content in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root


def one_action(**spec: Any) -> dict[str, Any]:
    return {"title": "T", "actions": {"a": {"title": "A", "main": "lib/a.py", "metadata": {"in": {}}, **spec}}}


PROCESS = "def process(msg, cfg, snapshot, ctx):\n    return None\n"


def test_the_corpus_holds_40_real_component_json_files() -> None:
    assert len(CORPUS) == 40


@pytest.mark.parametrize("path", CORPUS, ids=[p.name.split(".")[0] for p in CORPUS])
def test_every_real_component_json_passes_the_schema(path: Path) -> None:
    assert schema_problems(json.loads(path.read_text())) == []


@pytest.mark.parametrize("path", CORPUS, ids=[p.name.split(".")[0] for p in CORPUS])
def test_validating_a_real_component_never_crashes_and_only_names_missing_files_unknown_keys_and_bad_schemas(
    path: Path, tmp_path: Path
) -> None:
    # issue 15 made unknown keys and invalid inline metadata schemas errors (they were accepted before)
    root = make(tmp_path, path.read_text())
    for problem in validate(root):
        if problem.level == "error" and "unknown key" not in problem.message:
            assert problem.path.endswith(".main") or ".metadata." in problem.path, str(problem)
            words = ("does not exist", "not a Python file", "Java class", "is not a valid JSON Schema")
            assert any(w in problem.message for w in words), str(problem)


def test_a_valid_python_component_has_no_problems(tmp_path: Path) -> None:
    root = make(tmp_path, one_action(), {"lib/a.py": PROCESS})
    assert validate(root) == []
    done = run_cli(["validate", str(root)])
    assert done.returncode == 0 and "component.json is valid (1 functions)" in done.stdout


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    root = make(tmp_path, '{"title": "x",\n  "actions": {,}}')
    (problem,) = validate(root)
    assert "is not valid JSON" in problem.message and "line 2 column" in problem.message


def test_wrong_types_are_reported_with_their_json_path(tmp_path: Path) -> None:
    root = make(tmp_path, {"title": 3, "actions": {"a": {"main": 5}}, "triggers": []})
    messages = {str(p) for p in validate(root)}
    assert "title: must be of type string, got number" in messages
    assert "actions.a.main: must be of type string, got number" in messages
    assert "triggers: must be of type object, got array" in messages


def test_a_missing_main_file_is_named(tmp_path: Path) -> None:
    root = make(tmp_path, one_action(main="lib/actions/missing.py"))
    assert "actions.a.main: lib/actions/missing.py does not exist" in {str(p) for p in validate(root)}
    done = run_cli(["validate", str(root)])
    assert done.returncode == 1
    assert "actions.a.main: lib/actions/missing.py does not exist" in done.stdout
    assert "1 problem found" in done.stdout


def test_a_main_without_process_is_named(tmp_path: Path) -> None:
    root = make(tmp_path, one_action(), {"lib/a.py": "def handle(msg):\n    pass\n"})
    assert "actions.a.main: lib/a.py does not define a function process" in {str(p) for p in validate(root)}


def test_a_main_that_fails_to_import_names_the_exception(tmp_path: Path) -> None:
    root = make(tmp_path, one_action(), {"lib/a.py": "import not_a_module_anywhere\n"})
    (problem,) = validate(root)
    assert problem.path == "actions.a.main" and "ModuleNotFoundError" in problem.message


def test_a_java_class_main_gets_its_own_sentence(tmp_path: Path) -> None:
    root = make(tmp_path, one_action(main="io.elastic.petstore.actions.CreatePet"))
    assert "is a Java class name, not a Python file" in str(validate(root)[0])


def test_a_missing_metadata_file_is_named(tmp_path: Path) -> None:
    root = make(tmp_path, one_action(metadata={"in": "./lib/schemas/in.json"}), {"lib/a.py": PROCESS})
    assert "actions.a.metadata.in: lib/schemas/in.json does not exist" in {str(p) for p in validate(root)}


def test_a_metadata_file_that_is_not_a_json_schema_is_named(tmp_path: Path) -> None:
    root = make(tmp_path, one_action(metadata={"in": "in.json"}), {"lib/a.py": PROCESS, "in.json": '{"type": 12}'})
    (problem,) = validate(root)
    assert problem.path == "actions.a.metadata.in" and "is not a valid JSON Schema" in problem.message


def test_real_metadata_files_with_draft_03_required_are_accepted_with_a_warning(tmp_path: Path) -> None:
    files = {"lib/a.py": PROCESS}
    root = make(tmp_path, one_action(metadata={"in": "in.json"}), files)
    shutil.copy(METADATA / "elasticio__petstore-component-java__schemas__createPet.in.json", root / "in.json")
    assert all(p.level == "warning" for p in validate(root))


def test_an_undeclared_env_placeholder_is_an_error_and_a_declared_one_is_fine(tmp_path: Path) -> None:
    descriptor = {
        **one_action(),
        "credentials": {"oauth2": {"client_id": "{{MY_ID}}", "client_secret": "{{NOPE}}"}},
        "envVars": {"MY_ID": {"required": True}},
    }
    root = make(tmp_path, descriptor, {"lib/a.py": PROCESS})
    assert [str(p) for p in validate(root)] == [
        "credentials.oauth2.client_secret: {{NOPE}} names an environment variable that envVars does not declare"
    ]


def test_oauth2_settings_fill_placeholders_from_the_environment(tmp_path: Path) -> None:
    descriptor = {
        **one_action(),
        "credentials": {"oauth2": {"client_id": "{{MY_ID}}", "token_uri": "https://t"}},
        "envVars": {"MY_ID": {"required": True}},
    }
    component = Component.load(make(tmp_path, descriptor, {"lib/a.py": PROCESS}))
    assert component.oauth2_settings({"MY_ID": "abc"}) == {"client_id": "abc", "token_uri": "https://t"}
    with pytest.raises(ComponentError, match="environment variable MY_ID is not set"):
        component.oauth2_settings({})


def test_a_function_without_metadata_is_a_warning(tmp_path: Path) -> None:
    root = make(tmp_path, {"title": "T", "actions": {"a": {"main": "lib/a.py"}}}, {"lib/a.py": PROCESS})
    (problem,) = validate(root)
    assert problem.level == "warning" and "neither metadata nor dynamicMetadata" in problem.message
    assert run_cli(["validate", str(root)]).returncode == 0


def test_a_select_field_without_model_is_an_error(tmp_path: Path) -> None:
    spec = {"fields": {"pick": {"label": "Pick", "viewClass": "SelectView"}}}
    root = make(tmp_path, one_action(**spec), {"lib/a.py": PROCESS})
    assert [str(p) for p in validate(root)] == [
        "actions.a.fields.pick.model: a select field needs a model (a map of options or a method name)"
    ]


def test_legacy_env_spelling_is_a_warning(tmp_path: Path) -> None:
    root = make(tmp_path, {**one_action(), "env": ["A"]}, {"lib/a.py": PROCESS})
    assert [p.level for p in validate(root)] == ["warning"]


def test_two_components_with_the_same_file_names_do_not_clash(tmp_path: Path) -> None:
    first = make(tmp_path / "one", one_action(), {"lib/a.py": "def process(m, c, s, x):\n    return {'n': 1}\n"})
    second = make(tmp_path / "two", one_action(), {"lib/a.py": "def process(m, c, s, x):\n    return {'n': 2}\n"})
    assert Component.load(first).load_module("a") is not Component.load(second).load_module("a")
    assert Component.load(second).load_module("a").process(None, None, None, None) == {"n": 2}
