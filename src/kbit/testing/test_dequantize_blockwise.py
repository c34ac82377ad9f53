"""Conformance: kbit::dequantize_blockwise (+ .out) — exact: code[q] * absmax[i // blocksize], cast once."""

from __future__ import annotations

import pytest
import torch

from .. import formats
from ..functional.codebooks import create_dynamic_map

OP = "dequantize_blockwise"


def oracle(q, absmax, code, blocksize):
    flat = q.reshape(-1).long()
    idx = torch.arange(flat.numel()) // blocksize
    return (code[flat] * absmax[idx]).view(q.shape)


@pytest.mark.parametrize("blocksize", [16, 64, 256, 4096, 16384])
@pytest.mark.parametrize("dtype", formats.FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 1001), (2, 3, 64), (0,)])
def test_exact(provider, device, blocksize, dtype, shape):
    q = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    absmax = torch.rand(formats.num_blocks(q.numel(), blocksize), device=device) * 10
    code = create_dynamic_map().to(device)
    out = provider(OP, q, absmax, code, blocksize, dtype)
    assert out.shape == shape and out.dtype == dtype
    assert torch.equal(out.cpu(), oracle(q.cpu(), absmax.cpu(), code.cpu(), blocksize).to(dtype))


def test_out_overload(provider, device):
    q = torch.randint(0, 256, (5, 77), dtype=torch.uint8, device=device)
    absmax = torch.rand(formats.num_blocks(q.numel(), 64), device=device)
    code = create_dynamic_map().to(device)
    out = torch.empty(5, 77, dtype=torch.float16, device=device)
    provider("dequantize_blockwise.out", q, absmax, code, 64, torch.float16, out)
    assert torch.equal(out, provider(OP, q, absmax, code, 64, torch.float16))


def test_opcheck():
    q = torch.randint(0, 256, (3, 100), dtype=torch.uint8)
    absmax = torch.rand(5)
    code = create_dynamic_map()
    torch.library.opcheck(torch.ops.kbit.dequantize_blockwise.default, (q, absmax, code, 64, torch.bfloat16))
    torch.library.opcheck(torch.ops.kbit.dequantize_blockwise.out, (q, absmax, code, 64, torch.float32, torch.empty(3, 100)))
