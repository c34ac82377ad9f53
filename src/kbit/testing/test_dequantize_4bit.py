"""Conformance: kbit::dequantize_4bit (+ .out) — exact for given codes: code[q] * absmax, cast once."""

from __future__ import annotations

import pytest
import torch

from .. import formats
from . import oracles

OP = "dequantize_4bit"


def random_packed(n, blocksize, device, storage=torch.uint8):
    nbytes = (n + 1) // 2
    raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    absmax = torch.rand(formats.num_blocks(n, blocksize), device=device) * 4
    return raw.view(storage).view(-1, 1), absmax


@pytest.mark.parametrize("quant_type", formats.QUANT_TYPES)
@pytest.mark.parametrize("blocksize", formats.FOURBIT_BLOCKSIZES)
@pytest.mark.parametrize("dtype", formats.FLOAT_DTYPES)
def test_exact(provider, device, quant_type, blocksize, dtype):
    shape = (5, 999)
    n = 5 * 999
    packed, absmax = random_packed(n, blocksize, device)
    out = provider(OP, packed, absmax, blocksize, quant_type, list(shape), dtype)
    want = oracles.dequantize_4bit(packed.cpu(), absmax.cpu(), blocksize, quant_type, n).to(dtype).view(shape)
    assert out.dtype == dtype and out.shape == shape
    assert torch.equal(out.cpu(), want)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 64), (4097,), (0,)])
@pytest.mark.parametrize("storage", formats.PACKED_STORAGE_DTYPES)
def test_shapes_and_storage(provider, device, shape, storage):
    n = torch.Size(shape).numel()
    itemsize = torch.empty((), dtype=storage).element_size()
    nbytes = -(-((n + 1) // 2) // itemsize) * itemsize
    raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    absmax = torch.rand(formats.num_blocks(n, 64), device=device)
    out = provider(OP, raw.view(storage).view(-1, 1), absmax, 64, "nf4", list(shape), torch.float32)
    assert out.shape == shape
    assert torch.equal(out.cpu().reshape(-1), oracles.dequantize_4bit(raw.cpu(), absmax.cpu(), 64, "nf4", n))


def test_transposed_packed_view(provider, device):
    packed, absmax = random_packed(256, 64, device)
    a = provider(OP, packed, absmax, 64, "fp4", [16, 16], torch.float32)
    b = provider(OP, packed.t(), absmax, 64, "fp4", [16, 16], torch.float32)
    assert torch.equal(a, b)


def test_roundtrip_matches_quantize(provider, device):
    A = torch.randn(64, 128, device=device)
    packed, absmax = provider("quantize_4bit", A, 64, "nf4", torch.uint8)
    y = provider(OP, packed, absmax, 64, "nf4", [64, 128], torch.float32)
    from .tolerances import ELEMENT_BOUND

    bound = ELEMENT_BOUND["nf4"]
    assert ((y - A).abs() <= bound * absmax.repeat_interleave(64).view(64, 128) + 1e-6).all()


def test_out_overload(provider, device):
    packed, absmax = random_packed(300, 64, device)
    out = torch.empty(10, 30, dtype=torch.bfloat16, device=device)
    provider("dequantize_4bit.out", packed, absmax, 64, "nf4", [10, 30], torch.bfloat16, out)
    assert torch.equal(out, provider(OP, packed, absmax, 64, "nf4", [10, 30], torch.bfloat16))


def test_opcheck():
    packed, absmax = random_packed(320, 64, "cpu")
    torch.library.opcheck(torch.ops.kbit.dequantize_4bit.default, (packed, absmax, 64, "nf4", [10, 32], torch.float16))
    out = torch.empty(10, 32)
    torch.library.opcheck(torch.ops.kbit.dequantize_4bit.out, (packed, absmax, 64, "fp4", [10, 32], torch.float32, out))
