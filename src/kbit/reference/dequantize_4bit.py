"""Reference kbit::dequantize_4bit: unpack nibbles, look up the code, scale by the block's absmax."""

from __future__ import annotations

import torch

from .. import formats


def unpack_nibbles(A: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` 4-bit codes (int64) of packed ``A`` (any storage dtype, any layout of its bytes)."""
    raw = A.contiguous().view(-1).view(torch.uint8) if A.dtype != torch.uint8 else A.reshape(-1)
    codes = torch.stack([raw >> 4, raw & 0x0F], dim=1).view(-1)
    return codes[:n].long()


def dequantize_with_code(A, absmax, code, blocksize, shape, dtype):
    n = 1
    for s in shape:
        n *= s
    values = code.to(torch.float32)[unpack_nibbles(A, n)]
    scales = absmax.repeat_interleave(blocksize)[:n] if n else absmax.new_empty((0,))
    return (values * scales).to(dtype).view(shape)


def dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
    code = formats.code_4bit(quant_type, A.device)
    return dequantize_with_code(A, absmax, code, blocksize, list(shape), dtype)


def dequantize_4bit_out(A, absmax, blocksize, quant_type, shape, dtype, out):
    out.copy_(dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype))
