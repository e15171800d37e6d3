"""Parsing of bandwidth, latency and size quantities with units.

Internal units are bytes, seconds and bytes/second; everything entering netstorm from a file
or the command line goes through these functions.
"""

from __future__ import annotations

import math
import re

from .errors import InputError

__all__ = ["BANDWIDTH_UNITS", "LATENCY_UNITS", "SIZE_UNITS", "parse_quantity"]

#: Bandwidth units in bytes/second (decimal prefixes). Keys are canonical: a lower-case prefix
#: and ``bit/s`` or ``B/s``; ``Mbps``-style aliases and any prefix case are accepted.
BANDWIDTH_UNITS: dict[str, float] = {
    "bit/s": 1 / 8, "kbit/s": 1e3 / 8, "mbit/s": 1e6 / 8, "gbit/s": 1e9 / 8,
    "B/s": 1.0, "kB/s": 1e3, "mB/s": 1e6, "gB/s": 1e9,
}
_BANDWIDTH_NAMES = "bit/s, kbit/s, Mbit/s, Gbit/s, B/s, kB/s, MB/s, GB/s"
#: Latency units in seconds.
LATENCY_UNITS: dict[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
#: Size units in bytes (decimal and binary prefixes).
SIZE_UNITS: dict[str, float] = {
    "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
    "kib": 2.0**10, "mib": 2.0**20, "gib": 2.0**30, "tib": 2.0**40,
}

_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z/]*)\s*$")


def _canonical(unit: str, table: dict[str, float]) -> str:
    """Fold a unit to its table key. Bandwidth keeps bits (``b``, ``bit``, ``bps``) apart from
    bytes (``B``); every other letter's case is ignored."""
    if table is not BANDWIDTH_UNITS:
        return unit.lower()
    for suffix, canonical in (("bit/s", "bit/s"), ("bps", "bit/s"), ("B/s", "B/s")):
        if unit.endswith(suffix) or (suffix != "B/s" and unit.lower().endswith(suffix)):
            return unit[: -len(suffix)].lower() + canonical
    return unit


def parse_quantity(value: object, table: dict[str, float], default_unit: str, what: str) -> float:
    """Parse a number or a ``"<number> <unit>"`` string into internal units.

    Parameters
    ----------
    value
        A bare number (taken in ``default_unit``) or a string such as ``"1.2 Gbit/s"``.
    table
        One of :data:`BANDWIDTH_UNITS`, :data:`LATENCY_UNITS`, :data:`SIZE_UNITS`.
    default_unit
        Unit of bare numbers; must be a key of ``table`` (after case folding).
    what
        Name of the quantity, used in error messages.

    Returns
    -------
    float
        The value in bytes/second, seconds or bytes.

    Raises
    ------
    ValueError
        On a malformed string, an unknown unit, or a value that is not finite.
    """
    if isinstance(value, bool):
        raise InputError(f"{what} must be a number or a string with a unit, not {value!r}")
    if isinstance(value, int | float):
        number, unit = float(value), default_unit
    elif isinstance(value, str):
        match = _QUANTITY.match(value)
        if not match:
            raise InputError(f"{what}: cannot parse {value!r} as '<number> <unit>'")
        number, unit = float(match.group(1)), match.group(2) or default_unit
    else:
        raise InputError(f"{what} must be a number or a string with a unit, not {value!r}")
    key = _canonical(unit, table)
    if key not in table:
        known = _BANDWIDTH_NAMES if table is BANDWIDTH_UNITS else ", ".join(table)
        raise InputError(f"{what}: unknown unit {unit!r} (known: {known})")
    result = number * table[key]
    if not math.isfinite(result):
        raise InputError(f"{what}: {value!r} is not a finite number")
    return result
