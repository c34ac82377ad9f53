"""Optimizer steps (SPEC §7, §8): bitsandbytes' ``optimizer_update_32bit`` and ``optimizer_update_8bit_blockwise``.

Both validate their arguments, then run one in-place step through the ``torch.ops.kbit`` op, which the
dispatcher sends to the backend serving ``p.device`` (the pure-torch reference otherwise).

Optimizer names (kernel names, not class names): "adam" (Adam, AdamW), "lamb", "ademamix", "momentum"
(SGD), "lars", "rmsprop", "adagrad", "lion". 2-state: adam, lamb, ademamix.
"""

from __future__ import annotations

import torch

from .. import formats
from ..reference.optimizer_rules import ADEMAMIX_MOMENTS, OPTIMIZER_NAMES, TWO_STATE, check_name

__all__ = ["OPTIMIZER_NAMES", "optimizer_update_32bit", "optimizer_update_8bit_blockwise"]

#: Entries of a quantization map (one per uint8 code).
QMAP_SIZE = 256


def _check_tensor(op: str, name: str, t, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"kbit.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"kbit.{op}: {name} must have dtype {dtype}, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"kbit.{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"kbit.{op}: {name} must be on p's device {device}, got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"kbit.{op}: {name} must be contiguous, got strides {t.stride()}")


def _check_common(op: str, optimizer_name: str, g, p, step: int) -> None:
    check_name(op, optimizer_name)
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"kbit.{op}: p must be a torch.Tensor, got {type(p).__name__}")
    if p.dtype not in formats.FLOAT_DTYPES:
        raise TypeError(f"kbit.{op}: p must be float16, bfloat16 or float32, got {p.dtype}")
    if not p.is_contiguous():
        raise ValueError(f"kbit.{op}: p must be contiguous, got strides {p.stride()}")
    _check_tensor(op, "g", g, tuple(p.shape), p.dtype, p.device)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"kbit.{op}: step must be an int >= 1, got {step!r}")


def _state1_shape(optimizer_name: str, p: torch.Tensor) -> tuple[int, ...]:
    if optimizer_name == "ademamix":
        return (ADEMAMIX_MOMENTS, *p.shape)
    return tuple(p.shape)


def _require(op: str, name: str, t, optimizer_name: str) -> None:
    if t is None:
        raise ValueError(f"kbit.{op}: {name} must be a tensor for the 2-state optimizer {optimizer_name!r}, got None")


def optimizer_update_32bit(
    optimizer_name: str,
    g: torch.Tensor,
    p: torch.Tensor,
    state1: torch.Tensor,
    beta1: float,
    eps: float,
    step: int,
    lr: float,
    state2: torch.Tensor | None = None,
    beta2: float = 0.0,
    beta3: float = 0.0,
    alpha: float = 0.0,
    weight_decay: float = 0.0,
    gnorm_scale: float = 1.0,
    unorm_vec: torch.Tensor | None = None,
    max_unorm: float = 0.0,
    skip_zeros: bool = False,
) -> None:
    """One in-place optimizer step with float32 states (p, state1, state2 and unorm_vec are updated).

    g, p: same shape, same float dtype (f16/bf16/f32), contiguous, same device; p is updated in float32
    and written back in p.dtype. state1: float32, ``p.shape`` (``[2, *p.shape]`` holding m1, m2 for
    "ademamix"). state2: float32 ``p.shape``, required for adam/lamb/ademamix. step: t >= 1 (the first
    update uses 1). max_unorm > 0 turns on the trust scale: unorm_vec (float32, ``[1]``) then receives
    the squared norm of the unscaled update and ``param_norm = ‖p‖`` is computed here. skip_zeros leaves
    elements whose gradient is exactly zero untouched.
    """
    op = "optimizer_update_32bit"
    _check_common(op, optimizer_name, g, p, step)
    _check_tensor(op, "state1", state1, _state1_shape(optimizer_name, p), torch.float32, p.device)
    if optimizer_name in TWO_STATE:
        _require(op, "state2", state2, optimizer_name)
    if state2 is not None:
        _check_tensor(op, "state2", state2, tuple(p.shape), torch.float32, p.device)
    param_norm = 0.0
    if max_unorm > 0.0:
        if unorm_vec is None:
            raise ValueError(f"kbit.{op}: unorm_vec must be a float32 tensor of shape (1,) when max_unorm > 0, got None")
        _check_tensor(op, "unorm_vec", unorm_vec, (1,), torch.float32, p.device)
        param_norm = float(torch.linalg.vector_norm(p.detach().float()))
    elif unorm_vec is not None:
        _check_tensor(op, "unorm_vec", unorm_vec, (1,), torch.float32, p.device)
    torch.ops.kbit.optimizer_update_32bit(
        optimizer_name, g, p, state1, state2, unorm_vec, float(max_unorm), param_norm,
        float(beta1), float(beta2), float(beta3), float(alpha), float(eps), float(weight_decay),
        step, float(lr), float(gnorm_scale), bool(skip_zeros),
    )


