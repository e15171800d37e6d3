"""Every fenced snippet of README.md runs as written: a new user's first hour.

The blocks are found in the README, not listed here, so a snippet added later is run too,
and a block in a language this file has no runner for fails
(:func:`test_every_block_has_a_runner`). Each language gets:

``yaml``
    A block whose first line names a file (``# grid.yaml``) is also written as that file
    into the directory where the sh commands run. A sweep grid (``grid``/``scenarios``) must
    load with :func:`netstorm.sim.sweep.load_grid`, one scenario per combination. A topology
    file (a mapping with ``sites`` and ``links``) is loaded with
    :func:`netstorm.load_topology` and compared with the document read here by hand: site
    order, workers, caps and every directed link's capacity and latency, in the units the
    README states (an independent unit table below). ``netstorm topo show FILE --json`` must
    say the same. Any other YAML must parse.
``csv``
    Loaded with :func:`netstorm.load_topology`; a ``src,dst,bandwidth_bps[,latency_s]`` list
    is compared row by row (sites in order of first appearance, bit/s, seconds).
``python``
    Run in a fresh interpreter, in a temporary directory that holds ``topo.yaml`` (the
    README's first topology block). A block that uses ``netstorm.runtime`` joins a run: it
    runs on every site of ``topo.yaml`` (emulated, as the README says to try it) under
    ``netstorm run --topology topo.yaml --json -- python snippet.py`` (rank i is the file's
    i-th site, the relay-only one included), which must exit 0 having done at least one
    all-reduce. ``CHECKS`` appends an assertion to the blocks that contain its key;
    ``SKIP_BLOCKS`` (keyed by a block's first line, with the reason) lists blocks that cannot
    run standalone: it is empty and should stay so.
``sh``
    Every command that starts with ``netstorm`` (a line continued with ``\\`` is one
    command; ``#`` comments dropped) runs in the temporary directory and must exit 0; with
    ``--json`` its stdout must be one JSON object, and every output it names must exist
    afterwards. Other lines (``make``, ``export``, ``openssl``, scripts on several hosts)
    are not run: ``make demo``/``make test`` are what runs this file. To fit the test's
    budget (about a minute on two cores), commands are rewritten:

    1. a word with ``|`` alternatives (``bench planner|bound|...``) becomes one command
       per alternative;
    2. ``--iterations``/``-n N`` becomes 2, ``--duration SPAN`` 60s (simulated) and
       ``--time-limit S`` 5;
    3. ``netstorm run``: ``--topology``/``-t`` becomes ``random:2:1``, ``--time-scale``
       8 (set when absent), and an experiment's ``--planner``/``-p A,B,...,Z`` (a full run
       per planner) keeps its first and last planners;
    4. ``netstorm bench``: ``--quick`` is added; the benches in ``SLOW_BENCHES`` are not run
       (each takes longer than the whole budget even with ``--quick``), but must be names
       ``netstorm bench`` knows;
    5. outputs (``--draw``, ``--plot``, ``--trace``, ``--train``, ``--out``, ``--log-dir``)
       stay relative to the temporary directory; an absolute one is moved into it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import netstorm as ns

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent

#: Assertions appended to the python blocks that contain the key: what the README says the
#: block does, checked where it runs (on every worker of the run).
CHECKS: dict[str, str] = {
    # the mean of ones over the workers is ones (a sum would give 2)
    "site.allreduce(grad)": "assert (grad == 1).all(), grad[:4]\n",
    # every worker ends the step with the same gradient bytes; the test compares the files
    "register_comm_hook": ("import os, numpy\n"
                           "numpy.save(f\"grad-{os.environ['RANK']}.npy\", torch.cat("
                           "[p.grad.flatten() for p in ddp.parameters()]).numpy())\n"),
}

#: Python blocks that cannot run standalone, by first line, with the reason (keep it empty).
SKIP_BLOCKS: dict[str, str] = {}

#: ``netstorm bench`` names not run, with their ``--quick`` wall time on the 2-core test
#: machine: each alone is over the test's budget or most of it.
SLOW_BENCHES: dict[str, str] = {
    "planner": "13 s with --quick",
    "sim": "26 s with --quick",
    "kernels": "11 s with --quick (numba compilation)",
    "runtime": "45 s with --quick",
    "ddp": "64 s with --quick",
    "faults": "dozens of killed runs",
    "soak": "a long run by design",
}

RUNNERS = ("yaml", "csv", "python", "sh")
OUTPUT_FLAGS = ("--draw", "--plot", "--trace", "--train", "--out", "--log-dir")
SMALL_RUN_TOPOLOGY = "random:2:1"

#: The README's units, written out here independently of :mod:`netstorm.units` (B/s, s).
BANDWIDTH = {"bit/s": 1 / 8, "kbit/s": 1e3 / 8, "Mbit/s": 1e6 / 8, "Gbit/s": 1e9 / 8,
             "B/s": 1.0, "kB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9}
LATENCY = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    lang: str
    line: int  # README line of the opening fence
    text: str

    @property
    def first(self) -> str:
        return next((ln.strip() for ln in self.text.splitlines() if ln.strip()), "")

    @property
    def id(self) -> str:
        return f"{self.lang or 'plain'}-L{self.line}"


def readme_blocks() -> list[Block]:
    """Every fenced block, in README order."""
    blocks: list[Block] = []
    lang: str | None = None
    start = 0
    body: list[str] = []
    for number, line in enumerate(README.read_text().splitlines(), start=1):
        fence = re.fullmatch(r"\s*```\s*([\w+-]*)\s*", line)
        if lang is None and fence:
            lang, start, body = fence.group(1), number, []
        elif lang is not None and re.fullmatch(r"\s*```\s*", line):
            blocks.append(Block(lang, start, "\n".join(body) + "\n"))
            lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"README.md: the block opened on line {start} is never closed"
    return blocks


BLOCKS = readme_blocks()


def _of(lang: str) -> list[Block]:
    return [b for b in BLOCKS if b.lang == lang]


def _is_topology(doc: object) -> bool:
    return isinstance(doc, dict) and "sites" in doc and "links" in doc


def _topology_block() -> Block:
    for block in _of("yaml"):
        if _is_topology(yaml.safe_load(block.text)):
            return block
    raise AssertionError("README.md has no YAML topology block (topo.yaml for the snippets)")


# --- sh commands -------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One ``netstorm`` command of an sh block, as written (one alternative of ``|``)."""

    line: int
    argv: tuple[str, ...]

    @property
    def id(self) -> str:
        words = [w for w in self.argv[1:3] if not w.startswith("-")]
        return f"L{self.line}-" + "-".join(words)


