"""`Job`: what one training iteration has to move, and the named model table."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .errors import InputError
from .units import SIZE_UNITS, parse_quantity

__all__ = ["MAX_GRADIENT_BYTES", "MODELS", "Job", "ModelSpec"]

#: The largest job: 1 TB of gradients a step (250 billion fp32 parameters), past any
#: data-parallel replica trained today; beyond it a typo's size would run planners and the
#: simulator out of time and memory instead of failing.
MAX_GRADIENT_BYTES = 10**12


@dataclass(frozen=True)
class ModelSpec:
    """A named model: parameter count and a default compute time per iteration.

    ``compute_s`` is a rough forward+backward time for batch 32 on one modern GPU; it only
    sets the compute/communication ratio of simulations and can be overridden per job.
    """

    params: int
    compute_s: float


#: Named models (DESIGN 5.3). Gradient bytes are ``params * element_size``.
MODELS: dict[str, ModelSpec] = {
    "resnet18": ModelSpec(11_689_512, 0.040),
    "resnet50": ModelSpec(25_557_032, 0.100),
    "resnet101": ModelSpec(44_549_160, 0.170),
    "alexnet": ModelSpec(61_100_840, 0.030),
    "vgg16": ModelSpec(138_357_544, 0.200),
    "mobilenet_v2": ModelSpec(3_504_872, 0.050),
    "bert-base": ModelSpec(109_482_240, 0.250),
    "gpt2": ModelSpec(124_439_808, 0.300),
}


@dataclass(frozen=True)
class Job:
    """The communication work of one synchronous iteration.

    Parameters
    ----------
    buckets
        Gradient bucket sizes in bytes (DDP-style); an ``int`` means a single bucket.
    element_size
        Bytes per gradient element on the wire (4 for fp32, 2 for fp16/bf16).
    chunk_bytes
        Pipelining unit: shards are cut into chunks of at most this many bytes.
    compute_s
        Compute seconds per iteration, one figure for all sites or one per site.
    model
        The model's name, for labels (``None`` for a bare size).

    Notes
    -----
    ``gradient_bytes`` (the sum of the buckets) is the M of the cost model and the bound.
    """

    buckets: tuple[int, ...] | int
    element_size: int = 4
    chunk_bytes: int = 4_000_000
    compute_s: float | tuple[float, ...] = 0.0
    model: str | None = None

    def __post_init__(self) -> None:
        raw = self.buckets
        buckets: tuple[int, ...] = (raw,) if isinstance(raw, int) else tuple(raw)
        if not buckets or any(int(b) != b or b <= 0 for b in buckets):
            raise InputError(f"buckets must be positive whole byte counts, got {self.buckets!r}")
        object.__setattr__(self, "buckets", tuple(int(b) for b in buckets))
        if sum(buckets) > MAX_GRADIENT_BYTES:
            raise InputError(f"buckets hold {sum(buckets) / 1e12:.3g} TB of gradients, over "
                             f"{MAX_GRADIENT_BYTES / 1e12:g} TB (MAX_GRADIENT_BYTES)")
        if self.element_size not in (1, 2, 4, 8):
            raise InputError(f"element_size must be 1, 2, 4 or 8 bytes, got {self.element_size}")
        if any(b % self.element_size for b in buckets):
            raise InputError(f"bucket sizes must be multiples of element_size "
                             f"{self.element_size}: {self.buckets}")
        if int(self.chunk_bytes) != self.chunk_bytes or self.chunk_bytes < self.element_size:
            raise InputError(f"chunk_bytes must be a whole number >= element_size, "
                             f"got {self.chunk_bytes}")
        object.__setattr__(self, "chunk_bytes", int(self.chunk_bytes))
        comp = self.compute_s
        values = comp if isinstance(comp, tuple) else (comp,)
        if any(not math.isfinite(c) or c < 0 for c in values):
            raise InputError(f"compute_s must be finite and >= 0, got {comp!r}")

    @property
    def gradient_bytes(self) -> int:
        """Total gradient bytes moved per iteration (M)."""
        return sum(self.buckets)  # type: ignore[arg-type]

    def compute_time(self, site: int) -> float:
        """Compute seconds of ``site`` per iteration."""
        if isinstance(self.compute_s, tuple):
            return float(self.compute_s[site])
        return float(self.compute_s)

    @classmethod
    def from_model(cls, model: str, **overrides: object) -> Job:
        """A job for a named model (``"resnet50"``) or a size (``"100MB"``, ``"64 MiB"``).

        Raises
        ------
        ValueError
            If the name is neither a known model nor a size.
        """
        spec = MODELS.get(model.lower())
        if spec is not None:
            element = int(overrides.get("element_size", 4))  # type: ignore[call-overload]
            job = cls(buckets=spec.params * element, compute_s=spec.compute_s,
                      model=model.lower(), element_size=element)
        else:
            try:
                size = parse_quantity(model, SIZE_UNITS, "b", "model size")
            except ValueError:
                known = ", ".join(MODELS)
                raise InputError(f"unknown model {model!r}: give one of {known} "
                                 f"or a size such as 100MB") from None
            element = int(overrides.get("element_size", 4))  # type: ignore[call-overload]
            if not size > 0:
                raise InputError(f"model size {model!r} must be more than 0 bytes")
            if size > MAX_GRADIENT_BYTES:
                raise InputError(f"model size {model!r} is over {MAX_GRADIENT_BYTES / 1e12:g} "
                                 "TB of gradients (MAX_GRADIENT_BYTES)")
            nbytes = max(element, round(size / element) * element)
            job = cls(buckets=nbytes, model=None, element_size=element)
        return replace(job, **overrides) if overrides else job  # type: ignore[arg-type]

    def with_chunk(self, chunk_bytes: int) -> Job:
        """This job with another pipelining chunk, made valid for it.

        ``chunk_bytes`` is rounded down to a multiple of ``element_size`` and raised to one
        element if smaller; the job itself is returned when its chunk is already that.
        """
        chunk = max(self.element_size, int(chunk_bytes) // self.element_size * self.element_size)
        return self if chunk == self.chunk_bytes else replace(self, chunk_bytes=chunk)

    def label(self) -> str:
        """Human label: the model name or the size."""
        return self.model or f"{self.gradient_bytes / 1e6:.1f} MB"
