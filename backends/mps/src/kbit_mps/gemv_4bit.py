"""kbit::gemv_4bit (+ .out) on MPS: kernels_mps/gemv_4bit.metal, one SIMD-group per output row.

Serves a single activation row (A's leading dimensions multiply to 1), as the functional gemv_4bit and
matmul_4bit's inference path call it; other shapes go to the next provider.
"""

from __future__ import annotations

import torch
from kbit import formats

from . import library

STEM = "gemv_4bit"
#: Entries of a 4-bit code (the kernel reads code[0..15]).
CODE_4BIT_SIZE = len(formats.NF4_CODE)


def _launch(A, B, shapeB, absmax, code, blocksize, out) -> None:
    """Write A @ dequant(B).T into contiguous ``out``; Unsupported before any write otherwise."""
    N, K = (int(s) for s in shapeB)
    sfx = library.suffix(STEM, A.dtype)
    library.check(K > 0, STEM, "K = 0 (empty rows)")
    library.check(A.numel() == K, STEM, f"needs one row of K={K} activations, A has shape {tuple(A.shape)}")
    library.check(N * K <= library.MAX_ELEMENTS, STEM, f"N*K = {N * K} exceeds {library.MAX_ELEMENTS}")
    log2 = library.log2_blocksize(STEM, blocksize)
    library.check_tensors(STEM, A.device, A=A, B=B, absmax=absmax, code=code, out=out)
    library.check_float32(STEM, absmax=absmax)
    library.check(out.numel() == N and out.dtype == A.dtype, STEM, f"out must hold {N} {A.dtype} values")
    library.check(code.numel() == CODE_4BIT_SIZE, STEM, f"code must have {CODE_4BIT_SIZE} entries, got {code.numel()}")
    packed = library.as_bytes(B)
    library.check(packed.numel() >= (N * K + 1) // 2, STEM, f"B holds {packed.numel()} bytes, W [{N}, {K}] needs {(N * K + 1) // 2}")
    library.check(absmax.numel() >= formats.num_blocks(N * K, blocksize), STEM, "absmax has fewer entries than blocks")
    if N == 0:
        return
    args = (A.contiguous(), packed, absmax.contiguous(), code.to(torch.float32).contiguous(), out, N, K, log2)
    library.run_simd(STEM, f"kbit_gemv_4bit_{sfx}", args, groups=N)


def gemv_4bit(A, B, shapeB, absmax, code, blocksize):
    out = torch.empty((*A.shape[:-1], int(shapeB[0])), dtype=A.dtype, device=A.device)
    _launch(A, B, shapeB, absmax, code, blocksize, out)
    return out


def gemv_4bit_out(A, B, shapeB, absmax, code, blocksize, out):
    if out.is_contiguous():
        _launch(A, B, shapeB, absmax, code, blocksize, out)
    else:
        out.copy_(gemv_4bit(A, B, shapeB, absmax, code, blocksize))
