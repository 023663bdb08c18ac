"""A metadata JSON Schema whose local ``$ref`` points nowhere is invalid at validate and unloadable at run time.

``{"$ref": "#/definitions/nope"}`` passes jsonschema's check_schema: ``oarlock validate`` said the
component was valid, and at run time every message failed with jsonschema's private
``_WrappedReferencingError`` (review 2, finding 9). Remote references are not fetched, as before,
but a message reaching one is a ComponentError naming the reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from oarlock.component.inputschema import InputValidator, reference_error, schema_error
from oarlock.component.model import Component
from oarlock.component.validate import validate
from oarlock.errors import ComponentError, MessageValidationError
from oarlock.protocol.message import Message
from oarlock.runtime.executor import FunctionRunner, UnloadableFunction
from tests.support import run_cli

PROCESS = "def process(msg, cfg, snapshot, ctx):\n    return {'body': msg.body}\n"
DANGLING = {"$ref": "#/definitions/nope"}
REMOTE = {"properties": {"a": {"$ref": "https://example.invalid/s.json"}}}


def make(tmp_path: Path, metadata: dict[str, Any], files: dict[str, str] | None = None) -> Path:
    root = tmp_path / "comp"
    root.mkdir()
    descriptor = {"title": "T", "actions": {"a": {"title": "A", "main": "lib/a.py", "metadata": metadata}}}
    (root / "component.json").write_text(json.dumps(descriptor))
    for name, content in {"lib/a.py": PROCESS, **(files or {})}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root


DANGLING_SCHEMAS = {
    "root pointer": (DANGLING, "#/definitions/nope"),
    "in a property": ({"properties": {"a": {"$ref": "#/definitions/b"}}, "definitions": {}}, "#/definitions/b"),
    "in an items array": ({"items": [{"$ref": "#/items/1"}]}, "#/items/1"),
    "anchor": ({"$ref": "#nope"}, "#nope"),
    "draft-03 required": ({"properties": {"a": {"required": True, "$ref": "#/definitions/x"}}}, "#/definitions/x"),
    "embedded $id scope": (
        {"$id": "http://x/s.json", "definitions": {"a": {"$id": "sub.json", "properties": {"q": {"$ref": "#/b"}}}}},
        "#/b",
    ),
    "draft-04 id": (
        {
            "$schema": "http://json-schema.org/draft-04/schema#",
            "id": "http://x/y",
            "properties": {"z": {"$ref": "#/z"}},
        },
        "#/z",
    ),
}


@pytest.mark.parametrize("case", DANGLING_SCHEMAS.values(), ids=list(DANGLING_SCHEMAS))
def test_a_local_ref_that_points_nowhere_makes_the_schema_invalid(case: tuple[dict[str, Any], str]) -> None:
    schema, ref = case
    expected = f"is not a valid JSON Schema: $ref {ref} points nowhere"
    assert schema_error(schema) == expected
    assert reference_error(schema) == expected


RESOLVING_SCHEMAS = {
    "definitions": {"definitions": {"a": {"type": "string"}}, "properties": {"x": {"$ref": "#/definitions/a"}}},
    "the root": {"properties": {"child": {"$ref": "#"}}},
    "an escaped pointer": {"properties": {"a~b": {}, "c d": {}}, "items": {"$ref": "#/properties/a~0b"}},
    "a percent-encoded pointer": {"properties": {"c d": {}}, "items": {"$ref": "#/properties/c%20d"}},
    "an embedded $id scope": {
        "$id": "http://x/s.json",
        "definitions": {
            "a": {"$id": "sub.json", "definitions": {"b": {}}, "properties": {"q": {"$ref": "#/definitions/b"}}}
        },
    },
    "a 2020-12 anchor": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": {"x": {"$anchor": "foo"}},
        "$ref": "#foo",
    },
    "a $ref-shaped value in enum, const, default and examples": {
        "enum": [{"$ref": "#/nope"}],
        "const": {"$ref": "#/nope"},
        "default": {"$ref": "#/nope"},
        "examples": [{"$ref": "#/nope"}],
    },
    "a property named $ref": {"properties": {"$ref": {"type": "string"}, "$id": {"type": "string"}}},
    "a remote reference (not fetched)": REMOTE,
}


@pytest.mark.parametrize("schema", RESOLVING_SCHEMAS.values(), ids=list(RESOLVING_SCHEMAS))
def test_schemas_whose_local_refs_resolve_stay_valid(schema: dict[str, Any]) -> None:
    assert schema_error(schema) is None
    assert reference_error(schema) is None


def test_a_schema_breaking_its_meta_schema_is_still_reported_as_before_and_is_no_reference_error() -> None:
    schema = {"properties": {"a": {"type": "string", "pattern": "(unclosed"}}}
    assert schema_error(schema) == "is not a valid JSON Schema at properties.a.pattern: '(unclosed' is not a 'regex'"
    assert reference_error(schema) is None


def test_oarlock_validate_exits_1_for_a_metadata_in_ref_that_points_nowhere(tmp_path: Path) -> None:
    root = make(tmp_path, {"in": DANGLING, "out": {}})
    (problem,) = validate(root)
    assert problem.level == "error" and problem.path == "actions.a.metadata.in"
    assert problem.message.startswith("is not a valid JSON Schema: $ref #/definitions/nope points nowhere")
    assert "cannot load this function" in problem.message
    done = run_cli(["validate", str(root)])
    assert done.returncode == 1, done.stdout
    assert "actions.a.metadata.in: is not a valid JSON Schema: $ref #/definitions/nope points nowhere" in done.stdout


def test_a_dangling_ref_in_metadata_out_and_in_a_metadata_file_is_named_with_its_file(tmp_path: Path) -> None:
    root = make(tmp_path, {"in": "./schemas/in.json", "out": DANGLING}, {"schemas/in.json": json.dumps(DANGLING)})
    messages = {str(p) for p in validate(root)}
    assert messages == {
        "actions.a.metadata.in: schemas/in.json is not a valid JSON Schema: $ref #/definitions/nope points nowhere"
        " (oarlock cannot load this function: every message would be rejected with this error)",
        "actions.a.metadata.out: is not a valid JSON Schema: $ref #/definitions/nope points nowhere",
    }


def test_an_input_validator_refuses_a_schema_whose_ref_points_nowhere_and_follows_one_that_resolves() -> None:
    with pytest.raises(ComponentError) as raised:
        InputValidator(DANGLING, function="a")
    assert str(raised.value) == "metadata.in of a is not a valid JSON Schema: $ref #/definitions/nope points nowhere"
    # one whose local refs resolve still checks messages through them
    schema = {"definitions": {"n": {"type": "integer"}}, "properties": {"n": {"$ref": "#/definitions/n"}}}
    validator = InputValidator(schema, function="a")
    validator.check({"n": 1})
    with pytest.raises(MessageValidationError, match=r"body\.n: 'x' is not of type 'integer'"):
        validator.check({"n": "x"})


def test_a_function_whose_metadata_in_ref_points_nowhere_is_unloadable_so_every_message_names_the_schema(
    tmp_path: Path,
) -> None:
    # oarlock run builds the FunctionRunner inside its ComponentError -> UnloadableFunction branch
    root = make(tmp_path, {"in": DANGLING, "out": {}})
    with pytest.raises(ComponentError) as raised:
        FunctionRunner(Component.load(root), "a")
    (event,) = UnloadableFunction(raised.value).call(Message(body={"x": 1}), {}).events
    assert event.payload["name"] == "ComponentError"
    assert "$ref #/definitions/nope points nowhere" in event.payload["message"]
    assert "_WrappedReferencingError" not in event.payload["message"]


def test_a_message_reaching_a_remote_ref_is_a_component_error_naming_it_not_a_private_jsonschema_class() -> None:
    validator = InputValidator(REMOTE, function="a")
    validator.check({"b": 1})  # never reaches the reference
    with pytest.raises(ComponentError) as raised:
        validator.check({"a": 1})
    assert str(raised.value) == (
        "metadata.in of a: $ref https://example.invalid/s.json cannot be resolved:"
        " oarlock does not fetch referenced schemas"
    )


def test_a_remote_ref_passes_validate_as_before_and_the_error_event_of_a_message_reaching_it_names_it(
    tmp_path: Path,
) -> None:
    root = make(tmp_path, {"in": REMOTE, "out": {}})
    assert validate(root) == []
    runner = FunctionRunner(Component.load(root), "a")
    (event,) = runner.call(Message(body={"a": 1}), {}).events
    assert event.payload["name"] == "ComponentError"
    assert "$ref https://example.invalid/s.json cannot be resolved" in event.payload["message"]
