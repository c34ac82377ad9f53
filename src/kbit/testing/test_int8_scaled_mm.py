"""Conformance: kbit::int8_scaled_mm (SPEC §1): ``int8_mm_dequant(int8_linear_matmul(A, B), ...)``."""

from __future__ import annotations

import pytest
import torch

import kbit.functional as F
from kbit import backends

from .int8_asserts import assert_float_near_oracle
from .tolerances import INT8_DEQUANT_TOL, INT8_PIPELINE_MISMATCH_FRACTION, INT8_PIPELINE_TOL, tol

OP = "int8_scaled_mm"
OUT_DTYPES = [None, torch.float16, torch.bfloat16, torch.float32]


def oracle(A, B, row_stats, col_stats, bias=None):
    """float64 result (exact int64 product, then the SPEC scaling) and the summed |terms|."""
    K = A.shape[-1]
    acc = (A.to("cpu", torch.int64).reshape(-1, K) @ B.to("cpu", torch.int64).t()).to(torch.float64)
    prod = acc * row_stats.to("cpu", torch.float64)[:, None] * col_stats.to("cpu", torch.float64)[None, :] / 127.0**2
    mag = prod.abs()
    if bias is not None:
        prod = prod + bias.to("cpu", torch.float64)
        mag = mag + bias.to("cpu", torch.float64).abs()
    shape = (*A.shape[:-1], B.shape[0])
    return prod.view(shape), mag.view(shape)


def make_inputs(a_shape, N, device, bias_dtype=None):
    A = torch.randint(-128, 128, a_shape, dtype=torch.int8)
    B = torch.randint(-128, 128, (N, a_shape[-1]), dtype=torch.int8)
    rows = A.numel() // a_shape[-1]
    rs = torch.rand(rows) * 2 + 0.01
    cs = torch.rand(N) * 2 + 0.01
    bias = None if bias_dtype is None else torch.randn(N).to(bias_dtype)
    return [t if t is None else t.to(device) for t in (A, B, rs, cs, bias)]


def check(provider, A, B, rs, cs, bias=None, dtype=None):
    before = [t.clone() for t in (A, B, rs, cs, bias) if t is not None]
    out = provider(OP, A, B, rs, cs, bias, dtype)
    assert all(torch.equal(x, y) for x, y in zip(before, [t for t in (A, B, rs, cs, bias) if t is not None]))
    assert out.dtype == (dtype or torch.float16) and out.shape == (*A.shape[:-1], B.shape[0])
    want, mag = oracle(A, B, rs, cs, bias)
    assert_float_near_oracle(out, want, mag)
    if provider.is_reference:
        composed = provider("int8_mm_dequant", provider("int8_linear_matmul", A, B), rs, cs, dtype, bias)
        assert torch.equal(out, composed), "the reference is exactly the SPEC composition"
    else:
        ref = provider.reference(OP, A, B, rs, cs, bias, dtype)
        torch.testing.assert_close(out, ref, **tol(INT8_DEQUANT_TOL, out.dtype))
    return out


@pytest.mark.parametrize("dtype", OUT_DTYPES, ids=str)
@pytest.mark.parametrize("K", [1, 7, 1025, 4097])
@pytest.mark.parametrize("a_shape,N", [((1, 0), 1), ((3, 0), 5), ((2, 3, 0), 9), ((0, 0), 4), ((0,), 6)], ids=str)
def test_matches_oracle(provider, device, a_shape, N, K, dtype):
    check(provider, *make_inputs((*a_shape[:-1], K), N, device), dtype=dtype)


@pytest.mark.parametrize("dtype", OUT_DTYPES, ids=str)
@pytest.mark.parametrize("bias_dtype", [torch.float16, torch.float32], ids=str)
def test_bias(provider, device, bias_dtype, dtype):
    A, B, rs, cs, bias = make_inputs((2, 3, 33), 7, device, bias_dtype)
    check(provider, A, B, rs, cs, bias, dtype)


@pytest.mark.parametrize("shape", [(64, 256), (2, 16, 1025)], ids=str)
def test_float16_pipeline_accuracy(provider, device, shape):
    """Row-quantized f16 randn activations and weights vs the float product (SPEC §9)."""
    x = torch.randn(shape, device=device).to(torch.float16)
    w = torch.randn(64, shape[-1], device=device).to(torch.float16)
    CA, SCA, _ = provider.reference("int8_vectorwise_quant", x, 0.0)
    CB, SCB, _ = provider.reference("int8_vectorwise_quant", w, 0.0)
    out = check(provider, CA, CB, SCA, SCB)
    true = x.float() @ w.float().t()
    std = true.std()
    atol, rtol = INT8_PIPELINE_TOL
    off = ~torch.isclose(out.float() / std, true / std, atol=atol, rtol=rtol)
    assert off.float().mean().item() <= INT8_PIPELINE_MISMATCH_FRACTION


def test_against_functional_composition(provider, device):
    A, B, rs, cs, bias = make_inputs((4, 65), 6, device, torch.float16)
    composed = F.int8_mm_dequant(F.int8_linear_matmul(A, B), rs, cs, bias=bias)
    out = provider(OP, A, B, rs, cs, bias, None)
    torch.testing.assert_close(out, composed, **tol(INT8_DEQUANT_TOL, torch.float16))


@pytest.mark.parametrize("bias", [False, True])
def test_opcheck(provider, device, bias):
    if provider.backend != backends.provider(OP, provider.device):
        pytest.skip("opcheck runs once per device, through the dispatched provider")
    A, B, rs, cs, b = make_inputs((2, 3, 33), 7, device, torch.float32 if bias else None)
    torch.library.opcheck(torch.ops.kbit.int8_scaled_mm.default, (A, B, rs, cs, b, torch.float32))
    torch.library.opcheck(torch.ops.kbit.int8_scaled_mm.default, (A, B, rs, cs), {"bias": b})
