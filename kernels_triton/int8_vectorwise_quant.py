"""kbit::int8_vectorwise_quant in Triton: row-wise absmax int8 (LLM.int8()), optional outlier columns.

Same arithmetic as ``kbit.reference.int8_vectorwise_quant``: outliers (``|x| >= threshold``) are
zeroed before the row absmax, codes are ``round_half_even((x * 127) / absmax)`` in float32 (0 for a
zero row), and with more than one row whole outlier columns code 0. One program per row, walking K in
chunks. Pass 1 writes the row absmax and flags outlier columns; codes need every row's flags when
outlier columns are zeroed, so they come from a second launch then, else from the same one.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kbit import formats

from .launch import EXACT_FP, next_pow2, on_device
from .rounding import block_absmax, max_nan, round_half_even

#: Widest chunk of a row per step.
MAX_BLOCK_K = 1024
INT8_MAX = tl.constexpr(formats.INT8_MAX)


@triton.jit
def int8_vectorwise_quant_kernel(
    a_ptr, q_ptr, stats_ptr, flags_ptr, n_rows, K, threshold,
    STATS: tl.constexpr, CODES: tl.constexpr, OUTLIERS: tl.constexpr, ZERO_COLUMNS: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = row * K
    if STATS:
        absmax = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            ok = cols < K
            x = tl.load(a_ptr + base + cols, mask=ok, other=0.0).to(tl.float32)
            if OUTLIERS:
                outlier = tl.abs(x) >= threshold
                tl.store(flags_ptr + cols, tl.full([BLOCK_K], 1, tl.int32), mask=ok & outlier)
                x = tl.where(outlier, 0.0, x)
            absmax = max_nan(absmax, tl.abs(x))
        tl.store(stats_ptr + row, block_absmax(absmax, 0), mask=row < n_rows)
    if CODES:
        s = tl.load(stats_ptr + row, mask=row < n_rows, other=0.0)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            ok = cols < K
            x = tl.load(a_ptr + base + cols, mask=ok, other=0.0).to(tl.float32)
            if OUTLIERS:
                x = tl.where(tl.abs(x) >= threshold, 0.0, x)
            q = round_half_even(tl.math.div_rn(x * INT8_MAX, tl.where(s == 0.0, 1.0, s)))
            q = tl.where(s == 0.0, 0.0, q)
            q = tl.where(q > INT8_MAX, INT8_MAX, tl.where(q < -INT8_MAX, -INT8_MAX, q))
            if ZERO_COLUMNS:
                flagged = tl.load(flags_ptr + cols, mask=ok, other=0)
                q = tl.where(flagged != 0, 0.0, q)
            tl.store(q_ptr + base + cols, q.to(tl.int8), mask=ok)


def int8_vectorwise_quant(A: torch.Tensor, threshold: float = 0.0):
    """float ``A [..., K]`` -> (int8 ``A.shape``, f32 row absmax ``[rows]``, int64 outlier columns or None)."""
    K = A.shape[-1] if A.dim() else 1
    rows = A.numel() // K if K else 0
    q = torch.empty(A.shape, dtype=torch.int8, device=A.device)
    stats = torch.empty(rows, dtype=torch.float32, device=A.device)
    outliers = threshold != 0.0
    flags = torch.zeros(K if outliers else 1, dtype=torch.int32, device=A.device)
    if rows:
        zero_columns = outliers and rows > 1
        block_k = min(next_pow2(K), MAX_BLOCK_K)
        a = A.reshape(rows, K).contiguous()
        meta = dict(OUTLIERS=outliers, ZERO_COLUMNS=zero_columns, BLOCK_K=block_k, **EXACT_FP)
        with on_device(A):
            int8_vectorwise_quant_kernel[(rows,)](a, q, stats, flags, rows, K, threshold, STATS=True, CODES=not zero_columns, **meta)
            if zero_columns:
                int8_vectorwise_quant_kernel[(rows,)](a, q, stats, flags, rows, K, threshold, STATS=False, CODES=True, **meta)
    cols = torch.nonzero(flags).view(-1) if outliers else None
    return q, stats, cols

