"""Metal sources, run-time compilation and dispatch of the kbit-mps kernels.

Each op's kernels live in ``<op>.metal`` (kernels_mps/ in the repository, ``kbit_mps/kernels`` in the
wheel) and include the local headers ``formats.h`` and ``nearest_code.h``. On first use of an op, its
file is read, the local includes are inlined, and ``torch.mps.compile_shader`` compiles it; the library
is cached for the process. Nothing here runs at import time.

Dispatch follows torch's binding of compiled kernels: arguments bind in declaration order, a tensor as a
``device`` buffer at its storage offset (so every tensor passed must be contiguous), a Python int as a
64-bit ``constant long&``, a Python float as a ``constant float&``. Grid kernels get one thread per work
item; SIMD kernels one threadgroup of ``SIMD_WIDTH`` threads (one SIMD-group) per block or row.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

import torch
from kbit.backends import Unsupported

#: Backend name (entry point name, KBIT_BACKENDS / KBIT_DISABLE key).
NAME = "mps"
#: Threads per SIMD-group on Apple GPUs (formats.h SIMD_WIDTH); SIMD kernels need exactly this width.
SIMD_WIDTH = 32
#: The kernels index with 32-bit unsigned integers; larger tensors go to the next provider.
MAX_ELEMENTS = 2**31 - 1
#: Suffix of each kernel's per-dtype entry point.
DTYPE_SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}

_LOCAL_INCLUDE = re.compile(r'^[ \t]*#include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)
_LIBRARIES: dict[str, object] = {}
_FAILED: dict[str, str] = {}
_KERNELS: dict[tuple[str, str], object] = {}


def kernel_dir() -> Path:
    """Folder of the Metal sources: the wheel's package data, else the repository checkout's kernels_mps/."""
    packaged = Path(__file__).resolve().parent / "kernels"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[4] / "kernels_mps"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"kbit-mps: Metal sources not found in {packaged} or {checkout}; reinstall kbit-mps")


def _inline(path: Path, seen: set[str]) -> str:
    def include(match: re.Match) -> str:
        name = match.group(1)
        if name in seen:
            return ""
        seen.add(name)
        return _inline(path.parent / name, seen)

    return _LOCAL_INCLUDE.sub(include, path.read_text(encoding="utf-8"))


def source(stem: str) -> str:
    """The Metal source of ``<stem>.metal`` with its local headers inlined, once each."""
    path = kernel_dir() / f"{stem}.metal"
    return _inline(path, {path.name})


def available() -> tuple[bool, str]:
    """(True, "") on macOS with an MPS device and a torch that has torch.mps.compile_shader; never compiles."""
    if sys.platform != "darwin":
        return False, f"needs macOS with an Apple GPU (Metal); this is {sys.platform}"
    if not hasattr(getattr(torch, "mps", None), "compile_shader") or not hasattr(torch._C, "_mps_compileShader"):
        return False, f"torch {torch.__version__} has no torch.mps.compile_shader (needs torch >= 2.6 built with MPS)"
    if not torch.backends.mps.is_available():
        return False, "no MPS device (torch.backends.mps.is_available() is False)"
    return True, ""


def _compile(text: str):
    return torch.mps.compile_shader(text)


def _requested() -> bool:
    return NAME in [s.strip() for s in os.environ.get("KBIT_BACKENDS", "").split(",")]


def _library(stem: str):
    lib = _LIBRARIES.get(stem)
    if lib is not None:
        return lib
    if stem in _FAILED:
        raise Unsupported(_FAILED[stem])
    try:
        lib = _compile(source(stem))
    except (RuntimeError, OSError) as exc:
        reason = f"kbit-mps {stem}: compiling {stem}.metal failed: {exc}"
        if _requested():
            raise RuntimeError(f"{reason} (KBIT_BACKENDS requested mps)") from exc
        _FAILED[stem] = reason
        warnings.warn(f"{reason}; the next provider serves {stem}; set KBIT_DISABLE={NAME} to silence this", RuntimeWarning, stacklevel=4)
        raise Unsupported(reason) from exc
    _LIBRARIES[stem] = lib
    return lib


def kernel(stem: str, name: str, simd: bool = False):
    """Kernel ``name`` of ``<stem>.metal`` (compiled on first use); SIMD kernels must run SIMD_WIDTH wide."""
    lib = _library(stem)
    fn = _KERNELS.get((stem, name))
    if fn is None:
        fn = _KERNELS[(stem, name)] = getattr(lib, name)
    if simd:
        width = getattr(fn, "thread_execution_width", SIMD_WIDTH)
        if width != SIMD_WIDTH:
            raise Unsupported(f"kbit-mps {name}: needs SIMD-groups of {SIMD_WIDTH} threads, this GPU runs {width}")
    return fn


def run_grid(stem: str, name: str, args: tuple, threads: int) -> None:
    """Dispatch a grid kernel over ``threads`` threads (one per work item)."""
    kernel(stem, name)(*args, threads=threads)


def run_simd(stem: str, name: str, args: tuple, groups: int) -> None:
    """Dispatch a SIMD kernel: ``groups`` threadgroups of one SIMD-group each."""
    kernel(stem, name, simd=True)(*args, threads=groups * SIMD_WIDTH, group_size=SIMD_WIDTH)


def suffix(op: str, dtype: torch.dtype) -> str:
    """Kernel name suffix for ``dtype``; Unsupported for dtypes without a kernel."""
    if dtype not in DTYPE_SUFFIX:
        raise Unsupported(f"kbit-mps {op}: no kernel for {dtype}")
    return DTYPE_SUFFIX[dtype]


def check(cond: bool, op: str, why: str) -> None:
    """Unsupported unless ``cond``: the configuration goes to the next provider (the reference)."""
    if not cond:
        raise Unsupported(f"kbit-mps {op}: {why}")


def check_tensors(op: str, device: torch.device, **tensors: torch.Tensor) -> None:
    """Every tensor on ``device`` and within MAX_ELEMENTS elements."""
    for name, t in tensors.items():
        check(t.device == device, op, f"{name} is on {t.device}, expected {device}")
        check(t.numel() <= MAX_ELEMENTS, op, f"{name} has {t.numel()} elements, more than {MAX_ELEMENTS}")


def check_float32(op: str, **tensors: torch.Tensor) -> None:
    """Scales and codes the kernels read as float32 buffers."""
    for name, t in tensors.items():
        check(t.dtype == torch.float32, op, f"{name} must be float32, got {t.dtype}")


def as_bytes(A: torch.Tensor) -> torch.Tensor:
    """The bytes of packed 4-bit data as a flat contiguous uint8 tensor (any storage dtype, any layout)."""
    flat = A.contiguous().reshape(-1)
    return flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)


def log2_blocksize(op: str, blocksize: int) -> int:
    """log2 of a power-of-two blocksize (the 4-bit kernels shift instead of dividing)."""
    check(blocksize > 0 and blocksize & (blocksize - 1) == 0, op, f"blocksize must be a power of two, got {blocksize}")
    return blocksize.bit_length() - 1


def sorted_code(stem: str, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values ascending, int32 original indices) of a float32 code, a stable sort by kbit_sort_code."""
    m = code.numel()
    values = torch.empty(m, dtype=torch.float32, device=code.device)
    order = torch.empty(m, dtype=torch.int32, device=code.device)
    run_grid(stem, "kbit_sort_code", (code, values, order, m), threads=m)
    return values, order
