"""kbit::dequantize_blockwise (+ .out) on MPS: kernels_mps/dequantize_blockwise.metal, one thread per element."""

from __future__ import annotations

import torch
from kbit import formats

from . import library

STEM = "dequantize_blockwise"
#: The kernel reads code[q] for any byte q.
MIN_CODE_SIZE = 256


def _launch(A, absmax, code, blocksize, dtype, out) -> None:
    """Write the dequantized values into contiguous ``out``; Unsupported before any write otherwise."""
    n = A.numel()
    sfx = library.suffix(STEM, dtype)
    library.check(A.dtype == torch.uint8, STEM, f"A must be uint8, got {A.dtype}")
    library.check(0 < blocksize <= library.MAX_ELEMENTS, STEM, f"blocksize {blocksize} out of range")
    library.check_tensors(STEM, A.device, A=A, absmax=absmax, code=code, out=out)
    library.check_float32(STEM, absmax=absmax)
    library.check(out.numel() == n and out.dtype == dtype, STEM, f"out must hold {n} {dtype} values")
    library.check(code.numel() >= MIN_CODE_SIZE, STEM, f"code must have {MIN_CODE_SIZE} entries, got {code.numel()}")
    library.check(absmax.numel() >= formats.num_blocks(n, blocksize), STEM, "absmax has fewer entries than blocks")
    if n == 0:
        return
    args = (A.contiguous(), absmax.contiguous(), code.to(torch.float32).contiguous(), out, n, blocksize)
    library.run_grid(STEM, f"kbit_dequantize_blockwise_{sfx}", args, threads=n)


def dequantize_blockwise(A, absmax, code, blocksize, dtype):
    out = torch.empty(A.shape, dtype=dtype, device=A.device)
    _launch(A, absmax, code, blocksize, dtype, out)
    return out


def dequantize_blockwise_out(A, absmax, code, blocksize, dtype, out):
    if out.is_contiguous():
        _launch(A, absmax, code, blocksize, dtype, out)
    else:
        out.copy_(dequantize_blockwise(A, absmax, code, blocksize, dtype))
