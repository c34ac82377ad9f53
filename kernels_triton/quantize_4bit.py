"""kbit::quantize_4bit in Triton: blockwise absmax + nearest NF4/FP4 code, two codes per byte.

Bit-identical to ``kbit.reference.quantize_4bit`` (kbit.formats: packing, scaling, nearest code).
A program handles ``BLOCKS`` consecutive quantization blocks as a [BLOCKS, HALF] tile of element
pairs: the even element of a pair is the high nibble of its byte, the odd one the low nibble.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kbit import formats
from kbit.backends import Unsupported

from . import codebook
from .launch import EXACT_FP, flat, on_device, tiled
from .rounding import block_absmax, inverse_absmax, max_nan, nearest_code, scale_clamped

#: Element pairs per program (the tile is BLOCKS x blocksize/2); 4096-element blocks get one program each.
TILE_PAIRS = 2048


@triton.jit
def quantize_4bit_kernel(
    a_ptr, packed_ptr, absmax_ptr, mids_ptr, order_ptr, n, n_blocks, n_mids,
    HALF: tl.constexpr, BLOCKS: tl.constexpr, STEPS: tl.constexpr, ZERO_CODE: tl.constexpr,
):
    blocks = tl.program_id(0).to(tl.int64) * BLOCKS + tl.arange(0, BLOCKS)
    pairs = tl.arange(0, HALF)
    block_ok = blocks < n_blocks
    hi_idx = blocks[:, None] * (2 * HALF) + 2 * pairs[None, :]
    hi_ok = block_ok[:, None] & (hi_idx < n)
    lo_ok = block_ok[:, None] & (hi_idx + 1 < n)
    hi = tl.load(a_ptr + hi_idx, mask=hi_ok, other=0.0).to(tl.float32)
    lo = tl.load(a_ptr + hi_idx + 1, mask=lo_ok, other=0.0).to(tl.float32)

    absmax = max_nan(block_absmax(hi, 1), block_absmax(lo, 1))
    tl.store(absmax_ptr + blocks, absmax, mask=block_ok)
    inv = inverse_absmax(absmax)[:, None]

    hi_code = nearest_code(scale_clamped(hi, inv), mids_ptr, order_ptr, n_mids, STEPS)
    lo_code = nearest_code(scale_clamped(lo, inv), mids_ptr, order_ptr, n_mids, STEPS)
    lo_code = tl.where(lo_ok, lo_code, ZERO_CODE)  # odd tail: the padding nibble holds the code of 0.0
    byte = ((hi_code << 4) | lo_code).to(tl.uint8)
    tl.store(packed_ptr + blocks[:, None] * HALF + pairs[None, :], byte, mask=hi_ok)


def quantize_4bit(A: torch.Tensor, blocksize: int, quant_type: str, quant_storage: torch.dtype):
    """float A (any shape, any layout) -> (packed ``[count, 1]`` of quant_storage, absmax f32 ``[nb]``)."""
    n = A.numel()
    count = formats.packed_4bit_numel(n, quant_storage)
    if count < 0:
        raise Unsupported(f"kbit-triton quantize_4bit: {(n + 1) // 2} bytes do not fill {quant_storage} elements")
    n_blocks = formats.num_blocks(n, blocksize)
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8, device=A.device)
    absmax = torch.empty(n_blocks, dtype=torch.float32, device=A.device)
    if n:
        _, table = codebook.fourbit(quant_type, A.device)
        half = blocksize // 2
        blocks = max(1, tiled(TILE_PAIRS) // half)
        grid = (triton.cdiv(n_blocks, blocks),)
        with on_device(A):
            quantize_4bit_kernel[grid](
                flat(A), packed, absmax, table.mids, table.order, n, n_blocks, table.n_mids,
                HALF=half, BLOCKS=blocks, STEPS=table.steps, ZERO_CODE=formats.zero_code_4bit(quant_type),
                **EXACT_FP,
            )
    return packed.view(quant_storage).view(count, 1), absmax
