"""Conformance: kbit::gemv_4bit (+ .out) — within the float tolerance of A @ dequant(W).T in float64."""

from __future__ import annotations

import pytest
import torch

from .. import formats
from . import oracles
from .sizes import pick
from .tolerances import MATMUL_4BIT_TOL, tol

OP = "gemv_4bit"


def weight(N, K, blocksize, quant_type, device):
    W = torch.randn(N, K, device=device) / K**0.5
    packed, absmax = torch.ops.kbit.quantize_4bit(W, blocksize, quant_type, torch.uint8)
    dense = oracles.dequantize_4bit(packed.cpu(), absmax.cpu(), blocksize, quant_type, N * K).view(N, K)
    return packed, absmax, dense


@pytest.mark.parametrize("quant_type", formats.QUANT_TYPES)
@pytest.mark.parametrize("dtype", formats.FLOAT_DTYPES)
@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
@pytest.mark.parametrize("NK", pick([(1, 64), (33, 128), (96, 4096), (7, 320)], [(1, 64), (33, 128), (5, 4096), (7, 320)]))
def test_against_float64(provider, device, quant_type, dtype, blocksize, NK):
    N, K = NK
    packed, absmax, dense = weight(N, K, blocksize, quant_type, device)
    code = formats.code_4bit(quant_type, device)
    A = torch.randn(1, 1, K, device=device).to(dtype)
    out = provider(OP, A, packed, [N, K], absmax, code, blocksize)
    assert out.shape == (1, 1, N) and out.dtype == dtype
    want = (A.cpu().double() @ dense.double().t()).to(dtype)
    torch.testing.assert_close(out.cpu().float(), want.float(), **tol(MATMUL_4BIT_TOL, dtype))
    if not provider.is_reference:
        ref = provider.reference(OP, A, packed, [N, K], absmax, code, blocksize)
        torch.testing.assert_close(out.float(), ref.float(), **tol(MATMUL_4BIT_TOL, dtype))


def test_odd_storage_and_out(provider, device):
    N, K = 16, 128
    packed, absmax, dense = weight(N, K, 64, "nf4", device)
    code = formats.code_4bit("nf4", device)
    A = torch.randn(K, device=device, dtype=torch.bfloat16)
    as_bf16 = packed.view(-1).view(torch.bfloat16).view(-1, 1)
    a = provider(OP, A, as_bf16, [N, K], absmax, code, 64)
    out = torch.empty(N, device=device, dtype=torch.bfloat16)
    provider("gemv_4bit.out", A, packed, [N, K], absmax, code, 64, out)
    assert torch.equal(a, out)


def test_identity_is_exact(provider, device):
    K = 128
    packed, absmax = torch.ops.kbit.quantize_4bit(torch.eye(K, device=device), 64, "nf4", torch.uint8)
    A = torch.randn(1, K, device=device)
    out = provider(OP, A, packed, [K, K], absmax, formats.code_4bit("nf4", device), 64)
    assert torch.equal(out, A)


def test_opcheck():
    packed, absmax, _ = weight(32, 64, 64, "nf4", "cpu")
    code = formats.code_4bit("nf4")
    A = torch.randn(1, 64, dtype=torch.float16)
    torch.library.opcheck(torch.ops.kbit.gemv_4bit.default, (A, packed, [32, 64], absmax, code, 64))
    torch.library.opcheck(torch.ops.kbit.gemv_4bit.out, (A, packed, [32, 64], absmax, code, 64, torch.empty(1, 32, dtype=torch.float16)))
