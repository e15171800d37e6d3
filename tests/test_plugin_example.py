"""The plug-in example (``examples/my_planner``): install it aside and run it from the CLI.

The package is copied to a temporary folder and installed there with ``pip --target``, so
neither the project's virtual environment nor the repository is touched (setuptools builds
in the source tree, which is the copy).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from netstorm import Plan, check_plan, load_topology

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_planner"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder holding the installed plug-in (its package and its ``.dist-info``)."""
    root = tmp_path_factory.mktemp("plugin")
    source, target = root / "src", root / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "--quiet", "--target", str(target),
         str(source)],
        capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"pip could not build the example offline: {proc.stderr.strip()[-500:]}")
    yield target
    shutil.rmtree(root, ignore_errors=True)


def _env(path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH")]))
    return env


def test_example_is_found_by_entry_point_and_plans_from_the_cli(plugin_path: Path) -> None:
    assert list(plugin_path.glob("my_planner-*.dist-info"))
    proc = subprocess.run(
        [sys.executable, "-m", "netstorm", "plan", "--topology", "netstorm9", "--planner",
         "widest-star", "--json"],
        capture_output=True, text=True, env=_env(plugin_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["planner"] == "widest-star"
    assert len(doc["shards"]) == 1 and doc["shards"][0]["fraction"] == 1.0
    assert doc["bound_time_s"] <= doc["predicted_time_s"]
    check_plan(Plan.from_dict(doc), load_topology("netstorm9"))


def test_example_passes_the_conformance_suite(plugin_path: Path) -> None:
    code = ("from netstorm import planner_names\n"
            "from netstorm.testing import check_planner\n"
            "assert 'widest-star' in planner_names(), planner_names()\n"
            "check_planner('widest-star')\n"
            "print('conforms')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(plugin_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "conforms"

