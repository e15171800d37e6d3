"""Output paths of the commands, checked before the work that fills them."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

__all__ = ["check_writable"]


def check_writable(path: str | os.PathLike[str] | None, option: str) -> None:
    """Raise :class:`InputError` unless ``path`` (given to ``option``) can be written.

    Checked up front, so that minutes of planning or simulation are not lost to a typo in
    ``--plot`` at the end (``None``: the option was not given)."""
    if path is None:
        return
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise InputError(f"{option} {path}: is a directory, not a file")
    if not folder.is_dir():
        raise InputError(f"{option} {path}: directory {folder} does not exist")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise InputError(f"{option} {path}: not writable")
