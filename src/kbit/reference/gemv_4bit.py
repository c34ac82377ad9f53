"""Reference kbit::gemv_4bit: out = A @ dequant(B).T with float32 accumulation, stored in A.dtype."""

from __future__ import annotations

import torch

from .dequantize_4bit import dequantize_with_code


def gemv_4bit(A, B, shapeB, absmax, code, blocksize):
    W = dequantize_with_code(B, absmax, code, blocksize, list(shapeB), torch.float32)
    return torch.nn.functional.linear(A.to(torch.float32), W).to(A.dtype)


def gemv_4bit_out(A, B, shapeB, absmax, code, blocksize, out):
    out.copy_(gemv_4bit(A, B, shapeB, absmax, code, blocksize))
