"""How site scripts end: one line for a runtime error, a relay's SystemExit as its status,
and an exit that flushes what was said but skips the interpreter's finalization."""

from __future__ import annotations

import subprocess
import sys

import pytest
from netstorm.runtime.exits import main_of

from netstorm.errors import PeerError


def _raise(exc: BaseException) -> int:
    raise exc


def test_a_runtime_error_is_one_line_and_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_of(lambda: _raise(PeerError("site b (rank 1) closed its connection"))) == 1
    assert capsys.readouterr().err == ("stopped: PeerError: site b (rank 1) closed its "
                                       "connection\n")
    # DDP re-raises ours from C++ as a RuntimeError holding the text
    assert main_of(lambda: _raise(RuntimeError("reducer: PeerError: run aborted: x"))) == 1
    assert capsys.readouterr().err == "stopped: PeerError: run aborted: x\n"


def test_a_bug_keeps_its_traceback() -> None:
    with pytest.raises(RuntimeError, match="not ours"):
        main_of(lambda: _raise(RuntimeError("not ours")))
    with pytest.raises(KeyError):
        main_of(lambda: _raise(KeyError("x")))


def test_a_relays_system_exit_is_its_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_of(lambda: _raise(SystemExit(0))) == 0
    assert main_of(lambda: _raise(SystemExit())) == 0
    assert main_of(lambda: _raise(SystemExit(3))) == 3
    assert main_of(lambda: _raise(SystemExit("no topology"))) == 1
    assert capsys.readouterr().err == "no topology\n"


def test_exit_now_flushes_and_skips_finalization() -> None:
    # an atexit handler is finalization's work: it must not run; what was printed must come
    code = ("import atexit, logging, sys\n"
            "from netstorm.runtime.exits import exit_now\n"
            "atexit.register(lambda: print('finalized', flush=True))\n"
            "logging.basicConfig(stream=sys.stderr)\n"
            "logging.getLogger('x').warning('logged')\n"
            "print('said', end='')\n"
            "sys.stderr.write('err')\n"
            "exit_now(7)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 7
    assert done.stdout == "said"
    assert "logged" in done.stderr and done.stderr.endswith("err")
