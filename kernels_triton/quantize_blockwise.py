"""kbit::quantize_blockwise in Triton: blockwise absmax + nearest entry of a sorted-on-the-fly code, one byte each.

Bit-identical to ``kbit.reference.quantize_blockwise`` for any blocksize > 0 and any code length
(kbit.formats: scaling, nearest code). A program handles ``ROWS`` consecutive blocks as a
[ROWS, COLS] tile, COLS = the next power of two of the blocksize up to ``MAX_COLS``; longer blocks are
walked in chunks twice (absmax, then codes).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kbit import formats
from kbit.backends import Unsupported

from . import codebook
from .launch import EXACT_FP, flat, next_pow2, on_device, tiled
from .rounding import block_absmax, inverse_absmax, max_nan, nearest_code, scale_clamped

#: Elements per tile, and the widest chunk of one block.
TILE = 2048
MAX_COLS = 2048


@triton.jit
def quantize_blockwise_kernel(
    a_ptr, q_ptr, absmax_ptr, mids_ptr, order_ptr, n, n_blocks, blocksize, n_mids,
    ROWS: tl.constexpr, COLS: tl.constexpr, STEPS: tl.constexpr,
):
    blocks = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    block_ok = blocks < n_blocks
    start = blocks * blocksize
    absmax = tl.zeros([ROWS], dtype=tl.float32)
    for c0 in range(0, blocksize, COLS):
        cols = c0 + tl.arange(0, COLS)
        idx = start[:, None] + cols[None, :]
        ok = block_ok[:, None] & (cols[None, :] < blocksize) & (idx < n)
        x = tl.load(a_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        absmax = max_nan(absmax, block_absmax(x, 1))
    tl.store(absmax_ptr + blocks, absmax, mask=block_ok)
    inv = inverse_absmax(absmax)[:, None]
    for c0 in range(0, blocksize, COLS):
        cols = c0 + tl.arange(0, COLS)
        idx = start[:, None] + cols[None, :]
        ok = block_ok[:, None] & (cols[None, :] < blocksize) & (idx < n)
        x = tl.load(a_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        code = nearest_code(scale_clamped(x, inv), mids_ptr, order_ptr, n_mids, STEPS)
        tl.store(q_ptr + idx, code.to(tl.uint8), mask=ok)


def quantize_blockwise(A: torch.Tensor, code: torch.Tensor, blocksize: int):
    """float A (any shape, any layout), code f32 ``[L]`` (L <= 256) -> (u8 ``A.shape``, absmax f32 ``[nb]``)."""
    if code.numel() > 256:
        raise Unsupported(f"kbit-triton quantize_blockwise: codes of at most 256 entries, got {code.numel()}")
    n = A.numel()
    n_blocks = formats.num_blocks(n, blocksize)
    q = torch.empty(A.shape, dtype=torch.uint8, device=A.device)
    absmax = torch.empty(n_blocks, dtype=torch.float32, device=A.device)
    if n:
        table = codebook.sorted_code(code)
        cols = min(next_pow2(blocksize), MAX_COLS)
        rows = max(1, tiled(TILE) // cols)
        with on_device(A):
            quantize_blockwise_kernel[(triton.cdiv(n_blocks, rows),)](
                flat(A), q, absmax, table.mids, table.order, n, n_blocks, blocksize, table.n_mids,
                ROWS=rows, COLS=cols, STEPS=table.steps, **EXACT_FP,
            )
    return q, absmax
