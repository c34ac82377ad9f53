"""kbit::dequantize_4bit (+ .out) on MPS: kernels_mps/dequantize_4bit.metal, one thread per packed byte."""

from __future__ import annotations

import math

import torch
from kbit import formats

from . import library

STEM = "dequantize_4bit"
QUANT_TYPE_ARG = {"nf4": 0, "fp4": 1}  # formats.h QUANT_TYPE_NF4 / QUANT_TYPE_FP4


def _launch(A, absmax, blocksize, quant_type, shape, dtype, out) -> None:
    """Write the dequantized values into contiguous ``out``; Unsupported before any write otherwise."""
    n = math.prod(shape)
    sfx = library.suffix(STEM, dtype)
    library.check(quant_type in QUANT_TYPE_ARG, STEM, f"unknown quant_type {quant_type!r}")
    log2 = library.log2_blocksize(STEM, blocksize)
    library.check_tensors(STEM, A.device, A=A, absmax=absmax, out=out)
    library.check_float32(STEM, absmax=absmax)
    library.check(out.numel() == n and out.dtype == dtype, STEM, f"out must hold {n} {dtype} values")
    packed = library.as_bytes(A)
    library.check(packed.numel() >= (n + 1) // 2, STEM, f"A holds {packed.numel()} bytes, {n} values need {(n + 1) // 2}")
    library.check(absmax.numel() >= formats.num_blocks(n, blocksize), STEM, "absmax has fewer entries than blocks")
    if n == 0:
        return
    args = (packed, absmax.contiguous(), out, n, log2, QUANT_TYPE_ARG[quant_type])
    library.run_grid(STEM, f"kbit_dequantize_4bit_{sfx}", args, threads=(n + 1) // 2)


def dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
    out = torch.empty(list(shape), dtype=dtype, device=A.device)
    _launch(A, absmax, blocksize, quant_type, list(shape), dtype, out)
    return out


def dequantize_4bit_out(A, absmax, blocksize, quant_type, shape, dtype, out):
    if out.is_contiguous():
        _launch(A, absmax, blocksize, quant_type, list(shape), dtype, out)
    else:
        out.copy_(dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype))
