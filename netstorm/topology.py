"""Load a topology by name: a built-in (``netstorm9``, ``cloud:aws:8``, ...) or a file.

The resolver sits above both sources it dispatches to, :mod:`netstorm.builtin_topologies`
(named meshes and generators) and :mod:`netstorm.topology_files` (YAML/JSON documents and
CSV pair lists, whose readers it re-exports), so neither of those imports this module.
"""

from __future__ import annotations

from pathlib import Path

from .builtin_topologies import BUILTIN_HELP, builtin, is_builtin
from .errors import TopologyError
from .topology_files import read_csv, read_document, view_from_document
from .view import NetworkView

__all__ = ["load_topology", "read_csv", "read_document", "view_from_document"]


def load_topology(source: str | Path) -> NetworkView:
    """Load a topology by built-in name (``netstorm9``, ``cloud:aws:8``, ``cities``,
    ``random:16:3``, ``waxman:32:1``) or from a ``.yaml``/``.yml``/``.json``/``.csv`` file.

    Raises
    ------
    TopologyError
        Naming the file (or name), the entry and the problem.
    """
    text = str(source)
    if not isinstance(source, Path) and is_builtin(text):
        return builtin(text)
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv(path)
    if suffix in (".yaml", ".yml", ".json"):
        return view_from_document(read_document(path), str(path))
    if not path.exists():
        raise TopologyError(f"{text}: no such file and not a built-in topology "
                            f"({BUILTIN_HELP})")
    raise TopologyError(f"{path}: unknown file type {suffix!r} (use .yaml, .yml, .json, .csv)")
