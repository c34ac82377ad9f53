"""Reference kbit::quantize_4bit: blockwise absmax + nearest NF4/FP4 code, two codes per byte."""

from __future__ import annotations

import torch

from .. import formats
from .blocks import blockwise_scale, nearest_code


def codes_4bit(scaled: torch.Tensor, quant_type: str) -> torch.Tensor:
    """Nearest code of the value-sorted table (stable sort, so FP4's +0 (code 0) sorts before -0 (code 8))."""
    return nearest_code(scaled, formats.code_4bit(quant_type, scaled.device))


def pack_nibbles(codes: torch.Tensor, zero_code: int) -> torch.Tensor:
    """Pack flat int codes (0..15) into bytes, even index in the high nibble; pads an odd tail with ``zero_code``."""
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_full((1,), zero_code)])
    pairs = codes.view(-1, 2).to(torch.uint8)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def quantize_4bit(A: torch.Tensor, blocksize: int, quant_type: str, quant_storage: torch.dtype):
    n = A.numel()
    count = formats.packed_4bit_numel(n, quant_storage)
    if count < 0:
        raise ValueError(
            f"kbit.quantize_4bit: {(n + 1) // 2} packed bytes do not fill whole {quant_storage} elements; "
            "use quant_storage=torch.uint8 or an element count that divides"
        )
    scaled, absmax = blockwise_scale(A, blocksize)
    codes = codes_4bit(scaled.reshape(-1)[:n], quant_type)
    packed = pack_nibbles(codes, formats.zero_code_4bit(quant_type))
    return packed.view(quant_storage).view(count, 1), absmax
