"""Keeping numba's on-disk cache of the compiled core honest.

Numba keys a cached function by its own source file only. The core's functions also
compile in code and constants from other modules (the heaps, the table columns, the
program layout); a cache written before one of those changed would be loaded as if nothing
had: stale machine code, silently. :func:`drop_stale` deletes a module's cache files when a
module they compile in is newer than them, so the next call compiles afresh and caches
again. It only reads and deletes numba's cache files (``<module>.*.nbi`` / ``.nbc``) where
numba puts them: ``NUMBA_CACHE_DIR``, else the ``__pycache__`` beside the source.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import ModuleType

__all__ = ["drop_stale"]


def _folders(path: Path) -> list[Path]:
    from numba import config
    from numba.core.caching import UserProvidedCacheLocator

    folders = [path.parent / "__pycache__"]
    chosen = getattr(config, "CACHE_DIR", "")  # NUMBA_CACHE_DIR
    if chosen:
        folders.append(Path(chosen)
                       / UserProvidedCacheLocator.get_suitable_cache_subpath(str(path)))
    return folders


def drop_stale(path: str, *dependencies: ModuleType) -> int:
    """Delete numba's cache of the functions defined in ``path`` if a module in
    ``dependencies`` (whose code or constants they compile in) was modified after the
    oldest of its index files. Returns how many files were deleted."""
    source = Path(path)
    newest = max(os.stat(m.__file__ or "").st_mtime for m in dependencies)
    dropped = 0
    for folder in _folders(source):
        index = list(folder.glob(f"{source.stem}.*.nbi"))
        if not index or min(f.stat().st_mtime for f in index) >= newest:
            continue
        for f in [*index, *folder.glob(f"{source.stem}.*.nbc")]:
            with contextlib.suppress(OSError):  # another process dropped it first
                f.unlink()
                dropped += 1
    return dropped
