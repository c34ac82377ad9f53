"""kbit::quantize_4bit on MPS: kernels_mps/quantize_4bit.metal, one SIMD-group per block."""

from __future__ import annotations

import torch
from kbit import formats

from . import library
from .dequantize_4bit import QUANT_TYPE_ARG

STEM = "quantize_4bit"


def quantize_4bit(A, blocksize, quant_type, quant_storage):
    n = A.numel()
    sfx = library.suffix(STEM, A.dtype)
    library.check(quant_type in QUANT_TYPE_ARG, STEM, f"unknown quant_type {quant_type!r}")
    library.check(blocksize in formats.FOURBIT_BLOCKSIZES, STEM, f"blocksize {blocksize} is not a 4-bit blocksize")
    library.check(quant_storage in formats.PACKED_STORAGE_DTYPES, STEM, f"no packed storage {quant_storage}")
    count = formats.packed_4bit_numel(n, quant_storage)
    library.check(count >= 0, STEM, f"{(n + 1) // 2} packed bytes do not fill whole {quant_storage} elements")
    library.check_tensors(STEM, A.device, A=A)
    nb = formats.num_blocks(n, blocksize)
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8, device=A.device)
    absmax = torch.empty(nb, dtype=torch.float32, device=A.device)
    if n:
        args = (A.contiguous(), packed, absmax, n, library.log2_blocksize(STEM, blocksize), QUANT_TYPE_ARG[quant_type])
        library.run_simd(STEM, f"kbit_quantize_4bit_{sfx}", args, groups=nb)
    return packed.view(quant_storage).view(count, 1), absmax
