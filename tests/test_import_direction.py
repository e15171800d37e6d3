"""The direction of imports (DESIGN 1), read from the source without importing anything.

``netstorm.cli`` may import everything; ``netstorm.sim`` and ``netstorm.runtime`` import the
core; the core imports ``netstorm.kernels`` and never the simulator, the runtime, the CLI or
(at import time) torch; the kernels import nothing else of netstorm. Every ``import`` and
``from ... import`` of every module file counts, at module level or inside a function
(relative imports resolved, ``importlib.import_module("...")`` with a literal name too);
imports under ``if TYPE_CHECKING:`` count for the direction but not as run-time imports.

The checker takes a mapping of file paths to source text, so the tests at the bottom run it
on small made-up packages and show that it reports what it should.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Source folders and the package each is installed as (setup.cfg's package_dir).
PACKAGES = {"netstorm": "netstorm", "sim": "netstorm.sim", "runtime": "netstorm.runtime",
            "kernels": "netstorm.kernels"}
#: The edge: the command line, and ``python -m netstorm``, which only runs it.
EDGE = ("netstorm.cli", "netstorm.__main__")
#: What the core (every other ``netstorm`` module) must never import.
NOT_FROM_CORE = ("netstorm.sim", "netstorm.runtime", "netstorm.cli")
#: Heavy optional dependencies the core imports lazily (inside the functions that use them).
LAZY_IN_CORE = ("torch",)


@dataclass(frozen=True)
class Import:
    """One imported name, as seen in a module's source."""

    path: str  # the file, relative to the repository root
    module: str  # the importing module's installed name
    target: str  # the dotted name imported (``netstorm.sim.simulate``)
    line: int
    where: str  # "top" (runs at import), "function" (runs when called), "type-checking"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.module} imports {self.target} ({self.where})"


def within(name: str, prefix: str) -> bool:
    """True when dotted ``name`` is ``prefix`` or inside it (``a.b.c`` is within ``a.b``)."""
    return name == prefix or name.startswith(prefix + ".")


