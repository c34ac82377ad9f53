"""Reference kbit::int8_vectorwise_dequant: A * stats[row] / 127 in float32."""

from __future__ import annotations

import torch

from .. import formats


def int8_vectorwise_dequant(A: torch.Tensor, stats: torch.Tensor):
    """int8 ``A [..., K]``, float32 ``stats [rows]`` -> float32 ``A.shape``: ``(A * stats[r]) / 127``.

    Written as SPEC §1 states it (a division by 127, not a multiply by a rounded 1/127), so the result
    is within one float32 rounding of the exact product on every backend.
    """
    K = A.shape[-1] if A.dim() else 1
    rows = A.numel() // K if K else 0
    out = A.reshape(rows, K).to(torch.float32) * stats.view(rows, 1) / formats.INT8_MAX
    return out.view(A.shape)
