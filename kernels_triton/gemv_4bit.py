"""kbit::gemv_4bit (+ .out) in Triton: ``out[n] = sum_k A[k] * code[q[n, k]] * absmax`` in float32.

The weight ``W [N, K]`` is packed flat row-major (kbit.formats), element ``(r, c)`` at ``r * K + c``.
A program owns ``BLOCK_N`` rows and walks K in chunks of ``BLOCK_K`` bytes' worth of elements. With K
even every row starts on a byte boundary and a chunk is ``BLOCK_K`` whole bytes (two elements each, in
one quantization block since blocksizes are even); with K odd each element finds its own nibble.
Serves one activation row (``A.numel() == K``); other shapes go to the next provider.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kbit import formats
from kbit.backends import Unsupported

from .dequantize_4bit import packed_bytes
from .launch import interpreting, on_device
from .rounding import cast_rne

#: (BLOCK_N, BLOCK_K, num_warps) tried by the autotuner on a device (keyed on N and K).
CONFIGS = [(16, 128, 4), (8, 256, 4), (4, 512, 4), (32, 64, 4), (16, 256, 8)]
#: The float32 sum may use fused multiply-adds (its tolerance allows any summation order).
FUSED_FP = {"enable_fp_fusion": True}
#: (BLOCK_N, BLOCK_K) under the interpreter, where timing is meaningless and large tiles mean fewer Python steps.
INTERPRETER_CONFIG = (32, 1024)


@triton.jit
def gemv_4bit_kernel(
    a_ptr, packed_ptr, absmax_ptr, code_ptr, out_ptr, N, K, log2_blocksize,
    EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    if EVEN_K:
        half_k = K // 2
        for k0 in range(0, half_k, BLOCK_K):
            j = k0 + tl.arange(0, BLOCK_K)
            j_ok = j < half_k
            ok = row_ok[:, None] & j_ok[None, :]
            byte = rows[:, None] * half_k + j[None, :]
            packed = tl.load(packed_ptr + byte, mask=ok, other=0).to(tl.int32)
            scale = tl.load(absmax_ptr + ((2 * byte) >> log2_blocksize), mask=ok, other=0.0)
            hi = tl.load(code_ptr + (packed >> 4), mask=ok, other=0.0)
            lo = tl.load(code_ptr + (packed & 0xF), mask=ok, other=0.0)
            a_hi = tl.load(a_ptr + 2 * j, mask=j_ok, other=0.0).to(tl.float32)
            a_lo = tl.load(a_ptr + 2 * j + 1, mask=j_ok, other=0.0).to(tl.float32)
            acc += (hi * scale) * a_hi[None, :]
            acc += (lo * scale) * a_lo[None, :]
    else:
        for k0 in range(0, K, BLOCK_K):
            c = k0 + tl.arange(0, BLOCK_K)
            c_ok = c < K
            ok = row_ok[:, None] & c_ok[None, :]
            elem = rows[:, None] * K + c[None, :]
            packed = tl.load(packed_ptr + (elem >> 1), mask=ok, other=0).to(tl.int32)
            nibble = (packed >> (4 - 4 * (elem & 1)).to(tl.int32)) & 0xF
            w = tl.load(code_ptr + nibble, mask=ok, other=0.0)
            w = w * tl.load(absmax_ptr + (elem >> log2_blocksize), mask=ok, other=0.0)
            acc += w * tl.load(a_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    out = tl.sum(acc, axis=1)
    tl.store(out_ptr + rows, cast_rne(out, out_ptr.dtype.element_ty), mask=row_ok)


_tuned = None


def _launcher():
    """The kernel behind an autotuner (built on first use, so importing this module stays cheap)."""
    global _tuned
    if _tuned is None:
        configs = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w) for bn, bk, w in CONFIGS]
        _tuned = triton.autotune(configs=configs, key=["N", "K"])(gemv_4bit_kernel)
    return _tuned


def gemv_into(A, B, shapeB, absmax, code, blocksize, out):
    N, K = (int(s) for s in shapeB)
    if A.numel() != K:
        raise Unsupported(f"kbit-triton gemv_4bit: serves one activation row, got A {tuple(A.shape)} for K={K}")
    if code.numel() != 16 or blocksize & (blocksize - 1):
        raise Unsupported("kbit-triton gemv_4bit: needs a 16-entry code and a power-of-two blocksize")
    raw = packed_bytes(B)
    if raw.numel() < (N * K + 1) // 2 or absmax.numel() < formats.num_blocks(N * K, blocksize):
        raise Unsupported("kbit-triton gemv_4bit: packed weight or absmax too short for shapeB")
    if N == 0:
        return
    a = A.reshape(-1).contiguous()
    args = (a, raw, absmax.reshape(-1).contiguous(), code.reshape(-1).float().contiguous(), out, N, K, int(math.log2(blocksize)))
    with on_device(A):
        if interpreting():
            bn, bk = INTERPRETER_CONFIG
            gemv_4bit_kernel[(triton.cdiv(N, bn),)](*args, EVEN_K=K % 2 == 0, BLOCK_N=bn, BLOCK_K=bk, **FUSED_FP)
        else:
            _launcher()[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)](*args, EVEN_K=K % 2 == 0, **FUSED_FP)


def gemv_4bit(A, B, shapeB, absmax, code, blocksize):
    """A ``[..., K]`` (one row) @ dequant(B).T -> ``(*A.shape[:-1], N)`` in A.dtype."""
    out = torch.empty((*A.shape[:-1], shapeB[0]), dtype=A.dtype, device=A.device)
    gemv_into(A, B, shapeB, absmax, code, blocksize, out)
    return out


def gemv_4bit_out(A, B, shapeB, absmax, code, blocksize, out):
    """``.out`` overload: writes into ``out`` of the result's shape and A's dtype."""
    if out.is_contiguous():
        gemv_into(A, B, shapeB, absmax, code, blocksize, out)
    else:
        out.copy_(gemv_4bit(A, B, shapeB, absmax, code, blocksize))
