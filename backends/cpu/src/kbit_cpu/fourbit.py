"""Bindings of the 4-bit ops: quantize_4bit, dequantize_4bit (+ .out), gemv_4bit (+ .out), gemm_4bit.

Each function has the op's signature (kbit/_ops.py); the frontend validated the arguments. What the C
kernels do not handle raises :class:`kbit.backends.Unsupported`, and the next provider serves the call.
"""

from __future__ import annotations

import math

import torch
from kbit import formats
from kbit.backends import Unsupported
from kbit.functional.devices import cpu_matmul_dtype

from . import _abi
from ._tensors import dtype_tag, finish, float32_table, float32_vector, on_cpu, output, packed_bytes, ptr, threads, writable

#: M above which gemm_4bit dequantizes the weight tile by tile and lets torch multiply (_gemm_tiles).
GEMM_FUSED_MAX_M = 64
#: Bytes of one weight tile of that path (a whole number of rows, at least the alignment).
GEMM_TILE_BYTES = 8 << 20
#: M up to which gemm_4bit runs the gemv kernel on each row (weights read once for all rows).
GEMV_MAX_M = 4

#: The 16-entry codebooks, built once (the gemv route of gemm_4bit needs them per call).
_CODES = {qt: formats.code_4bit(qt) for qt in _abi.QUANT_TYPE_TAGS}


def _quant_type_tag(op: str, quant_type: str) -> int:
    tag = _abi.QUANT_TYPE_TAGS.get(quant_type)
    if tag is None:
        raise Unsupported(f"kbit-cpu {op}: quant_type {quant_type!r}")
    return tag


