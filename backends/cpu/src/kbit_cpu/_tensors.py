"""Tensor -> C argument conversions of the bindings: pointers, dtype tags, thread budget, output handling."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch
from kbit.backends import Unsupported

from ._abi import DTYPE_TAGS

_TAGS = {getattr(torch, name): tag for name, tag in DTYPE_TAGS.items()}


#: Outputs of at least this many bytes are advised to use transparent huge pages (see output()).
HUGE_OUTPUT_BYTES = 4 << 20
_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14


def _load_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _load_madvise()


def output(shape, dtype: torch.dtype, like: torch.Tensor | None = None) -> torch.Tensor:
    """A new output tensor for a kernel to fill (``torch.empty``; ``like.new_empty`` when ``like`` has
    ``dtype``, which costs less Python per call on the small outputs of matrix-vector products).

    Large outputs come from fresh mappings whose first write faults in every 4 KiB page; on Linux the
    whole 2 MiB pages inside one are advised to be transparent huge pages (MADV_HUGEPAGE, which the
    kernel honours when transparent_hugepage is ``madvise`` or ``always``) before the kernel writes
    them: one fault per 2 MiB. Measured on the 2-core VM: quantize_blockwise of 11008x4096 bf16 36 ->
    24 ms (the kernel alone: 20 ms). Advice only: any failure leaves the tensor as it is.
    """
    t = like.new_empty(shape) if like is not None and like.dtype == dtype else torch.empty(shape, dtype=dtype)
    nbytes = t.numel() * t.element_size()
    if _madvise is not None and nbytes >= HUGE_OUTPUT_BYTES:
        start = t.data_ptr()
        lo = (start + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        hi = (start + nbytes) & ~(_HUGE_PAGE - 1)
        if hi > lo:
            _madvise(lo, hi - lo, _MADV_HUGEPAGE)
    return t


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


# The helpers below run on every call: they return their argument itself where it already qualifies
# (a new view costs ~1 us, a sizeable part of a small call's ~15 us of Python around the kernel).


def on_cpu(op: str, *tensors: torch.Tensor | None) -> None:
    for t in tensors:
        if t is not None and not t.is_cpu:
            raise Unsupported(f"kbit-cpu {op}: tensors must be on the CPU, got {t.device}")


def packed_bytes(op: str, A: torch.Tensor, needed: int) -> torch.Tensor:
    """A contiguous tensor (``A`` itself if it is one) whose bytes are the packed 4-bit data, of any
    storage dtype; at least ``needed`` bytes."""
    raw = A if A.is_contiguous() else A.contiguous()
    held = raw.numel() * raw.element_size()
    if held < needed:
        raise Unsupported(f"kbit-cpu {op}: packed data holds {held} bytes, {needed} needed")
    return raw


def float32_vector(op: str, name: str, t: torch.Tensor, needed: int) -> torch.Tensor:
    """Contiguous float32 1-D form of ``t`` (``t`` itself if it is one) with at least ``needed`` elements."""
    if t.dtype != torch.float32:
        raise Unsupported(f"kbit-cpu {op}: {name} must be float32, got {t.dtype}")
    flat = t if t.dim() == 1 and t.is_contiguous() else t.contiguous().view(-1)
    if flat.numel() < needed:
        raise Unsupported(f"kbit-cpu {op}: {name} has {flat.numel()} elements, {needed} needed")
    return flat


def float32_table(t: torch.Tensor) -> torch.Tensor:
    """``t`` (a code table) as a contiguous float32 1-D tensor, ``t`` itself if it is one."""
    if t.dtype == torch.float32 and t.dim() == 1 and t.is_contiguous():
        return t
    return t.to(torch.float32).contiguous().view(-1)


def writable(out: torch.Tensor) -> torch.Tensor:
    """``out`` itself if the kernel can write it directly, else a contiguous scratch to copy back with finish()."""
    return out if out.is_contiguous() else output(out.shape, out.dtype)


def finish(out: torch.Tensor, written: torch.Tensor) -> None:
    if written is not out:
        out.copy_(written)
