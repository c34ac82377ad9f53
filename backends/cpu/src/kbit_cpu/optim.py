"""Bindings of the optimizer ops: optimizer_update_32bit and optimizer_update_8bit_blockwise (in place).

Non-contiguous tensors are updated through contiguous copies that are written back.
"""

from __future__ import annotations

import contextlib

import torch
from kbit import formats
from kbit.backends import Unsupported

from . import _abi
from ._tensors import dtype_tag, on_cpu, ptr, threads

TWO_STATE = ("adam", "lamb", "ademamix")
#: Entries of the 8-bit state maps.
QMAP_SIZE = 256


def _tag(op: str, optimizer_name: str) -> int:
    tag = _abi.OPTIMIZER_TAGS.get(optimizer_name)
    if tag is None:
        raise Unsupported(f"kbit-cpu {op}: optimizer {optimizer_name!r}")
    return tag


def _check(op: str, name: str, t: torch.Tensor | None, dtype: torch.dtype, numel: int) -> None:
    if t is None:
        raise Unsupported(f"kbit-cpu {op}: {name} is required")
    if t.dtype != dtype or t.numel() != numel:
        raise Unsupported(f"kbit-cpu {op}: {name} must be {dtype} with {numel} elements, got {t.dtype} {t.numel()}")


class _InPlace(contextlib.ExitStack):
    """Hands out contiguous versions of tensors the kernel updates; copies them back on exit."""

    def __call__(self, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or t.is_contiguous():
            return t
        work = t.contiguous()
        self.callback(t.copy_, work)
        return work


def optimizer_update_32bit(
    optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, param_norm, beta1, beta2, beta3, alpha, eps,
    weight_decay, step, lr, gnorm_scale, skip_zeros=False,
):
    op = "optimizer_update_32bit"
    on_cpu(op, g, p, state1, state2, unorm_vec)
    tag = _tag(op, optimizer_name)
    dtype = dtype_tag(op, p.dtype)
    if g.dtype != p.dtype or g.numel() != p.numel():
        raise Unsupported(f"kbit-cpu {op}: g must match p")
    n = p.numel()
    moments = 2 if optimizer_name == "ademamix" else 1
    _check(op, "state1", state1, torch.float32, moments * n)
    two_state = optimizer_name in TWO_STATE
    if two_state:
        _check(op, "state2", state2, torch.float32, n)
    if unorm_vec is not None and (unorm_vec.dtype != torch.float32 or unorm_vec.numel() < 1):
        raise Unsupported(f"kbit-cpu {op}: unorm_vec must be float32 with at least 1 element")
    g = g.contiguous()  # kept alive in a local for the duration of the call
    with _InPlace() as inplace:
        _abi.call(
            op, "kbit_cpu_optimizer_update_32bit", tag, dtype, ptr(g), ptr(inplace(p)), ptr(inplace(state1)),
            ptr(inplace(state2) if two_state else None), ptr(inplace(unorm_vec)), n, max_unorm, param_norm, beta1, beta2,
            beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, int(bool(skip_zeros)), threads(),
        )


def optimizer_update_8bit_blockwise(
    optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps, step, lr, qmap1, qmap2, absmax1, absmax2,
    weight_decay, gnorm_scale, skip_zeros=False,
):
    op = "optimizer_update_8bit_blockwise"
    on_cpu(op, g, p, state1, state2, qmap1, qmap2, absmax1, absmax2)
    tag = _tag(op, optimizer_name)
    dtype = dtype_tag(op, p.dtype)
    if g.dtype != p.dtype or g.numel() != p.numel():
        raise Unsupported(f"kbit-cpu {op}: g must match p")
    n = p.numel()
    nb = formats.num_blocks(n, formats.OPTIMIZER_BLOCKSIZE)
    moments = 2 if optimizer_name == "ademamix" else 1
    _check(op, "state1", state1, torch.uint8, moments * n)
    _check(op, "absmax1", absmax1, torch.float32, moments * nb)
    _check(op, "qmap1", qmap1, torch.float32, QMAP_SIZE)
    two_state = optimizer_name in TWO_STATE
    if two_state:
        _check(op, "state2", state2, torch.uint8, n)
        _check(op, "absmax2", absmax2, torch.float32, nb)
        _check(op, "qmap2", qmap2, torch.float32, QMAP_SIZE)
    else:
        state2 = absmax2 = qmap2 = None
    g, qmap1 = g.contiguous(), qmap1.contiguous()  # kept alive in locals for the duration of the call
    qmap2 = None if qmap2 is None else qmap2.contiguous()
    with _InPlace() as inplace:
        _abi.call(
            op, "kbit_cpu_optimizer_update_8bit_blockwise", tag, dtype, ptr(g), ptr(inplace(p)),
            ptr(inplace(state1)), ptr(inplace(state2)), n, beta1, beta2, beta3, alpha, eps, step, lr,
            ptr(qmap1), ptr(qmap2), ptr(inplace(absmax1)),
            ptr(inplace(absmax2)), weight_decay, gnorm_scale, int(bool(skip_zeros)), threads(),
        )
