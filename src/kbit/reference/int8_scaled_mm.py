"""Reference kbit::int8_scaled_mm: int8_mm_dequant(int8_linear_matmul(A, B), ...)."""

from __future__ import annotations

from .int8_linear_matmul import int8_linear_matmul
from .int8_mm_dequant import int8_mm_dequant


def int8_scaled_mm(A, B, row_stats, col_stats, bias=None, dtype=None):
    """int8 ``A [..., K]``, ``B [N, K]`` -> ``(*A.shape[:-1], N)`` in ``dtype`` (default float16)."""
    return int8_mm_dequant(int8_linear_matmul(A, B), row_stats, col_stats, dtype, bias)
