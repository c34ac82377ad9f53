"""kbit::dequantize_blockwise (+ .out) in Triton: ``code[q] * absmax[i // blocksize]``, cast once, A's shape.

Exact (float32 product rounded once to the output dtype), as ``kbit.reference.dequantize_blockwise``,
for any blocksize > 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kbit import formats
from kbit.backends import Unsupported

from .launch import EXACT_FP, flat, on_device, tiled
from .rounding import cast_rne

#: Elements per program.
BLOCK = 1024


@triton.jit
def dequantize_blockwise_kernel(q_ptr, absmax_ptr, code_ptr, out_ptr, n, blocksize, code_len, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = idx < n
    q = tl.load(q_ptr + idx, mask=ok, other=0).to(tl.int32)
    value = tl.load(code_ptr + q, mask=ok & (q < code_len), other=0.0)
    scale = tl.load(absmax_ptr + idx // blocksize, mask=ok, other=0.0)
    tl.store(out_ptr + idx, cast_rne(value * scale, out_ptr.dtype.element_ty), mask=ok)


def dequantize_into(op: str, A, absmax, code, blocksize, out):
    n = A.numel()
    if absmax.numel() < formats.num_blocks(n, blocksize) or code.numel() < 256:
        raise Unsupported(f"kbit-triton {op}: absmax too short or code shorter than 256 entries")
    if n == 0:
        return
    per_program = tiled(BLOCK)
    with on_device(out):
        dequantize_blockwise_kernel[(triton.cdiv(n, per_program),)](
            flat(A), flat(absmax), flat(code.float()), out, n, blocksize, code.numel(), BLOCK=per_program, **EXACT_FP
        )


def dequantize_blockwise(A, absmax, code, blocksize, dtype):
    """u8 codes ``A`` (any shape), absmax f32 ``[nb]``, code f32 ``[256]`` -> ``A.shape`` in ``dtype``."""
    out = torch.empty(A.shape, dtype=dtype, device=A.device)
    dequantize_into("dequantize_blockwise", A, absmax, code, blocksize, out)
    return out


def dequantize_blockwise_out(A, absmax, code, blocksize, dtype, out):
    """``.out`` overload: writes into ``out`` (``A.shape``, ``dtype``); a strided ``out`` is filled by a copy."""
    if out.is_contiguous():
        dequantize_into("dequantize_blockwise.out", A, absmax, code, blocksize, out)
    else:
        out.copy_(dequantize_blockwise(A, absmax, code, blocksize, dtype))
