"""Reference kbit::int8_mm_dequant: C = A * row_stats[r] * col_stats[c] / 127**2 (+ bias), float32 then dtype."""

from __future__ import annotations

import torch

from .. import formats


def int8_mm_dequant(A, row_stats, col_stats, dtype=None, bias=None):
    """int32 ``A [..., N]``, f32 ``row_stats [rows]``, ``col_stats [N]``, optional ``bias [N]`` -> ``A.shape``
    in ``dtype`` (default float16), computed in float32 with the constant ``INV_127_SQ``."""
    N = A.shape[-1]
    rows = A.numel() // N if N else 0
    out = A.reshape(rows, N).to(torch.float32) * (row_stats.view(rows, 1) * col_stats.view(1, N)) * formats.INV_127_SQ
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(dtype or torch.float16).view(A.shape)