def quantize_4bit(A, blocksize, quant_type, quant_storage):
    op = "quantize_4bit"
    on_cpu(op, A)
    n = A.numel()
    count = formats.packed_4bit_numel(n, quant_storage)
    if count < 0:
        raise Unsupported(f"kbit-cpu {op}: {(n + 1) // 2} bytes do not fill whole {quant_storage} elements")
    tag, qt = dtype_tag(op, A.dtype), _quant_type_tag(op, quant_type)
    A = A.contiguous()
    packed = output((n + 1) // 2, torch.uint8)
    absmax = output(formats.num_blocks(n, blocksize), torch.float32)
    _abi.call(op, "kbit_cpu_quantize_4bit", ptr(A), tag, n, blocksize, qt, ptr(packed), ptr(absmax), threads())
    return packed.view(quant_storage).view(count, 1), absmax


def _dequantize_into(op, A, absmax, blocksize, quant_type, n, out):
    on_cpu(op, A, absmax, out)
    tag, qt = dtype_tag(op, out.dtype), _quant_type_tag(op, quant_type)
    raw = packed_bytes(op, A, (n + 1) // 2)
    scales = float32_vector(op, "absmax", absmax, formats.num_blocks(n, blocksize))
    _abi.call(op, "kbit_cpu_dequantize_4bit", ptr(raw), ptr(scales), n, blocksize, qt, ptr(out), tag, threads())


def dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
    out = output(list(shape), dtype)
    _dequantize_into("dequantize_4bit", A, absmax, blocksize, quant_type, out.numel(), out)
    return out


def dequantize_4bit_out(A, absmax, blocksize, quant_type, shape, dtype, out):
    target = writable(out)
    _dequantize_into("dequantize_4bit", A, absmax, blocksize, quant_type, math.prod(shape), target)
    finish(out, target)


def _gemv_into(A, B, shapeB, absmax, code, blocksize, out):
    op = "gemv_4bit"
    on_cpu(op, A, B, absmax, code, out)
    N, K = shapeB
    if A.numel() != K:
        raise Unsupported(f"kbit-cpu {op}: A must hold one row of K={K} elements, got shape {tuple(A.shape)}")
    if code.numel() != 16:
        raise Unsupported(f"kbit-cpu {op}: code must have 16 entries, got {code.numel()}")
    tag = dtype_tag(op, A.dtype)
    raw = packed_bytes(op, B, (N * K + 1) // 2)
    scales = float32_vector(op, "absmax", absmax, formats.num_blocks(N * K, blocksize))
    _gemv_call(op, A.contiguous(), tag, raw, scales, None, float32_table(code), 1, N, K, blocksize, out)


def _gemv_call(op, A, tag, raw, scales, nested, table, rows, N, K, blocksize, out):
    """The gemv kernel on validated, contiguous arguments: ``rows`` rows of A; ``nested``: (absmax_8bit,
    absmax_code, offset) as _denested returns them, with ``scales`` then the second-level scales."""
    q, q_code, offset = (None, None, 0.0) if nested is None else nested
    _abi.call(op, "kbit_cpu_gemv_4bit", A.data_ptr(), tag, raw.data_ptr(), scales.data_ptr(), ptr(q), ptr(q_code), offset,
              table.data_ptr(), rows, N, K, blocksize, out.data_ptr(), threads())


def gemv_4bit(A, B, shapeB, absmax, code, blocksize):
    out = output((*A.shape[:-1], shapeB[0]), A.dtype, like=A)
    _gemv_into(A, B, shapeB, absmax, code, blocksize, out)
    return out


def gemv_4bit_out(A, B, shapeB, absmax, code, blocksize, out):
    target = writable(out)
    _gemv_into(A, B, shapeB, absmax, code, blocksize, target)
    finish(out, target)


def _denested(op, absmax, nb, absmax_8bit, absmax_code, absmax_offset):
    """(q uint8, second-level scales, 256-entry code, offset) of nested absmax, validated for the kernel."""
    q = absmax_8bit.contiguous()
    if q.dtype != torch.uint8 or q.numel() < nb:
        raise Unsupported(f"kbit-cpu {op}: absmax_8bit must be uint8 with {nb} elements")
    scales = float32_vector(op, "absmax", absmax, formats.num_blocks(nb, formats.NESTED_BLOCKSIZE))
    table = float32_vector(op, "absmax_code", absmax_code, 256)
    return q, scales, table, absmax_offset.item()


def _tile_rows(N: int, K: int, blocksize: int, itemsize: int) -> int:
    """Rows of W per tile: about GEMM_TILE_BYTES, in multiples of the smallest row count whose elements
    fill whole absmax blocks and whole packed bytes, so that every tile starts a block at a byte."""
    unit = math.lcm(blocksize, 2)
    align = unit // math.gcd(K, unit)
    rows = max(align, GEMM_TILE_BYTES // (itemsize * K) // align * align)
    return min(N, rows)


def _gemm_tiles(op, A, raw, scales, M, N, K, blocksize, qt, bias):
    """``A @ W.T + bias`` for large M (compute-bound): W dequantized a tile of rows at a time into one
    scratch, each tile multiplied by torch straight into its columns of the result.

    The tiles are float32 where kbit's cpu_matmul_dtype says so: the weights are then code * absmax, not
    rounded to A's dtype (as on the gemv route), and the result is rounded to A's dtype once at the end.
    In A's own dtype a tile holds what the reference's dequantize + linear multiplies. Measured on the
    2-core AVX2 VM (NF4, bf16, float32 tiles, medians): 4096x4096 M = 65 25-29 ms against 91-108 ms for
    dequantize-to-bf16 + linear and 81-88 ms for dense bf16; M = 512 156-167 against 650-677 ms. A tile
    (GEMM_TILE_BYTES) stays in the caches between the dequantize kernel writing it and the matmul
    reading it, and no temporary holds the whole weight.
    """
    if N == 0 or K == 0:
        return torch.nn.functional.linear(A, A.new_zeros(N, K), bias)
    dtype = cpu_matmul_dtype(A.dtype)
    A2 = A.reshape(M, K).to(dtype)
    rows = _tile_rows(N, K, blocksize, dtype.itemsize)
    tile = torch.empty(rows * K, dtype=dtype)
    result = output((M, N), dtype)
    bias = None if bias is None else bias.to(dtype)
    raw_at, scales_at, tag, nthreads = raw.data_ptr(), scales.data_ptr(), dtype_tag(op, dtype), threads()
    for n0 in range(0, N, rows):
        n1 = min(N, n0 + rows)
        first, count = n0 * K, (n1 - n0) * K
        _abi.call(op, "kbit_cpu_dequantize_4bit", raw_at + first // 2, scales_at + 4 * (first // blocksize), count,
                  blocksize, qt, ptr(tile), tag, nthreads)
        w = tile[:count].view(n1 - n0, K)
        if bias is None:
            torch.mm(A2, w.t(), out=result[:, n0:n1])
        else:
            torch.addmm(bias[n0:n1], A2, w.t(), out=result[:, n0:n1])
    return result.view(*A.shape[:-1], N).to(A.dtype)


def gemm_4bit(A, B, shapeB, absmax, blocksize, quant_type, bias=None, absmax_8bit=None, absmax_code=None, absmax_offset=None):
    op = "gemm_4bit"
    on_cpu(op, A, B, absmax, bias, absmax_8bit, absmax_code, absmax_offset)
    N, K = shapeB
    M = A.numel() // K if K else math.prod(A.shape[:-1])
    tag, qt = dtype_tag(op, A.dtype), _quant_type_tag(op, quant_type)
    if bias is not None and bias.dtype != A.dtype:
        raise Unsupported(f"kbit-cpu {op}: bias dtype {bias.dtype} differs from A's {A.dtype}")
    nb = formats.num_blocks(N * K, blocksize)
    raw = packed_bytes(op, B, (N * K + 1) // 2)
    if absmax_8bit is not None:
        q, scales, table, offset = _denested(op, absmax, nb, absmax_8bit, absmax_code, absmax_offset)
    else:
        q, table, offset = None, None, 0.0
        scales = float32_vector(op, "absmax", absmax, nb)
    if M <= GEMV_MAX_M:
        # Decoding steps of matmul_4bit / Linear4bit (one row, or a few sequences): the gemv kernel on each
        # row, as SPEC §4 has XPU and MPS do for one row, nested absmax included. It accumulates
        # code[q] * absmax in float32 without first rounding each weight to A's dtype (the tiled kernel
        # below does, as the reference), which stays within the matmul tolerance and is faster: 4096x4096
        # NF4 bf16 on the 2-core AVX2 VM, M = 1: 0.45 against 2.2 ms.
        out = output((*A.shape[:-1], N), A.dtype, like=A)
        _gemv_call(op, A.contiguous(), tag, raw, scales, None if q is None else (q, table, offset), _CODES[quant_type], M,
                   N, K, blocksize, out)
        return out if bias is None else out.add_(bias)
    if M > GEMM_FUSED_MAX_M:
        if q is not None:
            idx = torch.arange(nb) // formats.NESTED_BLOCKSIZE
            scales = table[q[:nb].long()] * scales[idx] + offset
        return _gemm_tiles(op, A, raw, scales, M, N, K, blocksize, qt, bias)
    A = A.contiguous()
    bias = None if bias is None else bias.contiguous()
    out = output((*A.shape[:-1], N), A.dtype, like=A)
    _abi.call(
        op, "kbit_cpu_gemm_4bit", ptr(A), tag, M, ptr(raw), N, K, ptr(scales), blocksize, qt, ptr(bias),
        ptr(q), ptr(table), offset, ptr(out), threads(),
    )
    return out
