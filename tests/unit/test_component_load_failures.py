"""A component that breaks while loading is a ComponentError naming the file, at validate and at start.

A module that calls ``sys.exit()`` (argparse's included) or raises KeyboardInterrupt or another
BaseException at import, and a component.json or metadata file nested too deep, used to make
``oarlock validate`` exit 0 silently, exit 2 with the module's usage text, or crash with a
RecursionError traceback (review 2, finding 8). A name declared both as an action and as a trigger
is a warning (finding 10).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from oarlock.component.model import Component
from oarlock.component.validate import validate
from oarlock.errors import ComponentError
from oarlock.protocol.events import EventName
from oarlock.protocol.message import Message
from oarlock.runtime.executor import FunctionRunner, UnloadableFunction
from tests.support import run_cli

PROCESS = "def process(msg, cfg, snapshot, ctx):\n    return {'body': msg.body}\n"


def make(tmp_path: Path, descriptor: Any, files: dict[str, str]) -> Path:
    root = tmp_path / "comp"
    root.mkdir()
    text = descriptor if isinstance(descriptor, str) else json.dumps(descriptor)
    (root / "component.json").write_text(text)
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root


def one_action(**spec: Any) -> dict[str, Any]:
    return {"title": "T", "actions": {"a": {"title": "A", "main": "lib/a.py", "metadata": {"in": {}}, **spec}}}


IMPORT_FAILURES = {
    "sys.exit(0)": ("import sys\nsys.exit(0)\n", "lib/a.py called sys.exit(0) while being imported"),
    "sys.exit('bye')": ("import sys\nsys.exit('bye')\n", "lib/a.py called sys.exit('bye') while being imported"),
    "argparse": (
        "import argparse\nargparse.ArgumentParser().parse_args(['--nope'])\n",
        "lib/a.py called sys.exit(2) while being imported: 2 is argparse's exit code",
    ),
    "KeyboardInterrupt": ("raise KeyboardInterrupt\n", "lib/a.py raised KeyboardInterrupt while being imported"),
    "BaseException": (
        "class Abort(BaseException):\n    pass\nraise Abort('stop here')\n",
        "importing lib/a.py failed: Abort: stop here",
    ),
}


@pytest.mark.parametrize("module", IMPORT_FAILURES.values(), ids=list(IMPORT_FAILURES))
def test_a_module_that_exits_or_raises_a_base_exception_at_import_is_a_component_error_naming_the_file(
    tmp_path: Path, module: tuple[str, str]
) -> None:
    text, expected = module
    root = make(tmp_path, one_action(), {"lib/a.py": text + PROCESS})
    with pytest.raises(ComponentError) as raised:
        Component.load(root).load_module("a")
    assert str(raised.value).startswith(f"actions.a.main: {expected}")


@pytest.mark.parametrize("module", IMPORT_FAILURES.values(), ids=list(IMPORT_FAILURES))
def test_validate_reports_a_module_that_exits_or_raises_a_base_exception_at_import_as_an_error(
    tmp_path: Path, module: tuple[str, str]
) -> None:
    text, expected = module
    root = make(tmp_path, one_action(), {"lib/a.py": text + PROCESS})
    (problem,) = validate(root)
    assert problem.level == "error" and problem.path == "actions.a.main"
    assert problem.message.startswith(expected)


def test_oarlock_validate_exits_1_naming_a_sys_exit_0_at_import_where_it_exited_0_silently(tmp_path: Path) -> None:
    root = make(tmp_path, one_action(), {"lib/a.py": "import sys\nsys.exit(0)\n" + PROCESS})
    done = run_cli(["validate", str(root)])
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "actions.a.main: lib/a.py called sys.exit(0) while being imported" in done.stdout
    assert "1 problem found" in done.stdout


def test_oarlock_validate_exits_1_for_argparse_at_import_not_2_with_the_modules_usage_error(tmp_path: Path) -> None:
    root = make(tmp_path, one_action(), {"lib/a.py": IMPORT_FAILURES["argparse"][0] + PROCESS})
    done = run_cli(["validate", str(root)])
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "lib/a.py called sys.exit(2) while being imported" in done.stdout


@pytest.mark.parametrize(
    "module",
    ["import sys\nsys.exit(0)\n", "raise KeyboardInterrupt\n", "import no_such_module_anywhere\n"],
    ids=["sys.exit", "KeyboardInterrupt", "ImportError"],
)
def test_a_function_whose_module_exits_at_import_is_unloadable_at_run_time_like_one_with_an_import_error(
    tmp_path: Path, module: str
) -> None:
    # oarlock run turns the ComponentError of FunctionRunner into an UnloadableFunction: every message
    # gets an error event naming the problem and is rejected (it used to exit 0 with the input queued)
    root = make(tmp_path, one_action(), {"lib/a.py": module + PROCESS})
    with pytest.raises(ComponentError) as raised:
        FunctionRunner(Component.load(root), "a")
    result = UnloadableFunction(raised.value).call(Message(body={"x": 1}), {})
    (event,) = result.events
    assert result.errored and event.name == EventName.ERROR
    assert event.payload["name"] == "ComponentError"
    assert event.payload["message"].startswith("actions.a.main: ")


def test_a_module_that_failed_at_import_is_not_left_in_sys_modules(tmp_path: Path) -> None:
    root = make(tmp_path, one_action(), {"lib/a.py": "import sys\nsys.exit(3)\n" + PROCESS})
    before = set(sys.modules)
    with pytest.raises(ComponentError):
        Component.load(root).load_module("a")
    assert not [name for name in set(sys.modules) - before if name.startswith("oarlock_component_")]


#: enough of a step's environment for oarlock run to get to loading the component (before any broker)
RUN_ENV = {
    **{f"ELASTICIO_{name}": "x" for name in ("FLOW_ID", "EXEC_ID", "STEP_ID", "CONTAINER_ID", "WORKSPACE_ID")},
    **{f"ELASTICIO_{name}": "x" for name in ("USER_ID", "COMP_ID", "API_USERNAME", "API_KEY")},
    **{f"ELASTICIO_{name}_ROUTING_KEY": "x" for name in ("DATA", "ERROR", "REBOUND", "SNAPSHOT")},
    "ELASTICIO_FUNCTION": "a",
    "ELASTICIO_API_URI": "http://127.0.0.1:9",
    "ELASTICIO_AMQP_URI": "amqp://guest:guest@127.0.0.1:9/",
    "ELASTICIO_LISTEN_MESSAGES_ON": "in",
    "ELASTICIO_PUBLISH_MESSAGES_TO": "out",
    "ELASTICIO_MESSAGE_CRYPTO_IV": "0123456789abcdef",
    "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": "secret",
    "ELASTICIO_CFG": "{}",
}


def deep_array(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("levels", [500, 100_000], ids=["past the limit", "past the parser's recursion"])
def test_a_component_json_nested_too_deep_is_a_one_line_error_naming_the_file(tmp_path: Path, levels: int) -> None:
    text = json.dumps({**one_action(), "x": None}).replace("null", deep_array(levels))
    root = make(tmp_path, text, {"lib/a.py": PROCESS})
    (problem,) = validate(root)
    assert problem.path == "component.json"
    assert problem.message == f"{root / 'component.json'} is nested deeper than 200 levels"
    with pytest.raises(ComponentError, match=r"component\.json is nested deeper than 200 levels"):
        Component.load(root)


def test_oarlock_validate_and_run_report_a_deep_component_json_without_a_recursion_error(tmp_path: Path) -> None:
    text = json.dumps({**one_action(), "x": None}).replace("null", deep_array(100_000))
    root = make(tmp_path, text, {"lib/a.py": PROCESS})
    done = run_cli(["validate", str(root)])
    assert done.returncode == 1 and "nested deeper than 200 levels" in done.stdout
    assert "RecursionError" not in done.stdout + done.stderr and "Traceback" not in done.stderr
    # oarlock run loads component.json before anything else: a start-up error (exit 2), one line
    started = run_cli(["run", "--component", str(root)], env=RUN_ENV, timeout=60)
    assert "Traceback" not in started.stderr and "RecursionError" not in started.stderr, started.stderr
    assert started.returncode == 2 and "nested deeper than 200 levels" in started.stderr


@pytest.mark.parametrize("levels", [500, 100_000], ids=["past the limit", "past the parser's recursion"])
def test_a_metadata_file_nested_too_deep_is_an_error_naming_the_file(tmp_path: Path, levels: int) -> None:
    root = make(
        tmp_path,
        one_action(metadata={"in": "./schemas/in.json"}),
        {"lib/a.py": PROCESS, "schemas/in.json": '{"x": ' + deep_array(levels) + "}"},
    )
    (problem,) = validate(root)
    assert str(problem) == "actions.a.metadata.in: schemas/in.json is nested deeper than 200 levels"
    with pytest.raises(ComponentError) as raised:
        Component.load(root)
    assert str(raised.value) == "actions.a.metadata.in: schemas/in.json is nested deeper than 200 levels"


def test_a_metadata_file_that_is_not_json_names_the_file_line_and_column(tmp_path: Path) -> None:
    root = make(
        tmp_path,
        one_action(metadata={"in": "./schemas/in.json"}),
        {"lib/a.py": PROCESS, "schemas/in.json": '{"type":\n  }'},
    )
    (problem,) = validate(root)
    assert problem.message.startswith("schemas/in.json is not valid JSON: Expecting value at line 2 column 3")
    with pytest.raises(ComponentError, match=r"actions\.a\.metadata\.in: schemas/in\.json is not valid JSON"):
        Component.load(root)


def two_named_a() -> dict[str, Any]:
    fn = {"title": "A", "main": "lib/a.py", "metadata": {"in": {}, "out": {}}}
    return {"title": "T", "actions": {"a": fn}, "triggers": {"a": {**fn, "title": "B", "main": "lib/b.py"}}}


def test_a_name_declared_both_as_an_action_and_as_a_trigger_is_a_warning_saying_the_trigger_wins(
    tmp_path: Path,
) -> None:
    root = make(tmp_path, two_named_a(), {"lib/a.py": PROCESS, "lib/b.py": PROCESS})
    (problem,) = validate(root)
    assert problem.level == "warning" and problem.path == "actions.a"
    assert "a is also declared as a trigger (triggers.a)" in problem.message
    assert "runs the trigger under this name and never this action" in problem.message
    assert Component.load(root).function("a").kind == "trigger"  # what the warning describes
    done = run_cli(["validate", str(root)])
    assert done.returncode == 0 and "warning: actions.a: a is also declared as a trigger" in done.stdout
    assert (run_cli(["validate", "--lenient", str(root)]).returncode, validate(root, lenient=True)) == (0, [problem])
    # different names: no warning
    descriptor = two_named_a()
    descriptor["triggers"] = {"b": descriptor["triggers"]["a"]}
    (root / "component.json").write_text(json.dumps(descriptor))
    assert validate(root) == []
