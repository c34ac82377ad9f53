"""Reference kbit::int8_double_quant: row-wise and column-wise int8 of the same matrix, shared outliers."""

from __future__ import annotations

import torch

from .int8_vectorwise_quant import int8_vectorwise_quant, outlier_mask, scale_to_int8


def int8_double_quant(A: torch.Tensor, threshold: float = 0.0):
    """float ``A [..., K]`` -> (row codes, column codes (both int8 ``A.shape``), f32 row stats ``[rows]``,
    f32 column stats ``[K]``, outlier columns or None).

    The row half is :func:`int8_vectorwise_quant`. Column stats are the column max|A| with outliers
    masked to 0; column codes are ``round(A * 127 / col_stats)`` with outliers 0 (SPEC §5).
    """
    CA, row_stats, cols = int8_vectorwise_quant(A, threshold)
    K = A.shape[-1] if A.dim() else 1
    rows = A.numel() // K if K else 0
    A2 = A.reshape(rows, K).to(torch.float32)
    mask = outlier_mask(A2, threshold)
    if mask is not None:
        A2 = A2.masked_fill(mask, 0.0)
    col_stats = A2.abs().amax(dim=0) if rows else A2.new_zeros((K,))
    CAt = scale_to_int8(A2, col_stats, 0).to(torch.int8).view(A.shape)
    return CA, CAt, row_stats, col_stats, cols
