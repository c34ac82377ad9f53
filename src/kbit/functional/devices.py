"""Device and pointer helpers kept for bitsandbytes API compatibility."""

from __future__ import annotations

import ctypes

import torch


def is_on_gpu(tensors) -> bool:
    """True if every non-None tensor is on an accelerator; RuntimeError if they span devices.

    Paged tensors (``is_paged=True``) may live anywhere and are skipped.
    """
    on_gpu = True
    devices = set()
    for t in tensors:
        if t is None or getattr(t, "is_paged", False):
            continue
        on_gpu &= t.device.type != "cpu"
        devices.add((t.device.type, t.device.index))
    if len(devices) > 1:
        raise RuntimeError(f"kbit.is_on_gpu: all input tensors must be on the same device, found {sorted(map(str, devices))}")
    return on_gpu


def get_ptr(A) -> ctypes.c_void_p | None:
    """The data pointer of ``A`` as a ctypes void pointer (None for None)."""
    if A is None:
        return None
    return ctypes.c_void_p(A.data_ptr())


def has_avx512bf16() -> bool:
    """True if this x86 CPU reports the AVX512-BF16 instructions (Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            return " avx512_bf16" in f.read()
    except OSError:
        return False
