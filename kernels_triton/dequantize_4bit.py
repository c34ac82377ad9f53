"""kbit::dequantize_4bit (+ .out) in Triton: unpack nibbles, look up the code, scale by the block's absmax.

Exact: ``code[q] * absmax[i // blocksize]`` in float32, rounded once to the output dtype, as
``kbit.reference.dequantize_4bit``. A program handles ``BYTES`` packed bytes (2 * BYTES outputs).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kbit import formats
from kbit.backends import Unsupported

from . import codebook
from .launch import EXACT_FP, on_device, tiled
from .rounding import cast_rne

#: Packed bytes per program.
BYTES = 1024


@triton.jit
def dequantize_4bit_kernel(packed_ptr, absmax_ptr, code_ptr, out_ptr, n, log2_blocksize, BYTES: tl.constexpr):
    byte = tl.program_id(0).to(tl.int64) * BYTES + tl.arange(0, BYTES)
    hi_idx = 2 * byte
    hi_ok = hi_idx < n
    lo_ok = hi_idx + 1 < n
    packed = tl.load(packed_ptr + byte, mask=hi_ok, other=0).to(tl.int32)
    hi = tl.load(code_ptr + (packed >> 4), mask=hi_ok, other=0.0)
    lo = tl.load(code_ptr + (packed & 0xF), mask=lo_ok, other=0.0)
    hi = hi * tl.load(absmax_ptr + (hi_idx >> log2_blocksize), mask=hi_ok, other=0.0)
    lo = lo * tl.load(absmax_ptr + ((hi_idx + 1) >> log2_blocksize), mask=lo_ok, other=0.0)
    dtype = out_ptr.dtype.element_ty
    tl.store(out_ptr + hi_idx, cast_rne(hi, dtype), mask=hi_ok)
    tl.store(out_ptr + hi_idx + 1, cast_rne(lo, dtype), mask=lo_ok)


def packed_bytes(A: torch.Tensor) -> torch.Tensor:
    """The packed codes as flat uint8, whatever the storage dtype and layout of ``A``."""
    if A.dtype == torch.uint8:
        return A.reshape(-1) if A.is_contiguous() else A.contiguous().view(-1)
    return A.contiguous().view(-1).view(torch.uint8)


def dequantize_into(op: str, A, absmax, blocksize, code, out):
    """Launch the kernel writing ``out`` (contiguous, any float dtype) from packed ``A`` and f32 ``code[16]``."""
    n = out.numel()
    raw = packed_bytes(A)
    if raw.numel() < (n + 1) // 2 or absmax.numel() < formats.num_blocks(n, blocksize):
        raise Unsupported(f"kbit-triton {op}: packed data or absmax too short for {n} elements")
    if blocksize & (blocksize - 1):
        raise Unsupported(f"kbit-triton {op}: blocksize {blocksize} is not a power of two")
    if n == 0:
        return
    per_program = tiled(BYTES)
    with on_device(out):
        dequantize_4bit_kernel[(triton.cdiv((n + 1) // 2, per_program),)](
            raw, absmax.reshape(-1).float().contiguous(), code, out, n, int(math.log2(blocksize)), BYTES=per_program,
            **EXACT_FP,
        )


def dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
    """Packed ``A`` (any storage dtype) + f32 absmax ``[nb]`` -> ``shape`` in ``dtype``."""
    out = torch.empty(list(shape), dtype=dtype, device=A.device)
    values, _ = codebook.fourbit(quant_type, A.device)
    dequantize_into("dequantize_4bit", A, absmax, blocksize, values, out)
    return out


def dequantize_4bit_out(A, absmax, blocksize, quant_type, shape, dtype, out):
    """``.out`` overload: writes into ``out`` (of ``shape`` and ``dtype``); a strided ``out`` is filled by a copy."""
    if out.is_contiguous():
        values, _ = codebook.fourbit(quant_type, A.device)
        dequantize_into("dequantize_4bit.out", A, absmax, blocksize, values, out)
    else:
        out.copy_(dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype))
