"""The edge: the ``netstorm`` command line and its benchmark harnesses (DESIGN 1, 11).

This package may import anything (the simulator, the runtime, the kernels); the planning
core never imports it. ``netstorm = netstorm.cli:main`` is the console script.

Modules: :mod:`~netstorm.cli.main` (the parser and the commands), :mod:`~netstorm.cli.sim`
(``netstorm sim``), :mod:`~netstorm.cli.run` (``netstorm run``'s options, one run or
:mod:`~netstorm.cli.experiment`), and the package :mod:`~netstorm.cli.bench` (``netstorm
bench``, one module per benchmark).
"""

from .main import main

__all__ = ["main"]
