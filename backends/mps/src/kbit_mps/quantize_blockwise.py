"""kbit::quantize_blockwise on MPS: kernels_mps/quantize_blockwise.metal, one SIMD-group per block.

The code (up to 256 entries, any order, duplicates allowed) is sorted on the GPU first by kbit_sort_code,
a stable sort, so the nearest-code rule is the reference's exactly.
"""

from __future__ import annotations

import torch
from kbit import formats

from . import library

STEM = "quantize_blockwise"
#: Codes index into uint8.
MAX_CODE_SIZE = 256


def quantize_blockwise(A, code, blocksize):
    n = A.numel()
    m = code.numel()
    sfx = library.suffix(STEM, A.dtype)
    library.check(0 < m <= MAX_CODE_SIZE, STEM, f"code must have 1 to {MAX_CODE_SIZE} entries, got {m}")
    library.check(0 < blocksize <= library.MAX_ELEMENTS, STEM, f"blocksize {blocksize} out of range")
    library.check_tensors(STEM, A.device, A=A, code=code)
    nb = formats.num_blocks(n, blocksize)
    q = torch.empty(A.shape, dtype=torch.uint8, device=A.device)
    absmax = torch.empty(nb, dtype=torch.float32, device=A.device)
    if n:
        values, order = library.sorted_code(STEM, code.to(torch.float32).contiguous())
        args = (A.contiguous(), values, order, q, absmax, n, blocksize, m)
        library.run_simd(STEM, f"kbit_quantize_blockwise_{sfx}", args, groups=nb)
    return q, absmax
