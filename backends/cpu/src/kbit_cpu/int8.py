"""Bindings of the LLM.int8() ops: int8_vectorwise_quant, int8_double_quant, int8_vectorwise_dequant,
int8_linear_matmul (+ .out), int8_mm_dequant, int8_scaled_mm (the composition of the last two, both
native) and int8_mixed_scaled_mm (int8_scaled_mm plus the float product of the outlier columns in torch)."""

from __future__ import annotations

import math

import torch
from kbit.backends import Unsupported

from . import _abi
from ._tensors import dtype_tag, finish, float32_vector, on_cpu, output, ptr, threads, writable


def _rows(t):
    """(rows, row length) of ``t [..., K]`` taken as rows of its last dimension (a 0-d tensor: one row of one)."""
    K = t.shape[-1] if t.dim() else 1
    return (t.numel() // K if K else 0), K


def _quantize(op, A, threshold, double):
    """int8_vectorwise_quant's (CA, row_stats, outlier cols), with ``double`` int8_double_quant's five outputs."""
    on_cpu(op, A)
    if not (threshold == 0.0 or threshold > 0.0):
        raise Unsupported(f"kbit-cpu {op}: threshold must be 0 or positive, got {threshold}")
    tag = dtype_tag(op, A.dtype)
    rows, K = _rows(A)
    A = A.contiguous()
    out = output(A.shape, torch.int8)
    stats = output(rows, torch.float32)
    mask = torch.zeros(K, dtype=torch.uint8) if threshold > 0.0 else None
    if double:
        out_col, col_stats = output(A.shape, torch.int8), output(K, torch.float32)
        _abi.call(op, "kbit_cpu_int8_double_quant", ptr(A), tag, rows, K, threshold, ptr(out), ptr(stats), ptr(mask),
                  ptr(out_col), ptr(col_stats), threads())
    else:
        _abi.call(op, "kbit_cpu_int8_vectorwise_quant", ptr(A), tag, rows, K, threshold, ptr(out), ptr(stats), ptr(mask), threads())
    cols = None if mask is None else torch.nonzero(mask).view(-1)
    return (out, out_col, stats, col_stats, cols) if double else (out, stats, cols)


def int8_vectorwise_quant(A, threshold=0.0):
    return _quantize("int8_vectorwise_quant", A, threshold, double=False)


def int8_double_quant(A, threshold=0.0):
    return _quantize("int8_double_quant", A, threshold, double=True)


def int8_vectorwise_dequant(A, stats):
    op = "int8_vectorwise_dequant"
    on_cpu(op, A, stats)
    if A.dtype != torch.int8:
        raise Unsupported(f"kbit-cpu {op}: A must be int8, got {A.dtype}")
    rows, K = _rows(A)
    out = output(A.shape, torch.float32)
    if rows == 0:
        return out
    stats = float32_vector(op, "stats", stats, rows)
    A = A.contiguous()
    _abi.call(op, "kbit_cpu_int8_vectorwise_dequant", ptr(A), ptr(stats), rows, K, ptr(out), threads())
    return out


def _matmul_into(A, B, out):
    op = "int8_linear_matmul"
    on_cpu(op, A, B, out)
    if A.dtype != torch.int8 or B.dtype != torch.int8:
        raise Unsupported(f"kbit-cpu {op}: A and B must be int8, got {A.dtype} and {B.dtype}")
    K = A.shape[-1]
    M = math.prod(A.shape[:-1])
    N = B.shape[0]
    A, B = A.contiguous(), B.contiguous()
    _abi.call(op, "kbit_cpu_int8_linear_matmul", ptr(A), ptr(B), M, N, K, ptr(out), threads())


def int8_linear_matmul(A, B):
    out = output((*A.shape[:-1], B.shape[0]), torch.int32)
    _matmul_into(A, B, out)
    return out


def int8_linear_matmul_out(A, B, out):
    target = writable(out)
    _matmul_into(A, B, target)
    finish(out, target)


def int8_mm_dequant(A, row_stats, col_stats, dtype=None, bias=None):
    op = "int8_mm_dequant"
    on_cpu(op, A, row_stats, col_stats, bias)
    if A.dtype != torch.int32:
        raise Unsupported(f"kbit-cpu {op}: A must be int32, got {A.dtype}")
    dtype = dtype or torch.float16
    tag = dtype_tag(op, dtype)
    rows, N = _rows(A)
    out = output(A.shape, dtype)
    if rows == 0:
        return out
    rs = float32_vector(op, "row_stats", row_stats, rows)
    cs = float32_vector(op, "col_stats", col_stats, N)
    bias_tag = 0
    if bias is not None:
        bias_tag = dtype_tag(op, bias.dtype)
        if bias.numel() < N:
            raise Unsupported(f"kbit-cpu {op}: bias has {bias.numel()} elements, {N} needed")
        bias = bias.contiguous()
    A = A.contiguous()
    _abi.call(op, "kbit_cpu_int8_mm_dequant", ptr(A), ptr(rs), ptr(cs), ptr(bias), bias_tag, rows, N, ptr(out), tag, threads())
    return out


def int8_scaled_mm(A, B, row_stats, col_stats, bias=None, dtype=None):
    return int8_mm_dequant(int8_linear_matmul(A, B), row_stats, col_stats, dtype, bias)


def int8_mixed_scaled_mm(A, CA, CB, SCA, SCB, outlier_cols=None, bias=None):
    """LLM.int8() with outliers (SPEC §1): the int8 product by the native int8_scaled_mm, plus
    ``A[:, cols] @ dequant(CB[:, cols]).T`` in torch, where cols are the few outlier columns (without
    this the op fell back to the reference's float32 matmul: 50x slower at 4096x4096, batch 1)."""
    op = "int8_mixed_scaled_mm"
    on_cpu(op, A, CA, CB, SCA, SCB, outlier_cols, bias)
    if not A.is_floating_point():
        raise Unsupported(f"kbit-cpu {op}: A must be floating point, got {A.dtype}")
    rows, K = _rows(CA)
    out = int8_scaled_mm(CA, CB, SCA, SCB, bias, A.dtype)
    n_out = 0 if outlier_cols is None else outlier_cols.numel()
    if n_out == 0:
        return out, A.new_empty((rows, n_out))
    subA = A.reshape(rows, K)[:, outlier_cols]
    subB = int8_vectorwise_dequant(CB[:, outlier_cols], SCB).to(A.dtype)
    out += (subA @ subB.t()).view(out.shape)
    return out, subA
