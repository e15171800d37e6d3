"""The control plane's messages, as frozen dataclasses, and their one codec.

Every control frame (:func:`netstorm.runtime.wire.pack_control`) carries one JSON object
``{"type": TYPE, field: value, ...}``; :func:`encode` writes one from a message and
:func:`decode` reads one back, checking every field's type against the class's annotations,
so a malformed or hostile frame is a :class:`~netstorm.errors.ProtocolError` naming the
message and field, never a ``KeyError`` deep in a handler. Handlers dispatch on the class
with ``match``.

Who sends what (see :mod:`netstorm.runtime.control` for the coordinator's part):

================================ ================================================================
hellos (first frame)             :class:`Join` (a site's control connection), :class:`Data` (a
                                 data connection), :class:`Enter` (a site knocking to join an
                                 elastic run under way)
site -> coordinator              :class:`Beat`, :class:`Report`, :class:`Bye`, :class:`Error`;
                                 elastic runs: :class:`Ready`, :class:`State`
coordinator -> site              :class:`Table`, :class:`Beat`, :class:`Horizon`,
                                 :class:`Shutdown`, :class:`Abort`; elastic runs: :class:`Lost`,
                                 :class:`Grow`, :class:`State` (forwarded to a newcomer)
rank 0 -> knocking site          :class:`Admitted`, :class:`Abort`
================================ ================================================================
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from netstorm.errors import ProtocolError

__all__ = ["MAX_CONTROL", "MAX_HELLO", "Abort", "Admitted", "Beat", "Bye", "Data", "Enter",
           "Error", "Grow", "Horizon", "Join", "LinkTiming", "Lost", "Message", "Ready", "Report",
           "Shutdown", "State", "SwitchNote", "Table", "decode", "encode"]

#: Largest control frame a site or the coordinator reads (a newcomer's state travels in
#: parts of 16 MiB, base64: :data:`netstorm.runtime.door.STATE_PART`).
MAX_CONTROL = 1 << 26
#: Largest hello, and largest answer to a knock.
MAX_HELLO = 1 << 20

#: ``(src, dst, bytes, busy seconds)`` of one link, in the topology's time.
LinkTiming = tuple[int, int, float, float]


@dataclass(frozen=True)
class Join:
    """A site's first frame on its control connection: where its data listener is, and
    what it loaded (rank 0 refuses a site that loaded another topology or encoding)."""

    TYPE: ClassVar[str] = "join"
    address: tuple[str, int]
    fingerprint: str
    wire: str
    world_size: int
    name: str


@dataclass(frozen=True)
class Data:
    """The first frame of a data connection (frames of the plan follow)."""

    TYPE: ClassVar[str] = "data"


@dataclass(frozen=True)
class Enter:
    """A site knocks at rank 0 to join an elastic run under way."""

    TYPE: ClassVar[str] = "enter"
    fingerprint: str
    name: str


@dataclass(frozen=True)
class Admitted:
    """Rank 0 to a knocking site: the workers are at a boundary; the next membership
    (indices into the run's first topology)."""

    TYPE: ClassVar[str] = "admitted"
    members: tuple[int, ...]


@dataclass(frozen=True)
class Table:
    """Every site joined: their data addresses, the run's start (wall clock, for the
    dynamics every site follows) and the first horizon."""

    TYPE: ClassVar[str] = "table"
    addresses: tuple[tuple[str, int], ...]
    start: float
    horizon: int


@dataclass(frozen=True)
class Beat:
    """A heartbeat (both ways)."""

    TYPE: ClassVar[str] = "beat"


@dataclass(frozen=True)
class Report:
    """Collective ``seq`` (of ``numel`` elements) is done at the sender: the links it sent
    on and, where links are not emulated in-process, those it received on."""

    TYPE: ClassVar[str] = "report"
    seq: int
    numel: int
    links: tuple[LinkTiming, ...] = ()
    received: tuple[LinkTiming, ...] = ()


@dataclass(frozen=True)
class SwitchNote:
    """A plan switch: version ``version`` runs from collective ``from_seq`` on, planned from
    the estimate it carries (capacity and confidence matrices, B/s)."""

    version: int
    from_seq: int
    after_seq: int
    reason: str
    planning_s: float
    capacity: tuple[tuple[float, ...], ...]
    confidence: tuple[tuple[float, ...], ...] | None = None

    def record(self) -> dict[str, Any]:
        """What a site logs of it (``netstorm run --json``'s ``switches``)."""
        return {"version": self.version, "from_seq": self.from_seq,
                "after_seq": self.after_seq, "reason": self.reason,
                "planning_s": self.planning_s}


@dataclass(frozen=True)
class Horizon:
    """Collective ``done`` finished everywhere; collectives below ``horizon`` may start,
    after ``switch`` if one came. Elastic runs also announce the sites waiting to join."""

    TYPE: ClassVar[str] = "horizon"
    done: int
    horizon: int
    switch: SwitchNote | None = None
    entering: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Bye:
    """A worker is done (a relay still relays until every worker said so)."""

    TYPE: ClassVar[str] = "bye"


@dataclass(frozen=True)
class Shutdown:
    """Every worker is done: stop."""

    TYPE: ClassVar[str] = "shutdown"


@dataclass(frozen=True)
class Error:
    """A site failed, or holds a peer error for the coordinator's verdict, and why."""

    TYPE: ClassVar[str] = "error"
    reason: str


@dataclass(frozen=True)
class Abort:
    """The run (or a knock, or a join) is refused or over, and why."""

    TYPE: ClassVar[str] = "abort"
    reason: str


@dataclass(frozen=True)
class Lost:
    """Elastic runs: sites left (ranks of the membership that ends); the survivors go on."""

    TYPE: ClassVar[str] = "lost"
    ranks: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class Grow:
    """Elastic runs: sites joined; the next membership (indices into the first topology)."""

    TYPE: ClassVar[str] = "grow"
    members: tuple[int, ...]
    joined: tuple[int, ...]


@dataclass(frozen=True)
class Ready:
    """Elastic runs: a worker is at an iteration boundary, ready for the waiting sites."""

    TYPE: ClassVar[str] = "ready"
    step: int


@dataclass(frozen=True)
class State:
    """Elastic runs: one part of the workers' state for the newcomers ``to`` (base64 of
    float32 bytes; ``crc`` of the whole)."""

    TYPE: ClassVar[str] = "state"
    to: tuple[int, ...]
    step: int
    numel: int
    crc: int
    part: int
    parts: int
    log_base: int
    data: str


Message = (Join | Data | Enter | Admitted | Table | Beat | Report | Horizon | Bye | Shutdown
           | Error | Abort | Lost | Grow | Ready | State)

_TYPES: dict[str, type] = {cls.TYPE: cls for cls in typing.get_args(Message)}


def encode(msg: Message) -> dict[str, Any]:
    """The JSON object of ``msg`` (tuples as lists, ``None`` fields left out)."""
    return {"type": msg.TYPE, **_plain(msg)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if getattr(value, f.name) is not None}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def decode(obj: dict[str, Any]) -> Message:
    """The message a control frame's JSON object holds.

    Raises
    ------
    ProtocolError
        An unknown ``type``, a missing or unknown field, or a field of the wrong type (the
        message names the type and the field).
    """
    kind = obj.get("type")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None or not isinstance(kind, str):
        raise ProtocolError(f"control message of unknown type {kind!r}")
    return _build(cls, {k: v for k, v in obj.items() if k != "type"}, kind)  # type: ignore[no-any-return]


def _build(cls: type, fields: dict[str, Any], where: str) -> Any:
    hints = _hints(cls)
    unknown = set(fields) - set(hints)
    if unknown:
        raise ProtocolError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in fields:
            values[f.name] = _convert(hints[f.name], fields[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING:
            raise ProtocolError(f"{where}: missing field {f.name!r}")
    return cls(**values)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return {k: v for k, v in typing.get_type_hints(cls).items()
            if typing.get_origin(v) is not ClassVar}


def _convert(hint: Any, value: Any, where: str) -> Any:
    """``value`` as the annotation ``hint`` says (int, float, str, tuples, optional, a
    nested message dataclass), or a ProtocolError naming ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ProtocolError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ProtocolError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]")
                     for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected an object, got {type(value).__name__}")
        return _build(hint, value, where)  # type: ignore[arg-type]
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str) and isinstance(value, hint) and not isinstance(value, bool):
        return value
    raise ProtocolError(f"{where}: expected {getattr(hint, '__name__', hint)}, got "
                        f"{type(value).__name__}")