def module_name(path: str) -> tuple[str, bool] | None:
    """The installed name of the module file at ``path`` and whether it is a package."""
    parts = Path(path).with_suffix("").parts
    if not parts or parts[0] not in PACKAGES or Path(path).suffix != ".py":
        return None
    package = parts[-1] == "__init__"
    dotted = ".".join((PACKAGES[parts[0]], *parts[1:-1 if package else None]))
    return dotted, package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    def __init__(self, path: str, module: str, package: bool) -> None:
        self.path, self.module = path, module
        # Relative imports count from the package: the module itself for an __init__.
        self.base = module if package else module.rpartition(".")[0]
        self.where = "top"
        self.found: list[Import] = []
        self.problems: list[str] = []

    def _add(self, target: str, node: ast.AST) -> None:
        self.found.append(Import(self.path, self.module, target, getattr(node, "lineno", 0),
                                 self.where))

    def _nested(self, node: ast.AST, where: str) -> None:
        outer, self.where = self.where, (self.where if self.where != "top" else where)
        self.generic_visit(node)
        self.where = outer

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._nested(node, "function")

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._nested(node, "function")

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._nested(node, "function")

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        outer, self.where = self.where, "type-checking"
        for child in node.body:
            self.visit(child)
        self.where = outer
        for child in node.orelse:
            self.visit(child)

    def _relative(self, level: int, name: str | None, node: ast.AST) -> str | None:
        parts = self.base.split(".") if self.base else []
        if level - 1 > len(parts) - 1:  # above the top-level package
            self.problems.append(f"{self.path}:{getattr(node, 'lineno', 0)}: relative "
                                 f"import beyond the top-level package in {self.module}")
            return None
        kept = parts[:len(parts) - (level - 1)]
        return ".".join([*kept, *([name] if name else [])])

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = (node.module or "") if node.level == 0 else self._relative(
            node.level, node.module, node)
        if base is None:
            return
        for alias in node.names:
            self._add(base if alias.name == "*" else f"{base}.{alias.name}", node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        first = node.args[0] if node.args else None
        if called in ("import_module", "__import__") and isinstance(first, ast.Constant) \
                and isinstance(first.value, str):
            name = first.value
            if not name.startswith("."):
                self._add(name, node)
            else:
                level = len(name) - len(name.lstrip("."))
                target = self._relative(level, name.lstrip(".") or None, node)
                if target is not None:
                    self._add(target, node)
        self.generic_visit(node)


def collect(files: Mapping[str, str]) -> tuple[dict[str, str], list[Import], list[str]]:
    """Parse ``files`` (path -> source); return (module -> path, imports, problems)."""
    modules: dict[str, str] = {}
    imports: list[Import] = []
    problems: list[str] = []
    for path, source in sorted(files.items()):
        named = module_name(path)
        if named is None:
            continue
        module, package = named
        modules[module] = path
        collector = _Collector(path, module, package)
        collector.visit(ast.parse(source, filename=path))
        imports += collector.found
        problems += collector.problems
    return modules, imports, problems


def is_core(module: str) -> bool:
    """The planning core: every ``netstorm`` module outside sim, runtime, kernels, the edge."""
    return within(module, "netstorm") and not any(
        within(module, p) for p in (*EDGE, "netstorm.sim", "netstorm.runtime",
                                    "netstorm.kernels"))


def direction_violations(files: Mapping[str, str]) -> list[str]:
    """Every import against the direction of DESIGN 1, one line each (rules a, b, c)."""
    _, imports, problems = collect(files)
    out = list(problems)
    for imp in imports:
        if is_core(imp.module):
            for banned in NOT_FROM_CORE:
                if within(imp.target, banned):
                    out.append(f"{imp}: the core must not import {banned}")
            for lazy in LAZY_IN_CORE:
                if imp.where == "top" and within(imp.target, lazy):
                    out.append(f"{imp}: the core imports {lazy} only inside functions")
        if any(within(imp.module, p) for p in ("netstorm.sim", "netstorm.runtime")) \
                and within(imp.target, "netstorm.cli"):
            out.append(f"{imp}: the simulator and the runtime must not import netstorm.cli")
        if within(imp.module, "netstorm.kernels") and within(imp.target, "netstorm") \
                and not within(imp.target, "netstorm.kernels"):
            out.append(f"{imp}: the kernels import nothing of netstorm but themselves")
    return out


def _resolve(target: str, modules: Mapping[str, str]) -> str | None:
    """The module a dotted import name lands in: its longest prefix that is a module."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in modules:
            return name
    return None


def import_cycles(files: Mapping[str, str],
                  among: Callable[[str], bool] = lambda module: True) -> list[str]:
    """Cycles among the modules ``among`` accepts (default: every module of every package),
    run-time imports only (module level or in a function; ``TYPE_CHECKING`` blocks do not
    count). Importing a module runs its package's ``__init__`` first; that implicit edge is
    not counted (every package that re-exports a submodule would be a cycle).

    One line per strongly connected component of the import graph, showing one cycle
    through it with the file and line of every import on the way.
    """
    modules, imports, _ = collect(files)
    edges: dict[str, dict[str, Import]] = {m: {} for m in modules if among(m)}
    for imp in imports:
        if imp.where == "type-checking" or imp.module not in edges:
            continue
        dst = _resolve(imp.target, modules)
        if dst is not None and dst != imp.module and dst in edges:
            edges[imp.module].setdefault(dst, imp)
    out = []
    for component in _components(edges):
        cycle = _cycle_through(sorted(component)[0], component, edges)
        steps = " -> ".join(f"{edges[a][b].target} ({edges[a][b].path}:{edges[a][b].line})"
                            for a, b in itertools.pairwise(cycle))
        out.append(f"import cycle {' -> '.join(cycle)}: {cycle[0]} imports {steps}")
    return out


def _components(edges: Mapping[str, Mapping[str, Import]]) -> Iterator[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    yield component


def _cycle_through(start: str, component: set[str],
                   edges: Mapping[str, Mapping[str, Import]]) -> list[str]:
    """A shortest cycle from ``start`` back to itself inside ``component`` (BFS)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges[node]):
                if child not in component:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in parent:
                    parent[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is in a component but on no cycle")  # pragma: no cover


def repository_files() -> dict[str, str]:
    """Every module file of the four installed folders, path -> source."""
    files = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" not in path.parts:
                files[path.relative_to(ROOT).as_posix()] = path.read_text()
    return files


# --- the repository ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    found = repository_files()
    assert "netstorm/registry.py" in found and "sim/__init__.py" in found
    assert any(p.startswith("netstorm/cli/") for p in found), "the CLI lives in netstorm/cli/"
    return found


def test_the_core_imports_neither_sim_runtime_cli_nor_torch_at_import(
        files: dict[str, str]) -> None:
    problems = direction_violations(files)
    assert not problems, "imports against DESIGN 1's direction:\n" + "\n".join(problems)


def test_the_core_has_no_import_cycles(files: dict[str, str]) -> None:
    cycles = import_cycles(files, among=is_core)
    assert not cycles, "\n".join(cycles)


def test_no_package_has_import_cycles(files: dict[str, str]) -> None:
    cycles = import_cycles(files)
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_every_layer(files: dict[str, str]) -> None:
    modules, imports, _ = collect(files)
    assert {"netstorm.cli.main", "netstorm.sim", "netstorm.kernels", "netstorm.runtime",
            "netstorm.registry"} <= set(modules)
    assert any(i.module.startswith("netstorm.cli") and within(i.target, "netstorm.sim")
               for i in imports), "the CLI imports the simulator: the checker should see it"
    assert any(i.where == "function" for i in imports)


# --- the checker on made-up packages: it reports what it should --------------------------

CLEAN = {
    "netstorm/__init__.py": "from .registry import plan\n",
    "netstorm/registry.py": "from .view import View\n\ndef plan():\n    import torch\n",
    "netstorm/view.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                        "    import torch\n    from .registry import plan\n",
    "netstorm/planners/__init__.py": "from ..view import View\n",
    "netstorm/cli/__init__.py": "from .main import main\n",
    "netstorm/cli/main.py": "from netstorm.sim import simulate\nfrom ..registry import plan\n",
    "netstorm/__main__.py": "from .cli import main\n",
    "sim/__init__.py": "from netstorm.registry import plan\nfrom ..view import View\n",
    "runtime/__init__.py": "import torch\nfrom netstorm.kernels import reduce\n",
    "kernels/__init__.py": "from . import api\nfrom .api import reduce\n",
    "kernels/api.py": "import numba\n",
    "notebooks/x.py": "from netstorm.sim import simulate\n",  # not a module file
}


def test_a_clean_made_up_package_passes() -> None:
    assert direction_violations(CLEAN) == []
    assert import_cycles(CLEAN) == []


@pytest.mark.parametrize(("path", "source", "banned"), [
    ("netstorm/registry.py", "from netstorm.sim import simulate\n", "netstorm.sim"),
    ("netstorm/registry.py", "from .sim import simulate\n", "netstorm.sim"),
    ("netstorm/registry.py", "from . import runtime\n", "netstorm.runtime"),
    ("netstorm/registry.py", "def plan():\n    import netstorm.runtime.site as s\n",
     "netstorm.runtime"),
    ("netstorm/planners/mine.py", "def plan():\n    from ..sim import x\n", "netstorm.sim"),
    ("netstorm/planners/mine.py", "import importlib\n"
     "def plan():\n    return importlib.import_module('netstorm.cli')\n", "netstorm.cli"),
    ("netstorm/view.py", "class View:\n    from .cli import main\n", "netstorm.cli"),
])
def test_the_checker_reports_the_core_importing_the_layers_above(
        path: str, source: str, banned: str) -> None:
    problems = direction_violations({**CLEAN, path: source})
    assert len(problems) == 1, problems
    assert problems[0].startswith(path) and f"must not import {banned}" in problems[0]


def test_the_checker_reports_torch_at_the_cores_module_level_only() -> None:
    top = direction_violations({**CLEAN, "netstorm/view.py": "import torch.distributed\n"})
    assert len(top) == 1 and "netstorm/view.py:1" in top[0] and "torch" in top[0]
    in_class = direction_violations({**CLEAN, "netstorm/view.py": "class V:\n    import torch\n"})
    assert len(in_class) == 1
    lazy = {**CLEAN, "netstorm/view.py": "def f():\n    import torch\n"}
    assert direction_violations(lazy) == []


@pytest.mark.parametrize(("path", "source", "words"), [
    ("sim/driver.py", "def run():\n    from netstorm.cli import main\n", "simulator"),
    ("runtime/site.py", "from ..cli.main import main\n", "runtime"),
    ("kernels/api.py", "from netstorm.view import View\n", "kernels"),
    ("kernels/api.py", "from ..errors import NetstormError\n", "kernels"),
    ("kernels/api.py", "import netstorm\n", "kernels"),
    ("netstorm/registry.py", "from ...sim import x\n", "beyond the top-level package"),
])
def test_the_checker_reports_the_other_layers(path: str, source: str, words: str) -> None:
    problems = direction_violations({**CLEAN, path: source})
    assert len(problems) == 1 and problems[0].startswith(path) and words in problems[0], \
        problems


def test_the_checker_reports_a_cycle_through_a_function_level_import() -> None:
    files = {**CLEAN,
             "netstorm/a.py": "from . import b\n",
             "netstorm/b.py": "def f():\n    from .c import thing\n",
             "netstorm/c.py": "import netstorm.a\n",
             "netstorm/d.py": "from .a import x\n"}  # imports the cycle, is not on it
    cycles = import_cycles(files)
    assert len(cycles) == 1, cycles
    assert cycles[0].startswith("import cycle netstorm.a -> netstorm.b -> netstorm.c -> "
                                "netstorm.a:")
    assert "netstorm/b.py:2" in cycles[0] and "netstorm/c.py:1" in cycles[0]


def test_the_checker_reports_a_lazy_cycle_in_any_package_but_not_in_the_core_alone() -> None:
    files = {**CLEAN,
             "runtime/site.py": "def init():\n    from .elastic import ElasticSite\n",
             "runtime/elastic.py": "from .site import Site\n"}
    cycles = import_cycles(files)
    assert len(cycles) == 1 and cycles[0].startswith(
        "import cycle netstorm.runtime.elastic -> netstorm.runtime.site -> "
        "netstorm.runtime.elastic:"), cycles
    assert import_cycles(files, among=is_core) == []
    via_package = {**CLEAN, "runtime/__init__.py": "from .site import Site\n",
                   "runtime/site.py": "class Site:\n    pass\n",
                   "runtime/demo.py": "from . import init\n",
                   "runtime/start.py": "def go():\n    from .demo import main\n"}
    assert import_cycles(via_package) == []  # the package's own re-exports are no cycle
    back = {**via_package, "runtime/site.py": "def f():\n    from netstorm.runtime import x\n"}
    assert [c.split(":")[0] for c in import_cycles(back)] == [
        "import cycle netstorm.runtime -> netstorm.runtime.site -> netstorm.runtime"]


def test_type_only_imports_and_the_edge_make_no_cycle() -> None:
    files = {**CLEAN, "netstorm/a.py": "from .b import x\n",
             "netstorm/b.py": "from typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from .a import y\n"}
    assert import_cycles(files) == []
    two = {**files, "netstorm/b.py": "from .a import y\n"}
    assert [c.split(":")[0] for c in import_cycles(two)] == [
        "import cycle netstorm.a -> netstorm.b -> netstorm.a"]
