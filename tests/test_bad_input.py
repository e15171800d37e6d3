"""Bad input, one contract: every malformed topology file, generator name, size, option or
plan file ends the CLI with exit status 2 and one line on stderr that names the input and
the problem, within a minute, and never with a traceback (the CLI turns only
``NetstormError`` and usage errors into status 2; anything else would escape ``main`` here
and fail the case). A few valid inputs beside them must succeed, so that a CLI that refused
everything would fail this file too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netstorm.cli.main import main

pytestmark = pytest.mark.timeout(60)

GOOD_YAML = """\
name: three
units: {bandwidth: Mbit/s, latency: ms}
sites:
  - {name: a}
  - {name: b}
  - {name: r, worker: false}
links:
  - {src: a, dst: b, bandwidth: 100, latency: 5, symmetric: true}
  - {src: a, dst: r, bandwidth: 200, latency: 2, symmetric: true}
  - {src: r, dst: b, bandwidth: 200, latency: 2, symmetric: true}
"""


def _yaml(sites: str, links: str, top: str = "") -> str:
    return f"name: t\n{top}sites:\n{sites}links:\n{links}"


A_B = "  - {name: a}\n  - {name: b}\n"
AB = "  - {src: a, dst: b, bandwidth: 100, latency: 5, symmetric: true}\n"

#: file name -> contents (str, or bytes written as they are)
FILES: dict[str, str | bytes] = {
    "good.yaml": GOOD_YAML,
    "list.yaml": "- a\n- b\n",
    "nosites.yaml": "name: t\nlinks: []\n",
    "nolinks.yaml": "name: t\nsites:\n" + A_B,
    "emptysites.yaml": _yaml("  []\n", AB).replace("sites:\n  []", "sites: []"),
    "noname.yaml": _yaml("  - {worker: true}\n  - {name: b}\n", AB),
    "dupname.yaml": _yaml("  - {name: a}\n  - {name: a}\n", AB),
    "sitekey.yaml": _yaml("  - {name: a, colour: red}\n  - {name: b}\n", AB),
    "topkey.yaml": _yaml(A_B, AB, top="colour: red\n"),
    "unknownsite.yaml": _yaml(A_B, AB + "  - {src: a, dst: z, bandwidth: 5, latency: 1}\n"),
    "negbw.yaml": _yaml(A_B, AB.replace("bandwidth: 100", "bandwidth: -100")),
    "zerobw.yaml": _yaml(A_B, AB.replace("bandwidth: 100", "bandwidth: 0")),
    "badunit.yaml": _yaml(A_B, AB.replace("bandwidth: 100", 'bandwidth: "5 parsecs"')),
    "neglat.yaml": _yaml(A_B, AB.replace("latency: 5", "latency: -5")),
    "unitsbw.yaml": _yaml(A_B, AB, top="units: {bandwidth: furlongs}\n"),
    "egress0.yaml": _yaml("  - {name: a, egress: 0}\n  - {name: b}\n", AB),
    "workerbool.yaml": _yaml("  - {name: a, worker: maybe}\n  - {name: b}\n", AB),
    "syntax.yaml": "name: t\nsites: [a, b\n",
    "latin1.yaml": "name: caf\xe9\n".encode("latin-1"),
    "one.yaml": _yaml("  - {name: a}\n", "  []\n").replace("links:\n  []", "links: []"),
    "isolated.yaml": _yaml(A_B + "  - {name: r, worker: false}\n", AB),
    "oneway.yaml": _yaml(A_B, "  - {src: a, dst: b, bandwidth: 100, latency: 5}\n"),
    "duplink.yaml": _yaml(A_B, AB + AB),
    "bad.json": '{"name": "t", "sites": [',
    "numbers.json": "[1, 2, 3]",
    "notes.txt": "hello\n",
    "header.csv": "from,to,speed\na,b,1\n",
    "nan.csv": "src,dst,bandwidth_bps,latency_s\na,b,1e8,0.01\nb,a,fast,0.01\n",
    "fields.csv": "src,dst,bandwidth_bps,latency_s\na,b,1e8\n",
    "neglat.csv": "src,dst,bandwidth_bps,latency_s\na,b,1e8,-1\nb,a,1e8,0.01\n",
    "empty.csv": "",
    "dup.csv": "src,dst,bandwidth_bps\na,b,1e8\na,b,2e8\nb,a,1e8\n",
    "latin1.csv": "src,dst,bandwidth_bps\ncaf\xe9,b,1e8\nb,caf\xe9,1e8\n".encode("latin-1"),
    "plan-junk.json": "not json at all",
    "plan-list.json": "[]",
    "plan-latin1.json": '{"planner": "caf\xe9"}'.encode("latin-1"),
    "plan-nokey.json": '{"planner": "ps", "sites": ["a", "b"]}',
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-input")
    for name, body in FILES.items():
        path = root / name
        if isinstance(body, bytes):
            path.write_bytes(body)
        else:
            path.write_text(body)
    (root / "a-directory.png").mkdir()
    # plans made by the CLI itself, then spoiled by hand
    good = root / "plan-good.json"
    assert _main(["plan", "-t", str(root / "good.yaml"), "-p", "ps", "--json"],
                 out=good)[0] == 0
    doc = json.loads(good.read_text())
    shard = doc["shards"][0]
    del shard["reduce_tree"][next(iter(shard["reduce_tree"]))]
    (root / "plan-missing-worker.json").write_text(json.dumps(doc))
    doc = json.loads(good.read_text())
    doc["shards"][0]["fraction"] = 0.25
    (root / "plan-fractions.json").write_text(json.dumps(doc))
    doc = json.loads(good.read_text())
    doc["sites"] = ["x", "y", "z"]
    (root / "plan-other-sites.json").write_text(json.dumps(doc))
    return root


def _main(argv: list[str], out: Path | None = None) -> tuple[int, str, str]:
    """Run the CLI in this process: ``(status, stdout, stderr)``; any exception escapes."""
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    if out is not None:
        out.write_text(stdout.getvalue())
    return code, stdout.getvalue(), stderr.getvalue()


T = "random:3:1"  # a small valid topology for option cases
#: (argv with {dir} for the files' folder, what the one line must say)
BAD: list[tuple[list[str], str]] = [
    # topology files
    (["topo", "show", "{dir}/list.yaml"], "list.yaml"),
    (["topo", "show", "{dir}/nosites.yaml"], "sites"),
    (["topo", "show", "{dir}/nolinks.yaml"], "links"),
    (["topo", "show", "{dir}/emptysites.yaml"], "sites must be a non-empty list"),
    (["topo", "show", "{dir}/noname.yaml"], "sites[0]"),
    (["topo", "show", "{dir}/dupname.yaml"], "duplicate site name 'a'"),
    (["topo", "show", "{dir}/sitekey.yaml"], "colour"),
    (["topo", "show", "{dir}/topkey.yaml"], "colour"),
    (["topo", "show", "{dir}/unknownsite.yaml"], "'z'"),
    (["topo", "show", "{dir}/negbw.yaml"], "links[0]"),
    (["topo", "show", "{dir}/zerobw.yaml"], "links[0]"),
    (["topo", "show", "{dir}/badunit.yaml"], "parsecs"),
    (["topo", "show", "{dir}/neglat.yaml"], "links[0]"),
    (["topo", "show", "{dir}/unitsbw.yaml"], "furlongs"),
    (["topo", "show", "{dir}/egress0.yaml"], "egress"),
    (["topo", "show", "{dir}/workerbool.yaml"], "worker"),
    (["topo", "show", "{dir}/syntax.yaml"], "not valid YAML"),
    (["topo", "show", "{dir}/latin1.yaml"], "latin1.yaml: line 1: not UTF-8"),
    (["topo", "show", "{dir}/one.yaml"], "at least two worker sites"),
    (["plan", "-t", "{dir}/isolated.yaml"], "relay-only site 'r' is not on any path"),
    (["plan", "-t", "{dir}/oneway.yaml"], "cannot be reached"),
    (["topo", "show", "{dir}/duplink.yaml"], "duplicate"),
    (["topo", "show", "{dir}/bad.json"], "not valid JSON"),
    (["topo", "show", "{dir}/numbers.json"], "numbers.json"),
    (["topo", "show", "{dir}/notes.txt"], "unknown file type '.txt'"),
    (["topo", "show", "{dir}/nowhere.yaml"], "nowhere.yaml: cannot read"),
    (["topo", "show", "{dir}/a-directory.png"], "a-directory.png"),
    (["topo", "show", "{dir}/header.csv"], "line 1: unknown columns"),
    (["topo", "show", "{dir}/nan.csv"], "nan.csv: line 3"),
    (["topo", "show", "{dir}/fields.csv"], "fields.csv: line 2"),
    (["topo", "show", "{dir}/neglat.csv"], "neglat.csv: line 2"),
    (["topo", "show", "{dir}/empty.csv"], "empty CSV"),
    (["topo", "show", "{dir}/dup.csv"], "dup.csv: line 3: duplicate link"),
    (["topo", "show", "{dir}/latin1.csv"], "latin1.csv: line 2: not UTF-8"),
    # generators and built-in names
    (["topo", "show", "random:100000"], "<= 4096 (MAX_SITES"),
    (["topo", "show", "random:1"], "site count must be >= 2"),
    (["topo", "show", "random:x"], "whole numbers"),
    (["topo", "show", "waxman:5:y"], "whole numbers"),
    (["topo", "show", "cloud:ibm"], "unknown built-in topology"),
    (["topo", "show", "cloud:aws:1"], "site count must be >= 2"),
    (["bound", "-t", "cloud:aws:99999"], "<= 4096 (MAX_SITES"),
    # sizes and jobs
    (["plan", "-t", T, "-m", "resnet51"], "unknown model 'resnet51'"),
    (["plan", "-t", T, "-m", "0MB"], "more than 0 bytes"),
    (["plan", "-t", T, "--model=-5MB"], "more than 0 bytes"),
    (["plan", "-t", T, "-m", "1e30MB"], "MAX_GRADIENT_BYTES"),
    (["plan", "-t", T, "--chunk", "0"], "chunk_bytes"),
    (["plan", "-t", T, "--chunk", "abc"], "--chunk"),
    (["plan", "-t", T, "--chunk", "5 parsecs"], "parsecs"),
    # planners and their options
    (["plan", "-t", T, "-p", "nope"], "unknown planner 'nope'"),
    (["plan", "-t", T, "-p", "ps", "-o", "servers=0"], "planner ps: servers must be in"),
    (["plan", "-t", T, "-p", "ps", "-o", "nokey"], "expected KEY=VALUE"),
    (["plan", "-t", T, "-p", "ring", "-o", "colour=1"], "colour"),
    (["plan", "-t", T, "-p", "tsengine", "-o", "max_greed=2"], "max_greed"),
    (["plan", "-t", T, "-p", "mlnet", "-o", "fanout=0"], "fanout"),
    (["plan", "-t", T, "--seed", "abc"], "--seed"),
    (["compare", "-t", T, "--planners", "ps,nope"], "unknown planner 'nope'"),
    # the bound
    (["bound", "-t", T, "--time-limit", "0"], "--time-limit must be a finite"),
    (["bound", "-t", T, "--time-limit", "nan"], "--time-limit must be a finite"),
    (["bound", "-t", T, "--method", "nope"], "invalid choice"),
    # output paths, checked before the work
    (["plan", "-t", T, "--draw", "{dir}/no/such/dir/p.png"], "does not exist"),
    (["topo", "show", T, "--draw", "{dir}/a-directory.png"], "is a directory"),
    (["sim", "-t", T, "-n", "1", "--plot", "{dir}/no/x.png"], "--plot"),
    (["sim", "-t", T, "-n", "1", "--trace", "{dir}/no/x.json"], "--trace"),
    # the simulator's options
    (["sim", "-t", T, "-n", "0"], "--iterations must be >= 1"),
    (["sim", "-t", T, "-n", "1", "--bucket-mb", "inf"], "--bucket-mb"),
    (["sim", "-t", T, "-n", "1", "--bucket-mb", "nan"], "--bucket-mb"),
    (["sim", "-t", T, "-n", "1", "--window", "0"], "--window"),
    (["sim", "-t", T, "-n", "1", "--window", "abc"], "--window"),
    (["sim", "-t", T, "-n", "1", "-d", "nonsense"], "unknown kind 'nonsense'"),
    (["sim", "-t", T, "-n", "1", "-d", "redraw:abc"], "redraw"),
    (["sim", "-t", T, "-n", "1", "--policy", "nope"], "nope"),
    (["sim", "-t", T, "-n", "1", "-p", ","], "at least one planner"),
    (["sim", "-t", T, "-n", "1", "--engine", "compiled", "--trace", "{dir}/x.json"],
     "--engine executor"),
    (["sim", "-t", T, "-n", "1", "--engine", "fast"], "--engine"),
    (["bench", "planner", "--plot", "{dir}/x.png"], "--plot draws only for bench sim"),
    (["bench", "sim", "--plot", "{dir}/no/x.png"], "--plot"),
    # the command line itself
    ([], "required: command"),
    (["frobnicate"], "invalid choice"),
    (["plan"], "required: --topology"),
    # netstorm run (refused before any process starts)
    (["run", "-t", T, "--timeout", "0"], "--timeout"),
    (["run", "-t", T, "--procs-per-site", "0"], "--procs-per-site"),
    (["run", "-t", T, "--rejoin"], "--rejoin needs --elastic"),
    (["run", "-t", T, "-p", "nope"], "unknown planner 'nope'"),
    (["run", "-t", T, "--dynamics", "nonsense"], "nonsense"),
    (["run", "-t", T, "--time-scale", "0"], "--time-scale"),
    (["run", "-t", T, "--iterations", "0"], "--iterations"),
    (["run", "-t", "{dir}/oneway.yaml"], "cannot be reached"),
    # plan files
    (["compare", "-t", "{dir}/good.yaml", "--plan", "{dir}/plan-junk.json"],
     "plan-junk.json: line 1: not valid JSON"),
    (["compare", "-t", "{dir}/good.yaml", "--plan", "{dir}/plan-list.json"],
     "a plan is a JSON object"),
    (["compare", "-t", "{dir}/good.yaml", "--plan", "{dir}/plan-latin1.json"], "not UTF-8"),
    (["compare", "-t", "{dir}/good.yaml", "--plan", "{dir}/plan-nokey.json"], "lacks key"),
    (["compare", "-t", "{dir}/good.yaml", "--plan", "{dir}/nowhere.json"], "cannot read"),
    (["compare", "-t", "{dir}/good.yaml", "--plan", "{dir}/plan-missing-worker.json"],
     "plan-missing-worker.json: shard 0"),
    (["compare", "-t", "{dir}/good.yaml", "--plan", "{dir}/plan-fractions.json"],
     "fractions sum"),
    (["compare", "-t", "{dir}/good.yaml", "--plan", "{dir}/plan-other-sites.json"],
     "differ from the view's"),
    (["sim", "-t", "{dir}/good.yaml", "-n", "1", "--plan", "{dir}/plan-missing-worker.json"],
     "plan-missing-worker.json: shard 0"),
    (["sim", "-t", T, "-n", "1", "--plan", "{dir}/plan-good.json"], "differ from the view's"),
    (["sim", "-t", T, "--duration", "0s"], "--duration"),
    (["sim", "-t", T, "--duration", "10", "-n", "3"], "not allowed with"),
    (["run", "-t", "{dir}/good.yaml", "--plan", "{dir}/plan-missing-worker.json"],
     "plan-missing-worker.json"),
    (["run", "-t", "{dir}/good.yaml", "--plan", "{dir}/plan-good.json", "--elastic"],
     "--plan with --elastic"),
]


def _fill(argv: list[str], root: Path) -> list[str]:
    return [a.replace("{dir}", str(root)) for a in argv]


def test_the_table_is_large_enough() -> None:
    assert len(BAD) >= 60


@pytest.mark.parametrize(("argv", "says"), BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_bad_input_exits_2_with_one_line(files: Path, argv: list[str], says: str) -> None:
    code, out, err = _main(_fill(argv, files))
    assert code == 2, (code, out, err)
    assert out == "" and err.count("\n") == 1 and err.startswith("netstorm"), err
    assert says in err, err
    assert "Traceback" not in err


GOOD: list[list[str]] = [
    ["topo", "show", "{dir}/good.yaml", "--json"],
    ["plan", "-t", "{dir}/good.yaml", "-p", "treepack", "--draw", "{dir}/plan.png"],
    ["compare", "-t", "{dir}/good.yaml", "--planners", "ring", "--plan", "{dir}/plan-good.json"],
    ["plan", "-t", T, "--model=64MB", "--chunk", "1MB"],
    ["sim", "-t", T, "-n", "1", "--window", "4MB", "--no-progress"],
    ["sim", "-t", T, "-n", "1", "--engine", "executor", "--no-progress"],
    ["sim", "-t", "{dir}/good.yaml", "-n", "1", "--plan", "{dir}/plan-good.json",
     "--no-progress"],
]


@pytest.mark.parametrize("argv", GOOD, ids=[" ".join(a)[:60] for a in GOOD])
def test_good_input_succeeds(files: Path, argv: list[str]) -> None:
    code, out, err = _main(_fill(argv, files))
    assert code == 0, err
    assert out


def test_a_topology_shown_as_json_loads_back(files: Path, tmp_path: Path) -> None:
    for name in ("netstorm9", "cities", str(files / "good.yaml")):
        code, first, _ = _main(["topo", "show", name, "--json"])
        assert code == 0
        again = tmp_path / "again.json"
        again.write_text(first)
        code, second, err = _main(["topo", "show", str(again), "--json"])
        assert code == 0, err
        one, two = json.loads(first), json.loads(second)
        one.pop("name"), two.pop("name")
        assert one == two


def test_the_entry_point_says_one_line_and_no_traceback(files: Path) -> None:
    # the real console script, as a user runs it
    exe = Path(sys.executable).with_name("netstorm")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETSTORM_")}
    for argv in (["topo", "show", str(files / "latin1.csv")], ["--model"], ["plan", "-t"]):
        done = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=60,
                              env=env)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stderr
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("netstorm ")


def test_a_bug_is_not_passed_off_as_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    # an internal ValueError escapes with its traceback instead of exiting 2
    cli = sys.modules["netstorm.cli.main"]

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("internal")

    monkeypatch.setattr(cli, "load_topology", broken)
    with pytest.raises(ValueError, match="internal"):
        main(["topo", "show", T])


def test_every_option_has_help() -> None:
    import argparse

    parser = sys.modules["netstorm.cli.main"]._parser()

    def walk(p: argparse.ArgumentParser, where: str) -> list[str]:
        missing = []
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    missing += walk(sub, f"{where} {name}")
            elif action.option_strings and not action.help:
                missing.append(f"{where} {action.option_strings[0]}")
        return missing

    assert walk(parser, "netstorm") == []

