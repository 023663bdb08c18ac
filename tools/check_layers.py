"""The layout's rules, checked: imports point down, no circle, pika only in ``oarlock.amqp``, no I/O in
``oarlock.protocol``, small modules.

Every ``import`` of an oarlock module anywhere in a module's source counts (at the top, inside a
function, under ``TYPE_CHECKING``): a lazy import is still a dependency. Packages are ranked
(``LAYERS``, lowest first); a module may import modules of its own rank or lower, never higher,
and the graph of modules must have no cycle. Run by CI and by the unit tier::

    python tools/check_layers.py            # exit 1 and one line per violation
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "lib"
MAX_LINES = 500

#: lowest first; a module's layer is the longest prefix listed here
LAYERS: list[tuple[str, ...]] = [
    (
        "oarlock.errors",
        "oarlock.jsontypes",
        "oarlock.jsoncopy",
        "oarlock.jsonlimits",
        "oarlock.awaitables",
        "oarlock.redact",
        "oarlock.logs",
        "oarlock.serving",
    ),
    ("oarlock.metrics",),  # prometheus_client only: the hooks the layers above call, the /metrics server
    ("oarlock.amqp",),  # the door to pika: neutral Incoming/Outgoing types and the transport
    ("oarlock.protocol",),  # sailor's contract, no I/O
    ("oarlock.component",),
    ("oarlock.credentials",),
    ("oarlock.keys",),
    ("oarlock.devprovider",),
    ("oarlock.runtime",),
    ("oarlock.cli", "oarlock.testing", "oarlock.pytest_plugin"),
    ("oarlock", "oarlock.__main__"),  # the package facade
]
PIKA_HOME = "oarlock.amqp"
#: packages that must do no I/O: they may not import these
NO_IO = {"oarlock.protocol": {"requests", "socket", "http", "urllib", "sqlite3", "psycopg", "pika", "subprocess"}}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    if rank < 0:
        raise SystemExit(f"check_layers: {module} is in no layer: add it to LAYERS")
    return rank


def imports_of(path: Path, module: str, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file; ``from pkg import mod`` resolves to pkg.mod."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if candidate in known else base))
    return found


def check(root: Path = ROOT) -> list[str]:
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    problems: list[str] = []
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            problems.append(f"{path}: {lines} lines, over the {MAX_LINES} a module may have")
        for line, imported in imports_of(path, name, known):
            top = imported.split(".")[0]
            if top == "pika" and not (name == PIKA_HOME or name.startswith(PIKA_HOME + ".")):
                problems.append(f"{path}:{line}: imports pika outside {PIKA_HOME}")
            for package, banned in NO_IO.items():
                if (name == package or name.startswith(package + ".")) and top in banned:
                    problems.append(f"{path}:{line}: {package} does no I/O but imports {top}")
            if top != "oarlock" or imported == name:
                continue
            target = imported
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target not in known:
                problems.append(f"{path}:{line}: imports {imported}, which does not exist")
                continue
            if target == "oarlock" and name != "oarlock.__main__":
                problems.append(f"{path}:{line}: imports the package facade 'oarlock'; import the module itself")
                continue
            if layer_of(target) > layer_of(name):
                problems.append(f"{path}:{line}: {name} imports {target}, a layer above it")
            graph[name].add(target)
    problems.extend(f"import circle: {' -> '.join(cycle)}" for cycle in cycles(graph))
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append([*sorted(component), min(component)])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main() -> int:
    problems = check()
    for problem in problems:
        print(problem)
    if not problems:
        print(
            f"check_layers: {len(list(ROOT.rglob('*.py')))} modules, imports point down, no circle, pika only in amqp/"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
