"""Reference kbit::quantize_blockwise: blockwise absmax + nearest entry of a 256-value code, one byte each."""

from __future__ import annotations

import torch

from .blocks import blockwise_scale, nearest_code


def quantize_blockwise(A: torch.Tensor, code: torch.Tensor, blocksize: int):
    n = A.numel()
    scaled, absmax = blockwise_scale(A, blocksize)
    q = nearest_code(scaled.reshape(-1)[:n], code).to(torch.uint8)
    return q.view(A.shape), absmax