def sh_commands() -> list[Command]:
    """The ``netstorm`` commands of every sh block, alternatives expanded."""
    out = []
    for block in _of("sh"):
        lines = block.text.splitlines()
        i = 0
        while i < len(lines):
            start, text = i, lines[i]
            while text.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i]
            i += 1
            argv = shlex.split(text, comments=True)
            if not argv or argv[0] != "netstorm":
                continue
            if "|" in argv:  # a shell pipe: the netstorm command is its first stage
                argv = argv[:argv.index("|")]
            variants: list[list[str]] = [[]]
            for word in argv:
                options = word.split("|") if "|" in word else [word]
                variants = [[*v, o] for v in variants for o in options]
            out += [Command(block.line + 1 + start, tuple(v)) for v in variants]
    return out


COMMANDS = sh_commands()


def _value(argv: list[str], *names: str) -> int | None:
    """Index of the value of the first of ``names`` in ``argv``, or None."""
    for i, word in enumerate(argv[:-1]):
        if word in names:
            return i + 1
    return None


def rewrite(argv: tuple[str, ...], cwd: Path) -> tuple[list[str], str | None, list[Path]]:
    """The command to run (rules at the top of this file): ``(argv, why not run or None,
    outputs that must exist afterwards)``."""
    words: list[str] = []
    for word in argv:  # --opt=value as two words, so the rules see one spelling
        if word.startswith("--") and "=" in word:
            words += word.split("=", 1)
        else:
            words.append(word)
    command = words[1] if len(words) > 1 else ""
    for names, new in ((("--iterations", "-n"), "2"), (("--duration",), "60s"),
                       (("--time-limit",), "5")):
        at = _value(words, *names)
        if at is not None:
            words[at] = new
    if command == "run":
        at = _value(words, "--topology", "-t")
        if at is not None:
            words[at] = SMALL_RUN_TOPOLOGY
        at = _value(words, "--planner", "-p")
        if at is not None and "," in words[at]:  # an experiment: one full run per planner
            planners = words[at].split(",")
            words[at] = f"{planners[0]},{planners[-1]}"
        at = _value(words, "--time-scale")
        if at is None:
            words[2:2] = ["--time-scale", "8"]
        else:
            words[at] = "8"
    if command == "bench":
        what = next((w for w in words[2:] if not w.startswith("-")), "bound")
        if what in SLOW_BENCHES:
            return words, f"bench {what}: {SLOW_BENCHES[what]}", []
        if "--quick" not in words:
            words.append("--quick")
    outputs = []
    for i, word in enumerate(words[:-1]):
        if word in OUTPUT_FLAGS:
            path = Path(words[i + 1])
            if path.is_absolute():
                path = Path(path.name)
                words[i + 1] = str(path)
            outputs.append(cwd / path)
    return words, None, outputs


