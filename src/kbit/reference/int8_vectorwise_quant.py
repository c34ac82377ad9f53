"""Reference kbit::int8_vectorwise_quant: row-wise absmax int8 (LLM.int8()), optional outlier columns."""

from __future__ import annotations

import torch

from .. import formats


def outlier_mask(A2: torch.Tensor, threshold: float) -> torch.Tensor | None:
    """Bool mask of ``|A| >= threshold`` elements of the 2-D view, or None for threshold 0."""
    if threshold == 0.0:
        return None
    return A2.abs() >= threshold


def scale_to_int8(A2: torch.Tensor, stats: torch.Tensor, dim: int) -> torch.Tensor:
    """round_half_even(A * 127 / stats) along ``dim`` (stats broadcast over the other dim); zero stats give 0.

    Evaluated as ``(A * 127) / stats`` in float32. For float16/bfloat16 inputs ``A * 127`` is exact in
    float32, so the quotient is the correctly rounded ``x * 127 / absmax`` and only the rounding to an
    integer remains. The bitsandbytes 0.50.2 fixture (linear8bitlt_thr6: 64x256 f16 weight) is
    reproduced bit for bit by this and by ``A * (127 / stats)`` alike (its 6 exact .5 ties round to
    +-64 either way), so it cannot tell the two apart; this ordering is the more accurate one.
    """
    s = stats.unsqueeze(dim)
    q = torch.round(A2 * formats.INT8_MAX / s)
    return torch.where(s == 0, 0.0, q).clamp_(-formats.INT8_MAX, formats.INT8_MAX)


def int8_vectorwise_quant(A: torch.Tensor, threshold: float = 0.0):
    """float ``A [..., K]`` -> (int8 ``A.shape``, float32 row absmax ``[rows]``, int64 outlier columns or None).

    SPEC §5: outliers are ``|A| >= threshold`` (threshold > 0); they are excluded from the row absmax and
    coded 0, and with more than one row their whole columns are coded 0. All-zero rows give stats 0, codes 0.
    """
    K = A.shape[-1] if A.dim() else 1
    rows = A.numel() // K if K else 0
    A2 = A.reshape(rows, K).to(torch.float32)
    mask = outlier_mask(A2, threshold)
    cols = None
    if mask is not None:
        cols = torch.nonzero(mask.any(dim=0)).view(-1)
        A2 = A2.masked_fill(mask, 0.0)
    if rows:
        row_stats = A2.abs().amax(dim=1)
    else:
        row_stats = A2.new_zeros((0,))
    q = scale_to_int8(A2, row_stats, 1)
    if cols is not None and rows > 1:
        q[:, cols] = 0.0
    return q.to(torch.int8).view(A.shape), row_stats, cols
