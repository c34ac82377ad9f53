"""Reference kbit::int8_mixed_scaled_mm: int8 product plus the float product of outlier columns."""

from __future__ import annotations

import torch

from .int8_scaled_mm import int8_scaled_mm
from .int8_vectorwise_dequant import int8_vectorwise_dequant


def int8_mixed_scaled_mm(A, CA, CB, SCA, SCB, outlier_cols=None, bias=None):
    """LLM.int8() product (SPEC §1): float ``A [..., K]`` and its codes ``CA`` / row stats ``SCA``, weight codes
    ``CB [N, K]`` / ``SCB [N]``, int64 ``outlier_cols``, optional ``bias [N]``.

    Returns ``(out, subA)``: out ``(*CA.shape[:-1], N)`` in A.dtype = int8_scaled_mm(..., dtype=A.dtype)
    + ``A[:, cols] @ dequant(CB[:, cols]).T`` (in A.dtype); subA = ``A[:, cols]`` ``[rows, n_outliers]``.
    """
    K = CA.shape[-1]
    rows = CA.numel() // K if K else 0
    out = int8_scaled_mm(CA, CB, SCA, SCB, bias, A.dtype)
    if outlier_cols is None or outlier_cols.numel() == 0:
        n_out = 0 if outlier_cols is None else outlier_cols.numel()
        return out, A.new_empty((rows, n_out))
    subA = A.reshape(rows, K)[:, outlier_cols]
    subB = int8_vectorwise_dequant(CB[:, outlier_cols].contiguous(), SCB).to(A.dtype)
    out = out + (subA @ subB.t()).view(out.shape)
    return out, subA
