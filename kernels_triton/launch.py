"""Host side of every launch: run on the tensor's own device, and the checks a wrapper makes before it."""

from __future__ import annotations

import contextlib

import torch
import triton

from kbit.backends import Unsupported


def on_device(t: torch.Tensor):
    """Context that makes ``t``'s device current, so triton launches there (and on its current stream)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    if t.device.type == "xpu":
        return torch.xpu.device(t.device)
    return contextlib.nullcontext()


def interpreting() -> bool:
    """True when triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return bool(triton.knobs.runtime.interpret)


def require_contiguous(op: str, **tensors: torch.Tensor | None) -> None:
    """Raise Unsupported (the next provider serves the call) for in-place arguments that are not dense."""
    for name, t in tensors.items():
        if t is not None and not t.is_contiguous():
            raise Unsupported(f"kbit-triton {op}: {name} must be contiguous")


def flat(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a contiguous 1-D tensor (a view when it already is contiguous)."""
    return t.reshape(-1) if t.is_contiguous() else t.contiguous().view(-1)


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


#: Under the interpreter every tile operation costs Python overhead, so tiles grow by this factor.
INTERPRETER_TILE_SCALE = 8


def tiled(size: int) -> int:
    """A per-program tile dimension: ``size`` on a device, INTERPRETER_TILE_SCALE times it when interpreting."""
    return size * INTERPRETER_TILE_SCALE if interpreting() else size


#: Launch option of the kernels that reproduce the reference's float32 roundings: no contraction of
#: ``a * b + c`` into a fused multiply-add (also the default from triton 3.10 on).
EXACT_FP = {"enable_fp_fusion": False}
