"""Reference kbit::dequantize_blockwise: y = code[q] * absmax[i // blocksize], cast to dtype, A's shape."""

from __future__ import annotations

import torch


def dequantize_blockwise(A, absmax, code, blocksize, dtype):
    n = A.numel()
    values = code.to(torch.float32)[A.reshape(-1).long()]
    scales = absmax.repeat_interleave(blocksize)[:n] if n else absmax.new_empty((0,))
    return (values * scales).to(dtype).view(A.shape)


def dequantize_blockwise_out(A, absmax, code, blocksize, dtype, out):
    out.copy_(dequantize_blockwise(A, absmax, code, blocksize, dtype))
