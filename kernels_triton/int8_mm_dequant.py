"""kbit::int8_mm_dequant in Triton: ``C = A * (row_stats[r] * col_stats[c]) * INV_127_SQ (+ bias)``.

float32 arithmetic in the reference's order (``kbit.reference.int8_mm_dequant``), rounded once to the
output dtype (default float16). A program handles a [BLOCK_M, BLOCK_N] tile of the ``[rows, N]`` view.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kbit import formats

from .launch import EXACT_FP, flat, next_pow2, on_device, tiled
from .rounding import cast_rne

BLOCK_M = 16
MAX_BLOCK_N = 128
INV_127_SQ = tl.constexpr(formats.INV_127_SQ)


@triton.jit
def int8_mm_dequant_kernel(
    a_ptr, row_ptr, col_ptr, bias_ptr, out_ptr, rows, N,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    c = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = r < rows
    c_ok = c < N
    ok = r_ok[:, None] & c_ok[None, :]
    idx = r[:, None] * N + c[None, :]
    a = tl.load(a_ptr + idx, mask=ok, other=0).to(tl.float32)
    scale = tl.load(row_ptr + r, mask=r_ok, other=0.0)[:, None] * tl.load(col_ptr + c, mask=c_ok, other=0.0)[None, :]
    out = (a * scale) * INV_127_SQ
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + idx, cast_rne(out, out_ptr.dtype.element_ty), mask=ok)


def int8_mm_dequant(A, row_stats, col_stats, dtype=None, bias=None):
    """int32 ``A [..., N]``, f32 ``row_stats [rows]``, ``col_stats [N]``, optional ``bias [N]`` -> ``A.shape``
    in ``dtype`` (default float16)."""
    N = A.shape[-1] if A.dim() else 1
    rows = A.numel() // N if N else 0
    out = torch.empty(A.shape, dtype=dtype or torch.float16, device=A.device)
    if rows:
        block_n = min(next_pow2(N), MAX_BLOCK_N)
        block_m = tiled(BLOCK_M)
        grid = (triton.cdiv(rows, block_m), triton.cdiv(N, block_n))
        has_bias = bias is not None
        with on_device(A):
            int8_mm_dequant_kernel[grid](
                flat(A), flat(row_stats.float()), flat(col_stats.float()), flat(bias) if has_bias else A, out, rows, N,
                HAS_BIAS=has_bias, BLOCK_M=block_m, BLOCK_N=block_n, **EXACT_FP,
            )
    return out
