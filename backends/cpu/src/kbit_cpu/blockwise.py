"""Bindings of the 8-bit blockwise ops: quantize_blockwise, dequantize_blockwise (+ .out)."""

from __future__ import annotations

import torch
from kbit import formats
from kbit.backends import Unsupported

from . import _abi
from ._tensors import dtype_tag, finish, float32_table, float32_vector, on_cpu, output, ptr, threads, writable

#: Entries of a blockwise code (the kernels index it with a byte).
CODE_SIZE = 256


def _code(op: str, code: torch.Tensor) -> torch.Tensor:
    if code.numel() != CODE_SIZE:
        raise Unsupported(f"kbit-cpu {op}: code must have {CODE_SIZE} entries, got {code.numel()}")
    return float32_table(code)


def quantize_blockwise(A, code, blocksize):
    op = "quantize_blockwise"
    on_cpu(op, A, code)
    tag = dtype_tag(op, A.dtype)
    table = _code(op, code)
    n = A.numel()
    A = A.contiguous()
    out = output(A.shape, torch.uint8)
    absmax = output(formats.num_blocks(n, blocksize), torch.float32)
    _abi.call(op, "kbit_cpu_quantize_blockwise", ptr(A), tag, n, ptr(table), blocksize, ptr(out), ptr(absmax), threads())
    return out, absmax


def _dequantize_into(A, absmax, code, blocksize, out):
    op = "dequantize_blockwise"
    on_cpu(op, A, absmax, code, out)
    if A.dtype != torch.uint8:
        raise Unsupported(f"kbit-cpu {op}: A must be uint8, got {A.dtype}")
    tag = dtype_tag(op, out.dtype)
    n = A.numel()
    q = A.contiguous()
    scales = float32_vector(op, "absmax", absmax, formats.num_blocks(n, blocksize))
    table = _code(op, code)
    _abi.call(op, "kbit_cpu_dequantize_blockwise", ptr(q), ptr(scales), ptr(table), n, blocksize, ptr(out), tag, threads())


def dequantize_blockwise(A, absmax, code, blocksize, dtype):
    out = output(A.shape, dtype)
    _dequantize_into(A, absmax, code, blocksize, out)
    return out


def dequantize_blockwise_out(A, absmax, code, blocksize, dtype, out):
    target = writable(out)
    _dequantize_into(A, absmax, code, blocksize, target)
    finish(out, target)
