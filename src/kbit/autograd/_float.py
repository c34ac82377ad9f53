"""The float matmuls of the autograd functions (input gradients, the 8-bit training path), run on the CPU
in the dtype it multiplies fastest (kbit.functional.devices.cpu_matmul_dtype) and returned in the
inputs' dtype.

Without bf16 / f16 matrix instructions torch's bf16 matmul is slow, and very slow for ``g @ W`` with both
operands row-major (an input gradient): 512x4096 @ 4096x4096 takes 68 s there against 0.7 s for
``x @ W.T`` and 0.24 s in float32 (2-core AVX2 VM). Elsewhere (other devices, float32, CPUs with the
instructions) these are the plain torch calls.
"""

from __future__ import annotations

import torch

from ..functional.devices import cpu_matmul_dtype


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return cpu_matmul_dtype(t.dtype) if t.device.type == "cpu" else t.dtype


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (same dtype) in a.dtype."""
    dtype = _compute_dtype(a)
    if dtype == a.dtype:
        return a @ b
    return (a.to(dtype) @ b.to(dtype)).to(a.dtype)


def linear(A: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(A, W, bias)`` (same dtype) in A.dtype."""
    dtype = _compute_dtype(A)
    if dtype == A.dtype:
        return torch.nn.functional.linear(A, W, bias)
    bias = None if bias is None else bias.to(dtype)
    return torch.nn.functional.linear(A.to(dtype), W.to(dtype), bias).to(A.dtype)
