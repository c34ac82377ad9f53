"""Conformance: kbit::quantize_4bit — codes and absmax bit-exact against a brute-force oracle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from .. import formats
from . import oracles

OP = "quantize_4bit"
SHAPES = [(1,), (7,), (2, 33), (4097,), (3, 5, 64), (128, 64)]


def check(provider, A, blocksize, quant_type, storage=torch.uint8):
    packed, absmax = provider(OP, A, blocksize, quant_type, storage)
    want_bytes, want_absmax = oracles.quantize_4bit(A.cpu(), blocksize, quant_type)
    assert packed.dtype == storage and packed.shape == (formats.packed_4bit_numel(A.numel(), storage), 1)
    assert torch.equal(packed.cpu().reshape(-1).view(torch.uint8), want_bytes)
    assert torch.equal(absmax.cpu(), want_absmax)
    if not provider.is_reference:
        ref = provider.reference(OP, A, blocksize, quant_type, storage)
        assert torch.equal(packed.view(torch.uint8), ref[0].view(torch.uint8)) and torch.equal(absmax, ref[1])


@pytest.mark.parametrize("quant_type", formats.QUANT_TYPES)
@pytest.mark.parametrize("blocksize", formats.FOURBIT_BLOCKSIZES)
@pytest.mark.parametrize("dtype", formats.FLOAT_DTYPES)
def test_blocksizes_and_dtypes(provider, device, quant_type, blocksize, dtype):
    A = torch.randn(3, 1000, device=device, dtype=dtype) * 3
    check(provider, A, blocksize, quant_type)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("quant_type", formats.QUANT_TYPES)
def test_shapes_and_tails(provider, device, shape, quant_type):
    check(provider, torch.randn(shape, device=device), 64, quant_type)


@pytest.mark.parametrize("storage", formats.PACKED_STORAGE_DTYPES)
def test_quant_storage(provider, device, storage):
    A = torch.randn(16, 64, device=device)
    check(provider, A, 64, "nf4", storage)


def test_known_packing(provider, device):
    # SPEC §2: NF4 [1, -1, 0, 1] packs to 0xF0 0x7F; FP4 to 0x3B 0x03.
    A = torch.tensor([1.0, -1.0, 0.0, 1.0], device=device)
    assert provider(OP, A, 64, "nf4", torch.uint8)[0].view(-1).tolist() == [0xF0, 0x7F]
    assert provider(OP, A, 64, "fp4", torch.uint8)[0].view(-1).tolist() == [0x3B, 0x03]


@pytest.mark.parametrize("quant_type", formats.QUANT_TYPES)
def test_zero_blocks_and_odd_tail(provider, device, quant_type):
    A = torch.zeros(129, device=device)
    A[64:128] = torch.randn(64, device=device)
    packed, absmax = provider(OP, A, 64, quant_type, torch.uint8)
    assert absmax[0].item() == 0.0 and absmax[2].item() == 0.0
    zero = formats.zero_code_4bit(quant_type)
    assert packed.view(-1)[-1].item() == (zero << 4) | zero
    check(provider, A, 64, quant_type)


def test_empty(provider, device):
    packed, absmax = provider(OP, torch.empty(0, device=device), 64, "nf4", torch.uint8)
    assert packed.shape == (0, 1) and absmax.shape == (0,)


def test_non_contiguous(provider, device):
    A = torch.randn(64, 96, device=device).t()
    check(provider, A, 64, "nf4")


@pytest.mark.parametrize("scale", [1e-30, 1e-6, 1e4, 3e38])
def test_extreme_scales(provider, device, scale):
    check(provider, torch.randn(256, device=device) * scale, 64, "fp4")
    check(provider, torch.randn(256, device=device) * scale, 64, "nf4")


def test_non_finite_poison_only_their_block(provider, device):
    A = torch.randn(256, device=device)
    A[3], A[100], A[200] = float("nan"), float("inf"), -float("inf")
    packed, absmax = provider(OP, A, 64, "nf4", torch.uint8)
    assert torch.isnan(absmax[0]) and torch.isinf(absmax[1]) and torch.isinf(absmax[3])
    want_bytes, want_absmax = oracles.quantize_4bit(A[128:192].cpu(), 64, "nf4")
    assert absmax[2].item() == want_absmax.item()
    assert torch.equal(packed.view(-1)[64:96].cpu(), want_bytes)


@given(n=st.integers(1, 600), blocksize=st.sampled_from(formats.FOURBIT_BLOCKSIZES[:4]), qt=st.sampled_from(formats.QUANT_TYPES), seed=st.integers(0, 2**16))
def test_property_random(provider, n, blocksize, qt, seed):
    g = torch.Generator().manual_seed(seed)
    A = (torch.randn(n, generator=g) * torch.rand(1, generator=g) * 10).to(provider.device)
    check(provider, A, blocksize, qt)


def test_opcheck():
    for args in [(torch.randn(4, 64), 64, "nf4", torch.uint8), (torch.randn(65, dtype=torch.bfloat16), 32, "fp4", torch.uint8), (torch.randn(8, 64), 64, "nf4", torch.bfloat16)]:
        torch.library.opcheck(torch.ops.kbit.quantize_4bit.default, args)