# --- running -----------------------------------------------------------------------------


def _netstorm() -> str:
    exe = BIN / "netstorm"
    found = str(exe) if exe.exists() else shutil.which("netstorm")
    assert found, "the netstorm command is not installed next to this python nor on PATH"
    return found


def _env() -> dict[str, str]:
    """A new user's shell: the venv first on PATH, no run settings inherited, no display."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NETSTORM_")
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    return env


def _run(argv: list[str], cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, (
        f"{shlex.join(argv)} exited {result.returncode}\n--- stdout\n{result.stdout[-3000:]}"
        f"\n--- stderr\n{result.stderr[-3000:]}")
    return result


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh directory holding the README's topology as ``topo.yaml``, and every YAML
    block whose first line names a file (``# grid.yaml``) as that file."""
    (tmp_path / "topo.yaml").write_text(_topology_block().text)
    for block in _of("yaml"):
        named = re.fullmatch(r"#\s*([\w.-]+\.ya?ml)", block.first)
        if named:
            (tmp_path / named.group(1)).write_text(block.text)
    return tmp_path


# --- the tests ---------------------------------------------------------------------------


def test_every_block_has_a_runner() -> None:
    unknown = [b.id for b in BLOCKS if b.lang not in RUNNERS]
    assert not unknown, f"README blocks with no runner in {__file__}: {unknown}"
    for lang in RUNNERS:
        assert _of(lang), f"README.md has no {lang} block: the runner is dead code"
    assert COMMANDS, "README.md has no netstorm command in its sh blocks"


def test_checks_and_skips_name_real_blocks() -> None:
    python = _of("python")
    for key in CHECKS:
        assert any(key in b.text for b in python), f"CHECKS[{key!r}] matches no python block"
    for first in SKIP_BLOCKS:
        assert any(b.first == first for b in python), f"SKIP_BLOCKS[{first!r}]: no such block"


def test_skipped_benches_are_benches() -> None:
    usage = _run([_netstorm(), "bench", "--help"], README.parent, timeout=60).stdout
    choices = re.search(r"\{([\w,]+)\}", usage)
    assert choices, f"netstorm bench --help lists no benches:\n{usage}"
    known = set(choices.group(1).split(","))
    assert set(SLOW_BENCHES) <= known, sorted(set(SLOW_BENCHES) - known)
    named = {w for c in COMMANDS if c.argv[1:2] == ("bench",) for w in c.argv[2:]
             if not w.startswith("-")}
    assert named <= known, f"README names benches netstorm bench does not know: {named - known}"


def _quantity(value: object, default: str, table: dict[str, float]) -> float:
    """A README quantity in B/s or s: a bare number in the file's unit, or "1.2 Gbit/s"."""
    if isinstance(value, int | float):
        return float(value) * table[default]
    match = re.fullmatch(r"\s*([-+0-9.eE]+)\s*(\S+)\s*", str(value))
    assert match, f"not a quantity: {value!r}"
    number, unit = match.groups()
    return float(number) * table[unit]


def _expected(doc: dict) -> dict[str, Any]:
    """What the README says a topology document means, in topo show --json's keys."""
    units = doc.get("units", {})
    bw, lat = units.get("bandwidth", "Mbit/s"), units.get("latency", "ms")
    names = [s["name"] for s in doc["sites"]]
    n = len(names)
    cap, delay = np.zeros((n, n)), np.zeros((n, n))
    for link in doc["links"]:
        u, v = names.index(link["src"]), names.index(link["dst"])
        for a, b in ((u, v), (v, u)) if link.get("symmetric") else ((u, v),):
            cap[a, b] = _quantity(link["bandwidth"], bw, BANDWIDTH)
            delay[a, b] = _quantity(link.get("latency", 0), lat, LATENCY)

    def caps(key: str) -> list[float | None]:
        return [_quantity(s[key], bw, BANDWIDTH) if key in s else None for s in doc["sites"]]

    return {"sites": names, "workers": [i for i, s in enumerate(doc["sites"])
                                        if s.get("worker", True)],
            "capacity_Bps": cap, "latency_s": delay,
            "egress_Bps": caps("egress"), "ingress_Bps": caps("ingress")}


def _same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["sites"] == want["sites"]
    assert list(got["workers"]) == want["workers"]
    np.testing.assert_allclose(np.array(got["capacity_Bps"]), want["capacity_Bps"], rtol=1e-12)
    np.testing.assert_allclose(np.array(got["latency_s"]), want["latency_s"], rtol=1e-12)
    for key in ("egress_Bps", "ingress_Bps"):  # None: no cap
        np.testing.assert_allclose(np.array(got[key], dtype=float),
                                   np.array(want[key], dtype=float), rtol=1e-12, err_msg=key)


