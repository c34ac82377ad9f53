"""Reference kbit::gemm_4bit: (de-nest absmax) + dequantize_4bit + linear, in A.dtype."""

from __future__ import annotations

import torch

from .. import formats
from .dequantize_4bit import dequantize_4bit
from .dequantize_blockwise import dequantize_blockwise


def gemm_4bit(A, B, shapeB, absmax, blocksize, quant_type, bias=None, absmax_8bit=None, absmax_code=None, absmax_offset=None):
    if absmax_8bit is not None:
        absmax = dequantize_blockwise(absmax_8bit, absmax, absmax_code, formats.NESTED_BLOCKSIZE, torch.float32)
        absmax = absmax + absmax_offset
    W = dequantize_4bit(B, absmax, blocksize, quant_type, list(shapeB), A.dtype)
    return torch.nn.functional.linear(A, W, bias)
