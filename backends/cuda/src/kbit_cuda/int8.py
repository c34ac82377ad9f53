"""LLM.int8() ops on CUDA: int8_vectorwise_quant, int8_vectorwise_dequant, int8_linear_matmul (+ .out),
int8_mm_dequant (fused bias), and int8_scaled_mm composed from the last two (kernels_cuda/<op>.cu)."""

from __future__ import annotations

import math

import torch

from ._launch import contiguous_target, dtype_tag, finish_out, ptr, require, run


def _rows_cols(A: torch.Tensor) -> tuple[int, int]:
    """(rows, K) of ``A`` viewed as [rows, A.shape[-1]] (a 0-dim tensor is one element)."""
    K = A.shape[-1] if A.dim() else 1
    return (A.numel() // K if K else 0), K


def int8_vectorwise_quant(A, threshold=0.0):
    op = "int8_vectorwise_quant"
    require(threshold >= 0.0, op, f"threshold {threshold} < 0")
    rows, K = _rows_cols(A)
    A = A.contiguous()
    out = torch.empty(A.shape, dtype=torch.int8, device=A.device)
    row_stats = torch.empty(rows, dtype=torch.float32, device=A.device)
    flags = torch.zeros(K, dtype=torch.int32, device=A.device) if threshold > 0.0 else None
    run(op, "kbit_cuda_int8_vectorwise_quant", A.device, ptr(A), dtype_tag(op, A.dtype), rows, K, threshold, ptr(out),
        ptr(row_stats), ptr(flags))
    cols = torch.nonzero(flags).view(-1) if flags is not None else None
    return out, row_stats, cols


def int8_vectorwise_dequant(A, stats):
    op = "int8_vectorwise_dequant"
    require(A.dtype == torch.int8, op, f"A has dtype {A.dtype}, expected int8")
    rows, K = _rows_cols(A)
    require(stats.numel() == rows, op, f"{stats.numel()} stats for {rows} rows")
    A = A.contiguous()
    stats = stats.to(torch.float32).contiguous()
    out = torch.empty(A.shape, dtype=torch.float32, device=A.device)
    run(op, "kbit_cuda_int8_vectorwise_dequant", A.device, ptr(A), ptr(stats), rows, K, ptr(out))
    return out


def _matmul_into(A, B, out):
    op = "int8_linear_matmul"
    require(A.dtype == torch.int8 and B.dtype == torch.int8, op, f"A {A.dtype}, B {B.dtype}: expected int8")
    require(B.dim() == 2 and A.dim() >= 1 and A.shape[-1] == B.shape[-1], op, "shapes")
    K = A.shape[-1]
    M = math.prod(A.shape[:-1])
    A = A.contiguous()
    B = B.contiguous()
    run(op, "kbit_cuda_int8_linear_matmul", A.device, ptr(A), ptr(B), M, B.shape[0], K, ptr(out))


def int8_linear_matmul(A, B):
    out = torch.empty((*A.shape[:-1], B.shape[0]), dtype=torch.int32, device=A.device)
    _matmul_into(A, B, out)
    return out


def int8_linear_matmul_out(A, B, out):
    target = contiguous_target(out)
    _matmul_into(A, B, target)
    finish_out(target, out)


def int8_mm_dequant(A, row_stats, col_stats, dtype=None, bias=None):
    op = "int8_mm_dequant"
    require(A.dtype == torch.int32, op, f"A has dtype {A.dtype}, expected int32")
    rows, N = _rows_cols(A)
    require(row_stats.numel() == rows and col_stats.numel() == N, op, "row_stats / col_stats sizes")
    require(bias is None or bias.numel() == N, op, "bias size")
    out = torch.empty(A.shape, dtype=dtype or torch.float16, device=A.device)
    A = A.contiguous()
    row_stats = row_stats.to(torch.float32).contiguous()
    col_stats = col_stats.to(torch.float32).contiguous()
    bias = None if bias is None else bias.to(torch.float32).contiguous()
    run(op, "kbit_cuda_int8_mm_dequant", A.device, ptr(A), ptr(row_stats), ptr(col_stats), ptr(bias), rows, N,
        ptr(out), dtype_tag(op, out.dtype))
    return out


def int8_scaled_mm(A, B, row_stats, col_stats, bias=None, dtype=None):
    return int8_mm_dequant(int8_linear_matmul(A, B), row_stats, col_stats, dtype, bias)
