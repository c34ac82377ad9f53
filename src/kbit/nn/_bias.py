"""The bias cast shared by the quantized linear layers."""

from __future__ import annotations

import torch


def bias_for(bias: torch.nn.Parameter | None, dtype: torch.dtype):
    """`bias` in `dtype`: cast in place once (as bitsandbytes does), or as a new tensor while tracing (a
    traced graph cannot swap a parameter's dtype in place)."""
    if bias is None or bias.dtype == dtype:
        return bias
    if torch.compiler.is_compiling():
        return bias.to(dtype)
    bias.data = bias.data.to(dtype)
    return bias
