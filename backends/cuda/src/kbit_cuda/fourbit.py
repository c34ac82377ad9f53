"""4-bit ops on CUDA: quantize_4bit, dequantize_4bit (+ .out), gemv_4bit (+ .out), and gemm_4bit composed
from them (kernels_cuda/<op>.cu; packing in kbit.formats)."""

from __future__ import annotations

import math

import torch
from kbit import formats

from ._launch import (
    contiguous_target,
    dtype_tag,
    finish_out,
    packed_bytes,
    ptr,
    quant_tag,
    require,
    run,
)

_codes: dict[tuple[str, torch.device], torch.Tensor] = {}


def quantize_4bit(A, blocksize, quant_type, quant_storage):
    op = "quantize_4bit"
    n = A.numel()
    count = formats.packed_4bit_numel(n, quant_storage)
    require(count >= 0, op, f"{(n + 1) // 2} packed bytes do not fill whole {quant_storage} elements")
    A = A.contiguous()
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8, device=A.device)
    absmax = torch.empty(formats.num_blocks(n, blocksize), dtype=torch.float32, device=A.device)
    run(op, "kbit_cuda_quantize_4bit", A.device, ptr(A), dtype_tag(op, A.dtype), n, blocksize,
        quant_tag(op, quant_type), ptr(packed), ptr(absmax))
    return packed.view(quant_storage).view(count, 1), absmax


def _dequantize_into(op, A, absmax, blocksize, quant_type, n, out):
    raw = packed_bytes(A)
    require(raw.numel() >= (n + 1) // 2, op, f"{raw.numel()} packed bytes for {n} values")
    require(absmax.numel() >= formats.num_blocks(n, blocksize), op, f"{absmax.numel()} absmax values for {n} values")
    absmax = absmax.contiguous()
    run(op, "kbit_cuda_dequantize_4bit", raw.device, ptr(raw), ptr(absmax), n, blocksize, quant_tag(op, quant_type),
        ptr(out), dtype_tag(op, out.dtype))


def dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
    out = torch.empty(list(shape), dtype=dtype, device=A.device)
    _dequantize_into("dequantize_4bit", A, absmax, blocksize, quant_type, out.numel(), out)
    return out


def dequantize_4bit_out(A, absmax, blocksize, quant_type, shape, dtype, out):
    target = contiguous_target(out)
    _dequantize_into("dequantize_4bit", A, absmax, blocksize, quant_type, math.prod(shape), target)
    finish_out(target, out)


def _gemv_into(A, B, shapeB, absmax, code, blocksize, out):
    op = "gemv_4bit"
    N, K = shapeB
    require(A.numel() == K, op, f"A {tuple(A.shape)} is not a single row of {K} values")
    require(code.numel() == len(formats.NF4_CODE), op, f"code has {code.numel()} entries, expected 16")
    raw = packed_bytes(B)
    require(raw.numel() >= (N * K + 1) // 2, op, f"{raw.numel()} packed bytes for a [{N}, {K}] weight")
    require(absmax.numel() >= formats.num_blocks(N * K, blocksize), op, f"{absmax.numel()} absmax values")
    A = A.contiguous()
    absmax = absmax.contiguous()
    code = code.to(torch.float32).contiguous()
    run(op, "kbit_cuda_gemv_4bit", A.device, ptr(A), dtype_tag(op, A.dtype), ptr(raw), ptr(absmax), ptr(code), N, K,
        blocksize, ptr(out))


def gemv_4bit(A, B, shapeB, absmax, code, blocksize):
    out = torch.empty((*A.shape[:-1], shapeB[0]), dtype=A.dtype, device=A.device)
    _gemv_into(A, B, shapeB, absmax, code, blocksize, out)
    return out


def gemv_4bit_out(A, B, shapeB, absmax, code, blocksize, out):
    target = contiguous_target(out)
    _gemv_into(A, B, shapeB, absmax, code, blocksize, target)
    finish_out(target, out)


def _code(quant_type: str, device: torch.device) -> torch.Tensor:
    key = (quant_type, device)
    if key not in _codes:
        _codes[key] = formats.code_4bit(quant_type, device)
    return _codes[key]


def gemm_4bit(A, B, shapeB, absmax, blocksize, quant_type, bias=None, absmax_8bit=None, absmax_code=None,
              absmax_offset=None):
    """A @ dequant(W).T (+ bias): the gemv kernel for a single row (decode), else dequantize + torch's matmul."""
    from .blockwise import dequantize_blockwise

    if absmax_8bit is not None:
        absmax = dequantize_blockwise(absmax_8bit, absmax, absmax_code, formats.NESTED_BLOCKSIZE, torch.float32)
        absmax = absmax + absmax_offset
    if A.numel() == shapeB[1]:
        out = gemv_4bit(A, B, shapeB, absmax, _code(quant_type, A.device), blocksize)
        return out if bias is None else out + bias
    W = dequantize_4bit(B, absmax, blocksize, quant_type, list(shapeB), A.dtype)
    return torch.nn.functional.linear(A, W, bias)
