"""Conformance: kbit::quantize_blockwise — 8-bit codes and absmax bit-exact against a brute-force oracle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from .. import formats
from ..functional.codebooks import create_dynamic_map, create_linear_map
from . import oracles

OP = "quantize_blockwise"
BLOCKSIZES = [16, 64, 256, 1000, 4096, 16384]


def check(provider, A, code, blocksize):
    q, absmax = provider(OP, A, code, blocksize)
    want_absmax, scaled = oracles.block_scales(A.cpu(), blocksize)
    want = oracles.nearest_index(scaled, code.cpu()).to(torch.uint8).view(A.shape)
    assert q.dtype == torch.uint8 and q.shape == A.shape
    assert torch.equal(absmax.cpu(), want_absmax)
    assert torch.equal(q.cpu(), want)
    if not provider.is_reference:
        ref = provider.reference(OP, A, code, blocksize)
        assert torch.equal(q, ref[0]) and torch.equal(absmax, ref[1])


@pytest.mark.parametrize("blocksize", BLOCKSIZES)
@pytest.mark.parametrize("dtype", formats.FLOAT_DTYPES)
def test_dynamic_map(provider, device, blocksize, dtype):
    A = (torch.randn(3, 1001, device=device) * 2).to(dtype)
    check(provider, A, create_dynamic_map().to(device), blocksize)


@pytest.mark.parametrize("code_fn", [lambda: create_dynamic_map(signed=False), create_linear_map])
def test_other_maps(provider, device, code_fn):
    check(provider, torch.rand(2048, device=device), code_fn().to(device), 256)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 64), (4097,), (0,)])
def test_shapes(provider, device, shape):
    check(provider, torch.randn(shape, device=device), create_dynamic_map().to(device), 64)


def test_zero_block_non_contiguous_and_extremes(provider, device):
    code = create_dynamic_map().to(device)
    A = torch.randn(64, 128, device=device)
    A[:2] = 0
    check(provider, A.t(), code, 64)
    for scale in (1e-30, 1e30):
        check(provider, torch.randn(300, device=device) * scale, code, 64)


@pytest.mark.parametrize("blocksize", [64, 300, 4096])
@pytest.mark.parametrize("dtype", formats.FLOAT_DTYPES)
def test_non_finite(provider, device, blocksize, dtype):
    """NaN and +-Inf: the block's absmax is NaN (Inf), NaN takes the last code, and backends match the
    reference: codes bit for bit, absmax exactly (any NaN where the reference has NaN)."""
    A = torch.randn(5000) * 3
    A[17], A[2500], A[4200] = float("nan"), float("inf"), float("-inf")
    A = A.to(dtype).to(device)
    code = create_dynamic_map().to(device)
    q, absmax = provider(OP, A, code, blocksize)
    assert torch.isnan(absmax[17 // blocksize]) and int(q[17]) == 255
    assert torch.isinf(absmax[2500 // blocksize]) or torch.isnan(absmax[2500 // blocksize])
    if not provider.is_reference:
        ref_q, ref_absmax = provider.reference(OP, A, code, blocksize)
        assert torch.equal(q.cpu(), ref_q.cpu())
        torch.testing.assert_close(absmax.cpu(), ref_absmax.cpu(), rtol=0, atol=0, equal_nan=True)


@given(n=st.integers(1, 3000), blocksize=st.integers(1, 5000), seed=st.integers(0, 2**16))
def test_property_random(provider, n, blocksize, seed):
    g = torch.Generator().manual_seed(seed)
    A = (torch.randn(n, generator=g) * 5).to(provider.device)
    check(provider, A, create_dynamic_map().to(provider.device), blocksize)


def test_opcheck():
    torch.library.opcheck(torch.ops.kbit.quantize_blockwise.default, (torch.randn(3, 100), create_dynamic_map(), 64))
