"""Host side of nearest-code rounding: a code's sorted midpoints and sort order, as device tensors.

``rounding.nearest_code`` binary-searches the midpoints. They are computed with the reference's own
float32 expressions (``kbit.reference.blocks.nearest_code``): stable sort, ``(a + b) * 0.5``. Tables
are cached per code tensor (identity and version), so an optimizer step does not re-sort its qmaps.
"""

from __future__ import annotations

import dataclasses
import weakref

import torch

from kbit import formats

#: Most code tensors whose tables are kept (optimizer qmaps, codebooks); the cache is cleared when full.
_CACHE_SIZE = 64


@dataclasses.dataclass(frozen=True)
class SortedCode:
    """mids: f32 [2**steps], the midpoints padded with +inf; order: int32 [2**steps], sorted position ->
    code index (padded with 0); n_mids = len(code) - 1."""

    mids: torch.Tensor
    order: torch.Tensor
    n_mids: int
    steps: int


_tables: dict[int, tuple[weakref.ref, int, SortedCode]] = {}
_fourbit: dict[tuple[str, str], tuple[torch.Tensor, SortedCode]] = {}


def _build(code: torch.Tensor) -> SortedCode:
    values, order = torch.sort(code.reshape(-1).to(torch.float32), stable=True)
    mids = (values[:-1] + values[1:]) * 0.5
    n_mids = mids.numel()
    steps = max(n_mids, 1).bit_length()
    size = 1 << steps
    padded = torch.full((size,), float("inf"), dtype=torch.float32, device=code.device)
    padded[:n_mids] = mids
    order_padded = torch.zeros(size, dtype=torch.int32, device=code.device)
    order_padded[: order.numel()] = order.to(torch.int32)
    return SortedCode(padded, order_padded, n_mids, steps)


def sorted_code(code: torch.Tensor) -> SortedCode:
    """The midpoint table of ``code`` (any length >= 1, any order), cached while the tensor is unchanged."""
    if code.is_inference():  # no version counter to tell whether it changed
        return _build(code)
    key = id(code)
    hit = _tables.get(key)
    if hit is not None and hit[0]() is code and hit[1] == code._version:
        return hit[2]
    table = _build(code)
    if len(_tables) >= _CACHE_SIZE:
        _tables.clear()
    _tables[key] = (weakref.ref(code), code._version, table)
    return table


def fourbit(quant_type: str, device: torch.device) -> tuple[torch.Tensor, SortedCode]:
    """(16 code values f32, their midpoint table) of "nf4" or "fp4" on ``device``."""
    key = (quant_type, str(device))
    hit = _fourbit.get(key)
    if hit is None:
        values = formats.code_4bit(quant_type, device)
        hit = _fourbit[key] = (values, _build(values))
    return hit
