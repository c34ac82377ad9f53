"""kbit-cpu gemm_4bit above GEMM_FUSED_MAX_M rows: the weight dequantized a tile of rows at a time (to
float32, or to A's dtype on CPUs with matrix instructions for it), each tile multiplied by torch. The
tile size is shrunk here so that a small weight spans many tiles, with shapes whose tiles would start
inside a packed byte or an absmax block unless aligned."""

from __future__ import annotations

import math

import pytest
import torch

from kbit import formats
from kbit.testing import oracles
from kbit.testing.test_gemm_4bit import nested_absmax
from kbit.testing.tolerances import MATMUL_4BIT_TOL

kbit_cpu = pytest.importorskip("kbit_cpu", reason="kbit-cpu is not installed")
from kbit_cpu import _abi, fourbit  # noqa: E402

pytestmark = pytest.mark.skipif(not _abi.probe()[0], reason="kbit-cpu's library did not load")


def want_of(A, packed, absmax, N, K, blocksize, quant_type, bias):
    W = oracles.dequantize_4bit(packed, absmax, blocksize, quant_type, N * K).view(N, K).double()
    want = A.double().reshape(-1, K) @ W.t()
    if bias is not None:
        want = want + bias.double()
    return want.view(*A.shape[:-1], N)


@pytest.mark.parametrize("tile_bytes", [1, 4096, 64 << 10])
@pytest.mark.parametrize("N, K, blocksize", [(37, 320, 64), (50, 100, 64), (29, 33, 128), (16, 64, 32)])
@pytest.mark.parametrize("dtype", formats.FLOAT_DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("native", [False, True], ids=["float32-tiles", "own-dtype-tiles"])
def test_tiles_against_float64(monkeypatch, tile_bytes, N, K, blocksize, dtype, with_bias, native):
    """Float32 tiles (CPUs without bf16 / f16 matrix instructions) and tiles in A's dtype (with them)."""
    monkeypatch.setattr(fourbit, "GEMM_TILE_BYTES", tile_bytes)
    monkeypatch.setattr(fourbit, "cpu_matmul_dtype", (lambda d: d) if native else (lambda d: torch.float32))
    torch.manual_seed(N * K + blocksize)
    W = torch.randn(N, K) / K**0.5
    packed, absmax = torch.ops.kbit.quantize_4bit(W, blocksize, "nf4", torch.uint8)
    A = torch.randn(3, fourbit.GEMM_FUSED_MAX_M // 2 + 7, K).to(dtype)  # 3 * 39 rows > GEMM_FUSED_MAX_M
    bias = torch.randn(N).to(dtype) if with_bias else None
    out = fourbit.gemm_4bit(A, packed, [N, K], absmax, blocksize, "nf4", bias)
    assert out.shape == (*A.shape[:-1], N) and out.dtype == dtype and out.is_contiguous()
    atol, rtol = MATMUL_4BIT_TOL[dtype]
    torch.testing.assert_close(out.double(), want_of(A, packed, absmax, N, K, blocksize, "nf4", bias), atol=atol * 4, rtol=rtol * 2)


@pytest.mark.parametrize("N, K, blocksize", [(37, 320, 64), (50, 100, 64), (29, 33, 128), (7, 9, 64)])
@pytest.mark.parametrize("itemsize", [2, 4])
def test_tile_rows_start_at_whole_bytes_and_blocks(monkeypatch, N, K, blocksize, itemsize):
    for budget in (1, 100, 4096, 1 << 20):
        monkeypatch.setattr(fourbit, "GEMM_TILE_BYTES", budget)
        rows = fourbit._tile_rows(N, K, blocksize, itemsize)
        assert 1 <= rows <= N
        if rows < N:  # tiles after the first start at multiples of `rows` rows: whole bytes, whole blocks
            assert rows * K % 2 == 0 and rows * K % blocksize == 0
            align = math.lcm(blocksize, 2) // math.gcd(K, math.lcm(blocksize, 2))
            assert rows * K * itemsize <= max(budget, align * K * itemsize)  # within budget unless one aligned step exceeds it


def test_nested_absmax_and_fp4(monkeypatch):
    monkeypatch.setattr(fourbit, "GEMM_TILE_BYTES", 2048)
    torch.manual_seed(3)
    N, K, blocksize = 40, 256, 64
    W = torch.randn(N, K) / K**0.5
    packed, absmax = torch.ops.kbit.quantize_4bit(W, blocksize, "fp4", torch.uint8)
    codes, amax2, dyn, offset, restored = nested_absmax(absmax)
    A = torch.randn(fourbit.GEMM_FUSED_MAX_M + 1, K, dtype=torch.bfloat16)
    bias = torch.randn(N, dtype=torch.bfloat16)
    out = fourbit.gemm_4bit(A, packed, [N, K], amax2, blocksize, "fp4", bias, codes, dyn, offset)
    atol, rtol = MATMUL_4BIT_TOL[torch.bfloat16]
    torch.testing.assert_close(out.double(), want_of(A, packed, restored, N, K, blocksize, "fp4", bias), atol=atol * 4, rtol=rtol * 2)


def test_degenerate_weight_shapes():
    A = torch.randn(fourbit.GEMM_FUSED_MAX_M + 3, 0)
    bias = torch.randn(5)
    out = fourbit.gemm_4bit(A, torch.empty(0, 1, dtype=torch.uint8), [5, 0], torch.empty(0), 64, "nf4", bias)
    torch.testing.assert_close(out, bias.expand(A.shape[0], 5))
