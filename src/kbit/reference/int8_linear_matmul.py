"""Reference kbit::int8_linear_matmul: exact A @ B.T with int32 accumulation, on any device.

int8 products summed over at most ``EXACT_F32_CHUNK`` terms stay within 2**24 in magnitude, so each
chunk is exact in float32 (a dtype every device multiplies); chunks are summed in int32.
"""

from __future__ import annotations

import math

import torch

#: 128 * 128 * 1024 = 2**24: the largest chunk whose float32 dot products are exact.
EXACT_F32_CHUNK = 1024


def int8_linear_matmul(A: torch.Tensor, B: torch.Tensor):
    """int8 ``A [..., K]`` @ int8 ``B [N, K]``.T -> int32 ``(*A.shape[:-1], N)``, exact (int32 wrap-around
    only beyond what an int32 accumulator holds)."""
    K = A.shape[-1]
    N = B.shape[0]
    M = math.prod(A.shape[:-1])
    A2 = A.reshape(M, K)
    chunks = max(1, -(-K // EXACT_F32_CHUNK))
    chunk = -(-K // chunks)  # equal chunks of at most EXACT_F32_CHUNK, at most chunks - 1 padded zeros
    pad = chunks * chunk - K
    a = torch.nn.functional.pad(A2.to(torch.float32), (0, pad)).view(M, chunks, chunk)
    b = torch.nn.functional.pad(B.to(torch.float32), (0, pad)).view(N, chunks, chunk)
    partial = torch.einsum("mck,nck->cmn", a, b).to(torch.int32)
    return partial.sum(dim=0, dtype=torch.int32).view(*A.shape[:-1], N)


def int8_linear_matmul_out(A, B, out):
    """``.out`` overload: writes :func:`int8_linear_matmul` into int32 ``out`` of the result's shape."""
    out.copy_(int8_linear_matmul(A, B))