def _view_dict(view: ns.NetworkView) -> dict[str, Any]:
    def cap(x: np.ndarray) -> list[float | None]:
        return [float(v) if np.isfinite(v) else None for v in x]

    return {"sites": list(view.sites), "workers": list(view.workers),
            "capacity_Bps": view.capacity, "latency_s": view.latency,
            "egress_Bps": cap(view.egress), "ingress_Bps": cap(view.ingress)}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("block", _of("yaml"), ids=lambda b: b.id)
def test_yaml_block(block: Block, tmp_path: Path) -> None:
    doc = yaml.safe_load(block.text)
    if isinstance(doc, dict) and ("grid" in doc or "scenarios" in doc):  # a sweep's grid
        from netstorm.sim.sweep import load_grid

        path = tmp_path / "grid.yaml"
        path.write_text(block.text)
        scenarios, _ = load_grid(path)
        axes = [v for v in doc.get("grid", {}).values() if isinstance(v, list)]
        assert len(scenarios) == int(np.prod([len(a) for a in axes])) + len(
            doc.get("scenarios") or [])
        return  # (the sh block's netstorm sweep runs it)
    if not _is_topology(doc):
        return  # parsed: that is all a YAML block that is no topology promises
    path = tmp_path / f"{doc.get('name', 'topology')}.yaml"
    path.write_text(block.text)
    want = _expected(doc)
    _same(_view_dict(ns.load_topology(str(path))), want)
    shown = json.loads(_run([_netstorm(), "topo", "show", str(path), "--json"], tmp_path,
                            timeout=60).stdout)
    _same(shown, want)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("block", _of("csv"), ids=lambda b: b.id)
def test_csv_block(block: Block, tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text(block.text)
    view = ns.load_topology(str(path))
    assert view.name == "pairs"
    rows = [[c.strip() for c in r] for r in csv.reader(io.StringIO(block.text)) if r]
    if tuple(rows[0]) not in (("src", "dst", "bandwidth_bps"),
                              ("src", "dst", "bandwidth_bps", "latency_s")):
        return  # loaded; the oracle below knows the directed pair list only
    names = list(dict.fromkeys(name for row in rows[1:] for name in row[:2]))
    assert list(view.sites) == names
    assert list(view.workers) == list(range(len(names)))
    cap, delay = np.zeros((len(names),) * 2), np.zeros((len(names),) * 2)
    for row in rows[1:]:
        u, v = names.index(row[0]), names.index(row[1])
        cap[u, v] = float(row[2]) / 8
        delay[u, v] = float(row[3]) if len(row) > 3 else 0.0
    np.testing.assert_allclose(view.capacity, cap, rtol=1e-12)
    np.testing.assert_allclose(view.latency, delay, rtol=1e-12)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("block", _of("python"), ids=lambda b: b.id)
def test_python_block(block: Block, workdir: Path) -> None:
    if block.first in SKIP_BLOCKS:
        pytest.skip(SKIP_BLOCKS[block.first])
    source = block.text + "".join(check for key, check in CHECKS.items() if key in block.text)
    (workdir / "snippet.py").write_text(source)
    if "netstorm.runtime" not in block.text:
        _run([sys.executable, "snippet.py"], workdir, timeout=120)
        return
    result = _run([_netstorm(), "run", "--topology", "topo.yaml", "--timeout", "60", "--json",
                   "--", sys.executable, "snippet.py"], workdir)
    doc = json.loads(result.stdout)
    assert doc["iterations"], f"no all-reduce ran on the plan: {doc}"
    grads = sorted(workdir.glob("grad-*.npy"))
    if "register_comm_hook" in block.text:
        view = ns.load_topology(str(workdir / "topo.yaml"))
        assert [p.name for p in grads] == [f"grad-{w}.npy" for w in view.workers]
        first, *others = (np.load(p) for p in grads)
        assert np.any(first != 0)
        for other in others:
            np.testing.assert_array_equal(other, first)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.id)
def test_sh_command(command: Command, workdir: Path) -> None:
    argv, skipped, outputs = rewrite(command.argv, workdir)
    if skipped:
        pytest.skip(skipped)
    result = _run([_netstorm(), *argv[1:]], workdir)
    if "--json" in argv:
        assert isinstance(json.loads(result.stdout), dict)
    for path in outputs:
        assert path.exists(), f"{shlex.join(argv)} did not write {path.relative_to(workdir)}"
        if path.is_dir():
            assert any(path.rglob("*.jsonl")), f"{path} holds no log"
        else:
            assert path.stat().st_size > 0, f"{path} is empty"
