"""8-bit blockwise ops on CUDA: quantize_blockwise and dequantize_blockwise (+ .out), any blocksize and any
code of at most 256 values (kernels_cuda/<op>.cu)."""

from __future__ import annotations

import torch
from kbit import formats

from ._launch import constant, contiguous_target, dtype_tag, finish_out, ptr, require, run


def _code(op: str, code: torch.Tensor) -> torch.Tensor:
    require(1 <= code.numel() <= constant("KBIT_CODE_MAX_SIZE"), op, f"code has {code.numel()} entries")
    return code.to(torch.float32).contiguous()


def quantize_blockwise(A, code, blocksize):
    op = "quantize_blockwise"
    code = _code(op, code)
    A = A.contiguous()
    n = A.numel()
    q = torch.empty(A.shape, dtype=torch.uint8, device=A.device)
    absmax = torch.empty(formats.num_blocks(n, blocksize), dtype=torch.float32, device=A.device)
    run(op, "kbit_cuda_quantize_blockwise", A.device, ptr(A), dtype_tag(op, A.dtype), n, ptr(code), code.numel(),
        blocksize, ptr(q), ptr(absmax))
    return q, absmax


def _dequantize_into(A, absmax, code, blocksize, out):
    op = "dequantize_blockwise"
    require(A.dtype == torch.uint8, op, f"A has dtype {A.dtype}, expected uint8")
    code = _code(op, code)
    n = A.numel()
    require(absmax.numel() >= formats.num_blocks(n, blocksize), op, f"{absmax.numel()} absmax values for {n} values")
    A = A.contiguous()
    absmax = absmax.contiguous()
    run(op, "kbit_cuda_dequantize_blockwise", A.device, ptr(A), ptr(absmax), ptr(code), code.numel(), n, blocksize,
        ptr(out), dtype_tag(op, out.dtype))


def dequantize_blockwise(A, absmax, code, blocksize, dtype):
    out = torch.empty(A.shape, dtype=dtype, device=A.device)
    _dequantize_into(A, absmax, code, blocksize, out)
    return out


def dequantize_blockwise_out(A, absmax, code, blocksize, dtype, out):
    target = contiguous_target(out)
    _dequantize_into(A, absmax, code, blocksize, target)
    finish_out(target, out)
