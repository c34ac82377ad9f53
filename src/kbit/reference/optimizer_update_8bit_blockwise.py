"""Reference kernel of ``kbit::optimizer_update_8bit_blockwise``: one optimizer step with blockwise 8-bit states.

SPEC §7 "8-bit blockwise step". Blocks are ``formats.OPTIMIZER_BLOCKSIZE`` (256) consecutive elements of
flat p; every state tensor shares that indexing and has one float32 absmax per block.

1. Dequantize: ``s = qmap[code] * absmax[block]``.
2. Apply the update rule of ``optimizer_rules`` in float32 (no trust scale). Decoupled weight decay
   multiplies p by ``1 - lr * wd`` after the step for the 2-state optimizers (adam, lamb, ademamix) and
   before it for lion; momentum/lars/rmsprop/adagrad add ``wd * p`` to the gradient.
3. Gradient elements that are NaN or Inf set their states to 0 and leave p unchanged; with skip_zeros,
   elements whose gradient is exactly zero keep p and their (dequantized) states.
4. Requantize: ``absmax = max|s|`` per block, ``s / absmax`` to the nearest code of the map (ties to the
   lower value, ``blocks.nearest_code``). qmap1 (signed) states then obey the sign rule: if the chosen
   code's sign is opposite to the value's, the index moves one step toward the value's sign (qmap1 is
   sorted ascending). qmap2 (unsigned, non-negative states) has no sign rule.
"""

from __future__ import annotations

import torch

from .. import formats
from . import blocks
from . import optimizer_rules as rules

_OP = "optimizer_update_8bit_blockwise"
#: Largest uint8 code (index of the last qmap entry).
_MAX_CODE = 255


def _dequantize_states(codes: torch.Tensor, qmap: torch.Tensor, absmax: torch.Tensor, n: int) -> torch.Tensor:
    """codes u8 [k, n], qmap f32 [256], absmax f32 [k, nb] -> float32 [k, n]."""
    block_scale = absmax.to(torch.float32).repeat_interleave(formats.OPTIMIZER_BLOCKSIZE, dim=1)[:, :n]
    return qmap.to(torch.float32)[codes.long()] * block_scale


def _sign_rule(idx: torch.Tensor, scaled: torch.Tensor, qmap: torch.Tensor) -> torch.Tensor:
    """Move each index one step toward the sign of ``scaled`` where ``qmap[idx]`` has the opposite sign."""
    chosen = qmap[idx]
    up = (chosen < 0) & (scaled > 0)
    down = (chosen > 0) & (scaled < 0)
    return (idx + up.long() - down.long()).clamp_(0, _MAX_CODE)


def _quantize_states(values: torch.Tensor, qmap: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """values f32 [k, n] -> (codes u8 [k, n], absmax f32 [k, nb]); each row is blocked on its own."""
    k, n = values.shape
    bs = formats.OPTIMIZER_BLOCKSIZE
    nb = formats.num_blocks(n, bs)
    padded = torch.nn.functional.pad(values, (0, nb * bs - n))
    scaled, absmax = blocks.blockwise_scale(padded, bs)
    qmap32 = qmap.to(torch.float32)
    idx = blocks.nearest_code(scaled, qmap32)
    if signed:
        idx = _sign_rule(idx, scaled, qmap32)
    codes = idx.reshape(k, nb * bs)[:, :n].to(torch.uint8)
    return codes, absmax.reshape(k, nb)


def _freeze(new: torch.Tensor, old: torch.Tensor, bad: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
    """States after the masks: ``old`` where the gradient is exactly zero (skip_zeros), 0 where it is NaN/Inf."""
    if zero is not None:
        new = torch.where(zero, old, new)
    return torch.where(bad, 0.0, new)


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
    weight_decay: float,
    gnorm_scale: float,
    skip_zeros: bool = False,
) -> None:
    """In place: p (written back rounded to p.dtype), state1, state2, absmax1, absmax2.

    g, p: same shape, float. state1: u8 ``p.shape`` (``[2, *p.shape]`` = m1, m2 for "ademamix");
    absmax1: f32 ``[nb]`` (``[2, nb]``); qmap1: f32 [256] signed, sorted. state2/qmap2/absmax2: u8
    ``p.shape`` / f32 [256] unsigned / f32 ``[nb]`` for adam, lamb, ademamix; None otherwise.
    "lamb" runs as adam and "lars" as momentum (no trust scale in 8-bit). g is not modified.
    """
    rule = rules.check_name(_OP, optimizer_name)
    n = p.numel()
    nb = formats.num_blocks(n, formats.OPTIMIZER_BLOCKSIZE)
    moments = rules.ADEMAMIX_MOMENTS if rule == "ademamix" else 1
    two_state = optimizer_name in rules.TWO_STATE

    grad = g.reshape(-1).to(torch.float32) * gnorm_scale
    p32 = p.reshape(-1).to(torch.float32)
    s1 = _dequantize_states(state1.reshape(moments, n), qmap1, absmax1.reshape(moments, nb), n)
    s2 = _dequantize_states(state2.reshape(1, n), qmap2, absmax2.reshape(1, nb), n)[0] if two_state else None
    s1_in = s1 if rule == "ademamix" else s1[0]

    u, s1_new, s2_new = rules.direction(
        rule, grad, p32, s1_in, s2, beta1, beta2, beta3, alpha, eps, weight_decay, step
    )
    factor = rules.decay_factor(optimizer_name, lr, weight_decay)
    if factor is None:
        p_new = p32 - u * lr
    elif two_state:
        p_new = (p32 - u * lr) * factor
    else:
        p_new = p32 * factor - u * lr

    bad = ~torch.isfinite(grad)
    zero = (g.reshape(-1) == 0) if skip_zeros else None
    p_new = torch.where(bad if zero is None else bad | zero, p32, p_new)
    codes1, new_absmax1 = _quantize_states(_freeze(s1_new, s1_in, bad, zero).reshape(moments, n), qmap1, signed=True)
    if two_state:
        codes2, new_absmax2 = _quantize_states(_freeze(s2_new, s2, bad, zero).reshape(1, n), qmap2, signed=False)
        state2.copy_(codes2.view(state2.shape))
        absmax2.copy_(new_absmax2.view(absmax2.shape))
    p.copy_(p_new.view(p.shape))
    state1.copy_(codes1.view(state1.shape))
    absmax1.copy_(new_absmax1.view(absmax1.shape))