def optimizer_update_8bit_blockwise(
    optimizer_name: str,
    g: torch.Tensor,
    p: torch.Tensor,
    state1: torch.Tensor,
    state2: torch.Tensor | None,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: float,
    eps: float,
    step: int,
    lr: float,
    qmap1: torch.Tensor,
    qmap2: torch.Tensor | None,
    absmax1: torch.Tensor,
    absmax2: torch.Tensor | None,
    weight_decay: float = 0.0,
    gnorm_scale: float = 1.0,
    skip_zeros: bool = False,
) -> None:
    """One in-place optimizer step with blockwise 8-bit states (p, state1/2 and absmax1/2 are updated).

    g, p: same shape, same float dtype (f16/bf16/f32), contiguous, same device. Blocks are 256
    (``formats.OPTIMIZER_BLOCKSIZE``) consecutive elements of flat p; nb = ceil(numel / 256).
    state1: uint8 codes into qmap1 (float32 ``[256]``, the sorted signed dynamic map), ``p.shape``
    (``[2, *p.shape]`` for "ademamix"); absmax1: float32 ``[nb]`` (``[2, nb]`` for "ademamix").
    2-state optimizers (adam/lamb/ademamix) also need state2 (uint8 ``p.shape``), qmap2 (float32
    ``[256]``, the unsigned map) and absmax2 (float32 ``[nb]``); 1-state ones pass None. There is no
    trust scale; gradient elements that are NaN/Inf zero their states and leave p unchanged.
    """
    op = "optimizer_update_8bit_blockwise"
    _check_common(op, optimizer_name, g, p, step)
    nb = formats.num_blocks(p.numel(), formats.OPTIMIZER_BLOCKSIZE)
    ademamix = optimizer_name == "ademamix"
    _check_tensor(op, "state1", state1, _state1_shape(optimizer_name, p), torch.uint8, p.device)
    _check_tensor(op, "qmap1", qmap1, (QMAP_SIZE,), torch.float32, p.device)
    _check_tensor(op, "absmax1", absmax1, (ADEMAMIX_MOMENTS, nb) if ademamix else (nb,), torch.float32, p.device)
    if optimizer_name in TWO_STATE:
        for name, t in (("state2", state2), ("qmap2", qmap2), ("absmax2", absmax2)):
            _require(op, name, t, optimizer_name)
    if state2 is not None:
        _check_tensor(op, "state2", state2, tuple(p.shape), torch.uint8, p.device)
    if qmap2 is not None:
        _check_tensor(op, "qmap2", qmap2, (QMAP_SIZE,), torch.float32, p.device)
    if absmax2 is not None:
        _check_tensor(op, "absmax2", absmax2, (nb,), torch.float32, p.device)
    torch.ops.kbit.optimizer_update_8bit_blockwise(
        optimizer_name, g, p, state1, state2, float(beta1), float(beta2), float(beta3), float(alpha),
        float(eps), step, float(lr), qmap1, qmap2, absmax1, absmax2, float(weight_decay),
        float(gnorm_scale), bool(skip_zeros),
    )
