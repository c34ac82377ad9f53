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


#: Half dtypes the CPU has matrix instructions for (bf16: AVX512-BF16 or AMX; f16: AMX-FP16), read once at
#: import (a traced function may not call torch.cpu's probes).
_CPU_HALF_MATMUL = {
    torch.bfloat16: torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported(),
    torch.float16: torch.cpu._is_amx_fp16_supported(),
}


def cpu_matmul_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kbit multiplies dequantized weights in on the CPU for activations of ``dtype``: ``dtype``
    itself where the CPU has matrix instructions for it, else float32. Without them torch's bf16 / f16
    matmul is several times slower than its float32 one (2-core AVX2 VM, 128x4096 @ 4096x4096.T: bf16
    150 ms, float32 40 ms)."""
    return dtype if _CPU_HALF_MATMUL.get(dtype, True) else torch.float32
