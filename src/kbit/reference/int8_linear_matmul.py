"""Reference kbit::int8_linear_matmul: exact A @ B.T with int32 accumulation, on any device.

int8 products summed over at most ``EXACT_F32_CHUNK`` terms stay below 2**24 in magnitude, so each
chunk is exact in float32 (a dtype every device multiplies); chunks are summed in int32.
"""

from __future__ import annotations

import torch

#: 128 * 128 * 1024 = 2**24: the largest chunk whose float32 dot products are exact.
EXACT_F32_CHUNK = 1024


def int8_linear_matmul(A: torch.Tensor, B: torch.Tensor):
    K = A.shape[-1]
    N = B.shape[0]
    M = A.numel() // K if K else 0
    A2 = A.reshape(M, K)
    chunks = -(-K // EXACT_F32_CHUNK)
    pad = chunks * EXACT_F32_CHUNK - K
    a = torch.nn.functional.pad(A2.to(torch.float32), (0, pad)).view(M, chunks, EXACT_F32_CHUNK)
    b = torch.nn.functional.pad(B.to(torch.float32), (0, pad)).view(N, chunks, EXACT_F32_CHUNK)
    partial = torch.einsum("mck,nck->cmn", a, b).to(torch.int32)
    return partial.sum(dim=0, dtype=torch.int32).view(*A.shape[:-1], N)


def int8_linear_matmul_out(A, B, out):
    out.copy_(int8_linear_matmul(A, B))
