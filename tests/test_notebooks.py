"""The research notebooks (``notebooks/``) run headless at their small size, write the figures
they promise and nothing else, and each ``.ipynb`` carries exactly its ``.py``'s cells.

Each notebook is a jupytext percent-format ``.py`` paired with an ``.ipynb`` committed without
outputs. The test executes the ``.py`` through nbclient in a kernel started from this very
interpreter (``sys.executable -m ipykernel_launcher``), so it needs no installed kernel spec,
with ``NETSTORM_NOTEBOOK_FIGURES`` pointing at a temporary folder: the committed full-size
figures in ``notebooks/figures/`` are never overwritten.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

nbclient = pytest.importorskip("nbclient")  # the optional "notebooks" extra
jupytext = pytest.importorskip("jupytext")
pytest.importorskip("ipykernel")
pytest.importorskip("pandas")
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

#: Every notebook and the figures it must write (into ``$NETSTORM_NOTEBOOK_FIGURES``).
FIGURES: dict[str, tuple[str, ...]] = {
    "01_reproduce_netstorm": ("01_accuracy_vs_time.png", "01_speedup.png",
                              "01_iterations_redraws.png"),
    "02_planners_vs_bound": ("02_ratio_to_bound.png", "02_planning_time.png"),
    "03_what_matters": ("03_site_caps.png", "03_latency.png", "03_chunk.png",
                        "03_roots.png", "03_estimate_error.png", "03_dynamics_period.png",
                        "03_multipath_relays.png"),
    "04_write_a_planner": ("04_custom_vs_builtin.png",),
}

#: Seconds a notebook may take at its small size (about 15-30 s alone on 2 cores; the
#: margin is for a machine busy with the rest of the suite).
CELL_TIMEOUT_S = 240


class _ThisInterpreter(KernelSpecManager):
    """Every kernel name resolves to an IPython kernel on ``sys.executable``: the test does
    not depend on which kernel specs (if any) are installed, nor on ``python`` on PATH."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f",
                                "{connection_file}"],
                          display_name=f"Python ({sys.executable})", language="python",
                          resource_dir=str(NOTEBOOKS))


def _cells(path: Path) -> list[tuple[str, str]]:
    """``(cell type, source)`` of every code and markdown cell of a notebook file."""
    nb = jupytext.read(path)
    return [(c.cell_type, c.source) for c in nb.cells if c.cell_type in ("code", "markdown")]


def test_every_notebook_is_listed_and_paired() -> None:
    scripts = sorted(p.stem for p in NOTEBOOKS.glob("[0-9]*.py"))
    assert scripts == sorted(FIGURES)
    for name in FIGURES:
        assert (NOTEBOOKS / f"{name}.ipynb").is_file(), f"{name}.ipynb is missing"


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_the_ipynb_matches_its_py_and_has_no_outputs(name: str) -> None:
    script, notebook = NOTEBOOKS / f"{name}.py", NOTEBOOKS / f"{name}.ipynb"
    assert _cells(notebook) == _cells(script), (
        f"{notebook.name} and {script.name} differ: run `jupytext --sync {script}`")
    nb = jupytext.read(notebook)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{notebook.name} is committed with outputs: clear them "
                "(`jupytext --to ipynb` writes none)")
    # one cell sets the size from the environment, so CI runs small and a study runs full
    sources = [src for kind, src in _cells(script) if kind == "code"]
    assert any("NETSTORM_NOTEBOOK_FULL" in src and "FULL" in src for src in sources[:2])


@pytest.mark.slow
@pytest.mark.timeout(CELL_TIMEOUT_S + 60)
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_the_notebook_runs_small_and_writes_its_figures(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = tmp_path / "figures"
    monkeypatch.setenv("NETSTORM_NOTEBOOK_FULL", "0")
    monkeypatch.setenv("NETSTORM_NOTEBOOK_FIGURES", str(figures))
    monkeypatch.delenv("NETSTORM_SWEEP_CACHE", raising=False)
    committed = {p.name: p.stat().st_mtime_ns for p in (NOTEBOOKS / "figures").glob("*")}
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    work = tmp_path / "cwd"  # the kernel's working folder: anything written there is a leak
    work.mkdir()
    km = KernelManager(kernel_name="python3", kernel_spec_manager=_ThisInterpreter())
    client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(work)}})
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    elapsed = time.perf_counter() - started
    errors: list[Any] = [o for c in nb.cells if c.cell_type == "code"
                         for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    written = sorted(p.name for p in figures.iterdir())
    assert written == sorted(FIGURES[name]), f"{name} wrote {written}"
    assert all((figures / f).stat().st_size > 10_000 for f in written)  # real plots
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
    assert images >= len(FIGURES[name]), "every figure is also shown inline"
    assert list(work.iterdir()) == [], "a notebook wrote into its working folder"
    after = {p.name: p.stat().st_mtime_ns for p in (NOTEBOOKS / "figures").glob("*")}
    assert after == committed, "the committed full-size figures were touched"
    for figure in FIGURES[name]:  # the committed figures are the ones the notebook makes
        assert figure in committed, f"notebooks/figures/{figure} is not committed"
    print(f"{name}: {elapsed:.1f} s")
