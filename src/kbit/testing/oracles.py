"""Oracles the conformance tests compare against: plain float64 math, written independently of kbit.reference."""

from __future__ import annotations

import torch

from .. import formats


def nearest_index(values: torch.Tensor, code) -> torch.Tensor:
    """SPEC §3 rounding by counting: the sorted position is the number of float32 midpoints of value-sorted
    neighbouring codes that lie strictly below the value (so a value on a midpoint takes the lower code).
    """
    code = torch.as_tensor(code, dtype=torch.float32).to(values.device)
    order = torch.sort(code, stable=True).indices
    ordered = code[order]
    mids = (ordered[:-1] + ordered[1:]) / 2
    below = (mids[None, :] < values.to(torch.float32)[:, None]).sum(dim=1)
    nan = torch.isnan(values)
    below = torch.where(nan, mids.numel(), below)
    return order[below]


def block_scales(x: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(absmax per block f32, per-element scaled values f32) for flat ``x``."""
    flat = x.reshape(-1).to(torch.float32)
    idx = torch.arange(flat.numel(), device=flat.device) // blocksize
    nb = formats.num_blocks(flat.numel(), blocksize)
    absmax = torch.zeros(nb, dtype=torch.float32, device=flat.device).scatter_reduce(0, idx, flat.abs(), "amax")
    inv = 1.0 / absmax.clamp_min(formats.ABSMAX_EPS)
    return absmax, (flat * inv[idx]).clamp(-1, 1)


def quantize_4bit(x: torch.Tensor, blocksize: int, quant_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 bytes, absmax) by brute force: nibble of element 2i is the high half of byte i."""
    absmax, scaled = block_scales(x, blocksize)
    codes = nearest_index(scaled, formats.NF4_CODE if quant_type == "nf4" else formats.FP4_CODE)
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_tensor([formats.zero_code_4bit(quant_type)])])
    hi, lo = codes[0::2], codes[1::2]
    return (hi * 16 + lo).to(torch.uint8), absmax


def dequantize_4bit(packed: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, n: int) -> torch.Tensor:
    b = packed.reshape(-1).view(torch.uint8).long()
    codes = torch.stack([b // 16, b % 16], 1).reshape(-1)[:n]
    table = torch.tensor(formats.NF4_CODE if quant_type == "nf4" else formats.FP4_CODE, dtype=torch.float32, device=b.device)
    return table[codes] * absmax[torch.arange(n, device=b.device) // blocksize]
