"""Conformance: kbit::int8_mm_dequant (SPEC §1, §5): ``A * row_stats[r] * col_stats[c] / 127**2 (+ bias)``."""

from __future__ import annotations

import pytest
import torch

import kbit.functional as F
from kbit import backends

from .int8_asserts import assert_float_near_oracle
from .tolerances import INT8_DEQUANT_TOL, tol

OP = "int8_mm_dequant"
OUT_DTYPES = [None, torch.float16, torch.bfloat16, torch.float32]
SHAPES = [(1,), (1, 1), (3, 7), (4, 33), (2, 3, 17), (5, 4097), (0, 16)]
#: int32 products of the tests stay below this, so outputs fit float16.
ACC_RANGE = 2**22


def oracle(A, row_stats, col_stats, bias=None):
    """float64 result and the summed |terms| (the scale of the float32 rounding error)."""
    N = A.shape[-1]
    X = A.to("cpu", torch.float64).reshape(-1, N)
    prod = X * row_stats.to("cpu", torch.float64)[:, None] * col_stats.to("cpu", torch.float64)[None, :] / 127.0**2
    mag = prod.abs()
    if bias is not None:
        b = bias.to("cpu", torch.float64)
        prod = prod + b
        mag = mag + b.abs()
    return prod.view(A.shape), mag.view(A.shape)


def make_inputs(shape, device, bias_dtype=None):
    A = torch.randint(-ACC_RANGE, ACC_RANGE, shape, dtype=torch.int32)
    rows = A.numel() // shape[-1]
    row_stats = torch.rand(rows) * 2 + 0.01
    col_stats = torch.rand(shape[-1]) * 2 + 0.01
    bias = None if bias_dtype is None else torch.randn(shape[-1]).to(bias_dtype).to(device)
    return A.to(device), row_stats.to(device), col_stats.to(device), bias


def check(provider, A, row_stats, col_stats, dtype=None, bias=None):
    inputs = [t.clone() for t in (A, row_stats, col_stats, bias) if t is not None]
    out = provider(OP, A, row_stats, col_stats, dtype, bias)
    after = [t for t in (A, row_stats, col_stats, bias) if t is not None]
    assert all(torch.equal(x, y) for x, y in zip(inputs, after)), "inputs were modified"
    assert out.dtype == (dtype or torch.float16) and out.shape == A.shape and out.device == A.device
    want, mag = oracle(A, row_stats, col_stats, bias)
    assert_float_near_oracle(out, want, mag)
    if not provider.is_reference:
        ref = provider.reference(OP, A, row_stats, col_stats, dtype, bias)
        torch.testing.assert_close(out, ref, **tol(INT8_DEQUANT_TOL, out.dtype))
    return out


@pytest.mark.parametrize("dtype", OUT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_oracle(provider, device, shape, dtype):
    check(provider, *make_inputs(shape, device)[:3], dtype)


@pytest.mark.parametrize("dtype", OUT_DTYPES, ids=str)
@pytest.mark.parametrize("bias_dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 3, 33), (3, 1030)], ids=str)  # 1030: a row of several spans
def test_bias(provider, device, shape, bias_dtype, dtype):
    A, rs, cs, bias = make_inputs(shape, device, bias_dtype)
    check(provider, A, rs, cs, dtype, bias)


def test_exact_values(provider, device):
    A = torch.tensor([[16129, -16129, 0], [2**31 - 1, -(2**31), 1]], dtype=torch.int32, device=device)
    rs = torch.tensor([1.0, 1.0], device=device)
    cs = torch.tensor([1.0, 2.0, 0.5], device=device)
    out = check(provider, A, rs, cs, torch.float32)
    assert out[0].tolist() == pytest.approx([1.0, -2.0, 0.0], rel=1e-6)
    bias = torch.tensor([0.5, 0.25, -1.0], device=device)
    out = check(provider, A[:1], rs[:1], cs, torch.float16, bias)
    assert out.tolist() == [[1.5, -1.75, -1.0]]


def test_zero_stats_give_bias(provider, device):
    A, rs, cs, bias = make_inputs((3, 5), device, torch.float32)
    rs[1] = 0.0
    out = check(provider, A, rs, cs, torch.float32, bias)
    assert torch.equal(out[1], bias)


def test_non_contiguous_through_functional(provider, device):
    A, rs, cs, _ = make_inputs((6, 4), device)
    At = A.t()  # [4, 6]: rows use cs, columns use rs
    bias = torch.randn(6, device=device).to(torch.float16)
    before = [t.clone() for t in (At, cs, rs, bias)]
    out = torch.empty(4, 6, dtype=torch.float32, device=device)
    assert F.int8_mm_dequant(At, cs.view(4, 1), rs, out=out, bias=bias) is out
    assert all(torch.equal(x, y) for x, y in zip(before, (At, cs, rs, bias)))
    want, mag = oracle(At, cs, rs, bias)
    # bitsandbytes computes float16 and copies it into out
    assert_float_near_oracle(out.to(torch.float16), want, mag)
    plain = F.int8_mm_dequant(At, cs, rs)
    assert plain.dtype == torch.float16 and plain.shape == (4, 6)
    assert torch.equal(plain, F.int8_mm_dequant(At.contiguous(), cs, rs))


@pytest.mark.parametrize("bias", [False, True])
def test_opcheck(provider, device, bias):
    if provider.backend != backends.provider(OP, provider.device):
        pytest.skip("opcheck runs once per device, through the dispatched provider")
    A, rs, cs, b = make_inputs((2, 3, 17), device, torch.float16 if bias else None)
    torch.library.opcheck(torch.ops.kbit.int8_mm_dequant.default, (A, rs, cs, torch.bfloat16, b))
    torch.library.opcheck(torch.ops.kbit.int8_mm_dequant.default, (A, rs, cs), {"bias": b})
