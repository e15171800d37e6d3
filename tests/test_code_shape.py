"""The shape of the code, read from the source: no class longer than a reader can hold in
one sitting (350 lines), no function longer than 120 lines (compiled numba kernels aside:
one kernel is one compiled unit), and no benchmark harness inside the library packages
(DESIGN 1: harnesses live in ``netstorm/cli``). The checker runs on made-up sources too, so
it is shown to report what it should."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.test_import_direction import repository_files

MAX_CLASS = 350
MAX_FUNCTION = 120
#: Folders that are library, not edge: no harness module in them.
LIBRARY = ("sim/", "runtime/", "kernels/")


def _compiled(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Decorated with a numba compiler (``njit``, ``jit``, ``cuda.jit``, ...)."""
    return any("jit" in ast.unparse(d) for d in node.decorator_list)


def too_long(files: Mapping[str, str]) -> list[str]:
    """One line per class over :data:`MAX_CLASS` lines and per function (not compiled)
    over :data:`MAX_FUNCTION` lines, docstrings included."""
    out = []
    for path, source in sorted(files.items()):
        for node in ast.walk(ast.parse(source, filename=path)):
            if isinstance(node, ast.ClassDef):
                limit = MAX_CLASS
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if _compiled(node):
                    continue
                limit = MAX_FUNCTION
            else:
                continue
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > limit:
                out.append(f"{path}:{node.lineno}: {type(node).__name__} {node.name} is "
                           f"{lines} lines (at most {limit})")
    return out


def harnesses(files: Mapping[str, str]) -> list[str]:
    """Library modules that are benchmark harnesses (named ``bench*``)."""
    return [path for path in sorted(files) if path.startswith(LIBRARY)
            and Path(path).name.startswith("bench")]


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return repository_files()


def test_no_class_or_function_is_too_long(files: dict[str, str]) -> None:
    problems = too_long(files)
    assert not problems, "\n".join(problems)


def test_no_benchmark_harness_in_the_library(files: dict[str, str]) -> None:
    assert harnesses(files) == []
    assert any(p.startswith("netstorm/cli/bench/") for p in files)


def test_the_checker_reports_long_code_but_not_kernels() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION))
    long_function = f"def f():\n{body}\n"
    kernel = f"import numba\n@numba.njit(cache=True)\ndef k():\n{body}\n"
    methods = "\n".join(f"    def m{i}(self):\n        return {i}\n" for i in range(120))
    long_class = f"class C:\n{methods}"
    found = too_long({"netstorm/a.py": long_function, "netstorm/b.py": kernel,
                      "runtime/c.py": long_class, "runtime/d.py": "def short():\n    pass\n"})
    assert [line.split(":")[0] for line in found] == ["netstorm/a.py", "runtime/c.py"]
    assert "FunctionDef f is 121 lines" in found[0] and "ClassDef C is 360 lines" in found[1]


def test_the_checker_finds_harnesses_only_in_the_library() -> None:
    found = harnesses({"sim/bench.py": "", "runtime/bench_worker.py": "",
                       "netstorm/cli/bench/sim.py": "", "runtime/site.py": ""})
    assert found == ["runtime/bench_worker.py", "sim/bench.py"]
