"""Blocking and nearest-code rounding shared by the reference quantize ops (see kbit.formats)."""

from __future__ import annotations

import torch

from .. import formats


def blockwise_scale(A: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split flat ``A`` into blocks; return (scaled values in [-1, 1] of shape [nb, blocksize], absmax f32 [nb]).

    The tail block is zero-padded; padding never raises a block's absmax.
    """
    flat = A.reshape(-1).to(torch.float32)
    n = flat.numel()
    nb = formats.num_blocks(n, blocksize)
    pad = nb * blocksize - n
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    blocks = flat.view(nb, blocksize)
    absmax = blocks.abs().amax(dim=1) if nb else flat.new_empty((0,))
    inv = 1.0 / absmax.clamp_min(formats.ABSMAX_EPS)
    scaled = (blocks * inv[:, None]).clamp_(-1.0, 1.0)
    return scaled, absmax


def nearest_code(values: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index into ``code`` of the nearest code value for each element (int64), ties to the lower value.

    ``code`` need not be sorted; boundaries are float32 midpoints of value-sorted neighbours.
    """
    sorted_code, order = torch.sort(code.to(torch.float32), stable=True)
    bounds = (sorted_code[:-1] + sorted_code[1:]) * 0.5
    pos = torch.searchsorted(bounds, values.contiguous(), right=False)
    return order[pos]
