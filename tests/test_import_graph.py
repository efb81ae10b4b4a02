"""No import cycles: every module of ``gpu_workers`` and ``experiments`` imports on its own, and none imports a
module that imports it back.

Three checks per package, because they catch different things:

* **module level** — the graph of the imports that run when a module is imported, read from the source with
  :mod:`ast` (not those inside functions, not those under ``if TYPE_CHECKING:``). ``from pkg import name`` is
  an edge to ``pkg.name`` when that is a module, else to ``pkg``; importing ``a.b.c`` also runs ``a`` and
  ``a.b``, so those are edges too, except the importer's own parent packages (already running when it is
  imported). A cycle here is one Python trips over, depending on which module is imported first.
* **design** — the same graph with the imports inside functions added (still not ``TYPE_CHECKING``). A lazy
  import is there to keep a heavy library (torch) off a light path, not to hide that two modules need each
  other: a cycle here is two ideas grown together.
* **fresh import** — one interpreter per package imports each module with none of the package's modules loaded
  before it (they are dropped from ``sys.modules`` after every import; third-party ones stay, so torch is read
  once). A module that only imports after another one fails here.

A cycle is printed as the chain of modules that closes it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gpu_workers", "experiments")
SKIPPED_DIRS = {"migrations", "__pycache__"}

def module_files(package: str) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (packages by their ``__init__``), migrations left out."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if SKIPPED_DIRS & set(parts):
            continue
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """The import statements of a module: those that run when it is imported, or (``lazy``) any that may run."""

    def __init__(self, lazy: bool) -> None:
        self.lazy = lazy
        self.found: list[ast.Import | ast.ImportFrom] = []

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        self.found.append(node)

    visit_ImportFrom = visit_Import

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        if self.lazy:
            self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        for statement in node.orelse:
            self.visit(statement)


def imports_in(source: str, lazy: bool) -> list[ast.Import | ast.ImportFrom]:
    reader = _Imports(lazy)
    reader.visit(ast.parse(source))
    return reader.found


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = (module if is_package else module.rpartition(".")[0]).split(".")
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(package: str, *, lazy: bool = False) -> dict[str, set[str]]:
    """Module → the modules of ``package`` its imports run (module-level ones; with ``lazy``, all)."""
    files = module_files(package)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        named: set[str] = set()
        for node in imports_in(path.read_text(encoding="utf-8"), lazy):
            if isinstance(node, ast.Import):
                named.update(alias.name for alias in node.names)
                continue
            source = _resolve_from(node, module, path.name == "__init__.py")
            submodules = {f"{source}.{alias.name}" for alias in node.names} & files.keys()
            named.update(submodules)
            if len(submodules) < len(node.names):
                named.add(source)
        edges = {target for target in named if target in files}
        edges |= {parent for target in named for parent in _parents(target) if parent in files} - set(
            _parents(module))
        graph[module] = edges - {module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (first module repeated at the end) per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # the graphs are a few hundred modules: recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set(stack[stack.index(node):])
            del stack[stack.index(node):]
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """The shortest path from the group's first module back to itself, through the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def _assert_no_cycle(graph: dict[str, set[str]]) -> None:
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(cycle) for cycle in cycles)


FRESH_IMPORTS = """
import importlib, sys, traceback, warnings
package, modules = sys.argv[1], sys.argv[2:]
if package == "experiments":
    import django
    django.setup()
warnings.simplefilter("ignore")  # a models module imported again warns that its models are registered again
loaded_before = set(sys.modules)
failed = 0
for name in modules:
    try:
        importlib.import_module(name)
    except BaseException:
        failed += 1
        print(f"--- {name} does not import on its own:\\n{traceback.format_exc()}")
    for key in [k for k in sys.modules if k not in loaded_before and k.split(".")[0] in ("gpu_workers", "experiments")]:
        del sys.modules[key]
sys.exit(1 if failed else 0)
"""


def test_the_reader_sees_lazy_imports_only_when_asked_and_never_type_checking_ones() -> None:
    source = (
        "import a\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import b\nelse:\n    import c\n"
        "def f():\n    import d\nclass K:\n    import e\n"
    )
    names = lambda lazy: {alias.name for node in imports_in(source, lazy) for alias in node.names}  # noqa: E731
    assert names(False) == {"a", "TYPE_CHECKING", "c", "e"}
    assert names(True) == {"a", "TYPE_CHECKING", "c", "d", "e"}


def test_the_graph_reader_finds_a_cycle_and_prints_it() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": set()}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_counts_the_parent_packages_an_import_runs() -> None:
    graph = import_graph("gpu_workers")
    # methods.frequencies imports the package it lives in: an edge (its __init__ must not import it back) …
    assert "gpu_workers.methods" in graph["gpu_workers.methods.frequencies"]
    # … while a module's own parents are not edges of a plain submodule import.
    assert graph["gpu_workers.methods.pi"] <= {"gpu_workers.methods.base"}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_level_import_cycle(package: str) -> None:
    _assert_no_cycle(import_graph(package))


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_imports_one_that_imports_it_back(package: str) -> None:
    _assert_no_cycle(import_graph(package, lazy=True))


@pytest.mark.slow
@pytest.mark.parametrize("package", PACKAGES)
def test_each_module_imports_on_its_own(package: str) -> None:
    modules = [m for m in module_files(package) if not m.endswith("__main__")]  # __main__ runs the CLI
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "webapp.settings")}
    done = subprocess.run([sys.executable, "-c", FRESH_IMPORTS, package, *modules], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
