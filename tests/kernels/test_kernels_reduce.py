"""fused_reduce on the CPU back end against the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from netstorm.kernels import fused_reduce, reference

SIZES = [1, 127, 128, 129, 1023, 1024, 1025, 2**20]


def _inputs(rng: np.random.Generator, kind: str, n: int, k: int) -> list[np.ndarray]:
    xs = [rng.standard_normal(n, dtype=np.float32) * 3 for _ in range(k)]
    if kind == "fp16":
        return [x.astype(np.float16) for x in xs]
    if kind == "bf16":
        return [reference.bf16_encode(x) for x in xs]
    return xs


def _poisoned(shape) -> np.ndarray:
    return np.full(shape, np.nan, dtype=np.float32)


@pytest.mark.parametrize("kind", ["f32", "fp16", "bf16"])
@pytest.mark.parametrize("n", SIZES)
def test_matches_reference_bit_for_bit(kind: str, n: int) -> None:
    rng = np.random.default_rng()
    xs = _inputs(rng, kind, n, 3)
    out = _poisoned(n)
    assert fused_reduce(out, xs, scale=0.37) is out
    np.testing.assert_array_equal(out, reference.fused_reduce(xs, 0.37))


@pytest.mark.parametrize("kind", ["f32", "fp16", "bf16"])
@pytest.mark.parametrize("n", [1, 129, 1025])
def test_accumulate_adds_to_out(kind: str, n: int) -> None:
    rng = np.random.default_rng()
    xs = _inputs(rng, kind, n, 3)
    prior = rng.standard_normal(n, dtype=np.float32)
    out = prior.copy()
    fused_reduce(out, xs, scale=-1.5, accumulate=True)
    expected = reference.fused_reduce(xs, -1.5, out=prior, accumulate=True)
    np.testing.assert_array_equal(out, expected)
    assert not np.array_equal(out, reference.fused_reduce(xs, -1.5))


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_any_number_of_inputs(k: int) -> None:
    rng = np.random.default_rng()
    xs = _inputs(rng, "f32", 1025, k)
    out = _poisoned(1025)
    fused_reduce(out, tuple(xs), scale=1.0 / k)
    np.testing.assert_array_equal(out, reference.fused_reduce(xs, 1.0 / k))


def test_sum_is_the_plain_sum_for_exact_values() -> None:
    # small integers are exact in every format: the result is known without the reference
    xs = [np.arange(1025, dtype=np.float32) % 17, np.full(1025, 2.0, np.float32)]
    out = _poisoned(1025)
    fused_reduce(out, xs, scale=0.5)
    np.testing.assert_array_equal(out, ((np.arange(1025) % 17) + 2.0) / 2)


def test_out_may_be_an_input() -> None:
    rng = np.random.default_rng()
    xs = _inputs(rng, "f32", 1025, 3)
    expected = reference.fused_reduce(xs, 2.0)
    fused_reduce(xs[0], xs, scale=2.0)
    np.testing.assert_array_equal(xs[0], expected)


def test_multidimensional_and_readonly_inputs() -> None:
    rng = np.random.default_rng()
    xs = [rng.standard_normal((33, 31), dtype=np.float32) for _ in range(3)]
    xs[1].flags.writeable = False  # mixed writable/read-only inputs
    out = _poisoned((33, 31))
    fused_reduce(out, xs)
    np.testing.assert_array_equal(out, reference.fused_reduce(xs))


def test_empty_buffers_are_a_no_op() -> None:
    out = np.empty(0, np.float32)
    assert fused_reduce(out, [np.empty(0, np.float32)]) is out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_cpu_tensors(dtype: torch.dtype) -> None:
    xs = [torch.randn(4, 257).to(dtype) for _ in range(3)]
    out = torch.full((4, 257), float("nan"))
    assert fused_reduce(out, xs, scale=0.25) is out
    expected = (xs[0].float() + xs[1].float() + xs[2].float()) * 0.25
    assert torch.equal(out, expected)


def test_torch_tensor_that_requires_grad() -> None:
    x = torch.randn(300, requires_grad=True)
    out = torch.full((300,), float("nan"))
    fused_reduce(out, [x, x])
    assert torch.equal(out, (x + x).detach())


any32 = st.floats(width=32)  # includes inf and nan


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(0, 300),
    k=st.integers(1, 4),
    scale=st.floats(-4, 4, width=32),
    accumulate=st.booleans(),
)
def test_property_matches_reference(data, n, k, scale, accumulate) -> None:
    xs = [data.draw(hnp.arrays(np.float32, n, elements=any32)) for _ in range(k)]
    prior = data.draw(hnp.arrays(np.float32, n, elements=any32))
    out = prior.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        fused_reduce(out, xs, scale=scale, accumulate=accumulate)
        expected = reference.fused_reduce(xs, scale, out=prior, accumulate=accumulate)
    np.testing.assert_array_equal(out, expected)


@settings(max_examples=40, deadline=None)
@given(bits=hnp.arrays(np.uint16, st.integers(1, 200)), k=st.integers(1, 3))
def test_property_bf16_any_bit_pattern(bits, k) -> None:
    xs = [np.roll(bits, i) for i in range(k)]
    out = _poisoned(bits.size)
    with np.errstate(over="ignore", invalid="ignore"):
        fused_reduce(out, xs)
        expected = reference.fused_reduce(xs)
    np.testing.assert_array_equal(out, expected)  # NaN positions must agree too
