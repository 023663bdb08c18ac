"""The layout's rules hold: imports point down, no circle, pika only in amqp/, no module over 500 lines."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tests.support import REPO


def checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layers", REPO / "tools" / "check_layers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_layers"] = module
    spec.loader.exec_module(module)
    return module


def test_the_package_has_no_upward_import_no_circle_and_pika_only_behind_the_amqp_door() -> None:
    assert checker().check() == []


def write(root: Path, name: str, text: str) -> None:
    path = root / (name.replace(".", "/") + ".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in path.relative_to(root).parents:
        if parent != Path("."):
            (root / parent / "__init__.py").touch()
    path.write_text(text)


def test_the_checker_finds_an_upward_import_a_circle_and_pika_outside_amqp(tmp_path: Path) -> None:
    write(tmp_path, "oarlock.errors", "")
    write(tmp_path, "oarlock.protocol.a", "from oarlock.runtime import b\n")
    write(tmp_path, "oarlock.runtime.b", "def f():\n    from oarlock.runtime import c\n")
    write(tmp_path, "oarlock.runtime.c", "from oarlock.runtime.b import f\nimport pika\n")
    write(tmp_path, "oarlock.protocol.d", "import requests\n")
    problems = checker().check(tmp_path)
    assert any("oarlock.protocol.a imports oarlock.runtime.b, a layer above it" in p for p in problems)
    assert any(p.startswith("import circle: oarlock.runtime.b -> oarlock.runtime.c") for p in problems)
    assert any("c.py:2: imports pika outside oarlock.amqp" in p for p in problems)
    assert any("d.py:1: oarlock.protocol does no I/O but imports requests" in p for p in problems)


def test_the_checker_finds_a_module_over_the_size_limit(tmp_path: Path) -> None:
    write(tmp_path, "oarlock.errors", "x = 1\n" * 501)
    (problem,) = checker().check(tmp_path)
    assert "501 lines, over the 500" in problem
