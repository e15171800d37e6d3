"""Run the CUDA-kernel cases (cudasim_cases.py) under the numba CUDA simulator.

NUMBA_ENABLE_CUDASIM must be set before numba.cuda is imported, so the cases run in a child
pytest process; this process never imports numba.cuda and stays on the CPU back end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).with_name("cudasim_cases.py")


def test_cuda_kernels_under_simulator() -> None:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
           "-rs", str(CASES)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                         cwd=CASES.parents[2])
    report = res.stdout[-6000:] + res.stderr[-3000:]
    assert res.returncode == 0, report
    assert " passed" in res.stdout and "skipped" not in res.stdout, report
