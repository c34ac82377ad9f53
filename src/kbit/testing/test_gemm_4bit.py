"""Conformance: kbit::gemm_4bit — A @ dequant(W).T + bias, plain and nested absmax."""

from __future__ import annotations

import pytest
import torch

from .. import formats
from ..functional.codebooks import create_dynamic_map
from . import oracles
from .tolerances import MATMUL_4BIT_TOL, tol

OP = "gemm_4bit"


def nested_absmax(absmax: torch.Tensor):
    """Second-level quantization of absmax written out here: offset = mean, 8-bit blockwise with blocksize 256."""
    offset = absmax.mean()
    dyn = create_dynamic_map().to(absmax.device)
    centred = absmax - offset
    amax, scaled = oracles.block_scales(centred, formats.NESTED_BLOCKSIZE)
    q = oracles.nearest_index(scaled, dyn).to(torch.uint8)
    restored = dyn[q.long()] * amax[torch.arange(q.numel(), device=q.device) // formats.NESTED_BLOCKSIZE] + offset
    return q, amax, dyn, offset, restored


@pytest.mark.parametrize("quant_type", formats.QUANT_TYPES)
@pytest.mark.parametrize("dtype", formats.FLOAT_DTYPES)
@pytest.mark.parametrize("M", [1, 3, 17, 40])
@pytest.mark.parametrize("nested", [False, True])
def test_against_float64(provider, device, quant_type, dtype, M, nested):
    N, K, blocksize = 48, 320, 64
    W = torch.randn(N, K, device=device) / K**0.5
    packed, absmax = torch.ops.kbit.quantize_4bit(W, blocksize, quant_type, torch.uint8)
    bias = torch.randn(N, device=device).to(dtype)
    A = torch.randn(2, M, K, device=device).to(dtype)
    if nested:
        q, amax, dyn, offset, restored = nested_absmax(absmax)
        out = provider(OP, A, packed, [N, K], amax, blocksize, quant_type, bias, q, dyn, offset)
        used_absmax = restored
    else:
        out = provider(OP, A, packed, [N, K], absmax, blocksize, quant_type, bias)
        used_absmax = absmax
    dense = oracles.dequantize_4bit(packed.cpu(), used_absmax.cpu(), blocksize, quant_type, N * K).view(N, K).to(dtype)
    want = A.cpu().double() @ dense.double().t() + bias.cpu().double()
    assert out.shape == (2, M, N) and out.dtype == dtype
    atol, rtol = MATMUL_4BIT_TOL[dtype]
    torch.testing.assert_close(out.cpu().double(), want, atol=atol * 4, rtol=rtol * 2)


@pytest.mark.parametrize("quant_type", formats.QUANT_TYPES)
@pytest.mark.parametrize("dtype", formats.FLOAT_DTYPES)
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("lead", [(1,), (1, 1)])
def test_single_row(provider, device, quant_type, dtype, nested, with_bias, lead):
    """One row in all (a decoding step): backends may take a gemv path here, within the same tolerance."""
    N, K, blocksize = 80, 256, 64
    W = torch.randn(N, K, device=device) / K**0.5
    packed, absmax = torch.ops.kbit.quantize_4bit(W, blocksize, quant_type, torch.uint8)
    bias = torch.randn(N, device=device).to(dtype) if with_bias else None
    A = torch.randn(*lead, K, device=device).to(dtype)
    if nested:
        q, amax, dyn, offset, used_absmax = nested_absmax(absmax)
        out = provider(OP, A, packed, [N, K], amax, blocksize, quant_type, bias, q, dyn, offset)
    else:
        out = provider(OP, A, packed, [N, K], absmax, blocksize, quant_type, bias)
        used_absmax = absmax
    dense = oracles.dequantize_4bit(packed.cpu(), used_absmax.cpu(), blocksize, quant_type, N * K).view(N, K).to(dtype)
    want = A.cpu().double() @ dense.double().t()
    if with_bias:
        want = want + bias.cpu().double()
    assert out.shape == (*lead, N) and out.dtype == dtype
    atol, rtol = MATMUL_4BIT_TOL[dtype]
    torch.testing.assert_close(out.cpu().double(), want, atol=atol * 4, rtol=rtol * 2)


def test_opcheck():
    W = torch.randn(32, 64)
    packed, absmax = torch.ops.kbit.quantize_4bit(W, 64, "nf4", torch.uint8)
    A = torch.randn(3, 64, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.kbit.gemm_4bit.default, (A, packed, [32, 64], absmax, 64, "nf4", torch.randn(32, dtype=torch.bfloat16)))
