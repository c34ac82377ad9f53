"""Tensor -> C argument conversions of the bindings: pointers, dtype tags, thread budget, output handling."""

from __future__ import annotations

import torch
from kbit.backends import Unsupported

from ._abi import DTYPE_TAGS

_TAGS = {getattr(torch, name): tag for name, tag in DTYPE_TAGS.items()}


def ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def dtype_tag(op: str, dtype: torch.dtype) -> int:
    tag = _TAGS.get(dtype)
    if tag is None:
        raise Unsupported(f"kbit-cpu {op}: dtype {dtype} has no kernel")
    return tag


def threads() -> int:
    """The thread budget of a call: torch's intra-op thread count, read at call time."""
    return torch.get_num_threads()


def on_cpu(op: str, *tensors: torch.Tensor | None) -> None:
    for t in tensors:
        if t is not None and t.device.type != "cpu":
            raise Unsupported(f"kbit-cpu {op}: tensors must be on the CPU, got {t.device}")


def packed_bytes(op: str, A: torch.Tensor, needed: int) -> torch.Tensor:
    """Flat contiguous uint8 view of packed 4-bit data of any storage dtype; at least ``needed`` bytes."""
    raw = A.contiguous().view(-1)
    if raw.dtype != torch.uint8:
        raw = raw.view(torch.uint8)
    if raw.numel() < needed:
        raise Unsupported(f"kbit-cpu {op}: packed data holds {raw.numel()} bytes, {needed} needed")
    return raw


def float32_vector(op: str, name: str, t: torch.Tensor, needed: int) -> torch.Tensor:
    """Contiguous float32 1-D view of ``t`` with at least ``needed`` elements."""
    if t.dtype != torch.float32:
        raise Unsupported(f"kbit-cpu {op}: {name} must be float32, got {t.dtype}")
    flat = t.contiguous().view(-1)
    if flat.numel() < needed:
        raise Unsupported(f"kbit-cpu {op}: {name} has {flat.numel()} elements, {needed} needed")
    return flat


def writable(out: torch.Tensor) -> torch.Tensor:
    """``out`` itself if the kernel can write it directly, else a contiguous scratch to copy back with finish()."""
    return out if out.is_contiguous() else torch.empty(out.shape, dtype=out.dtype)


def finish(out: torch.Tensor, written: torch.Tensor) -> None:
    if written is not out:
        out.copy_(written)
