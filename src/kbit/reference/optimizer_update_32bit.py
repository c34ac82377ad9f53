"""Reference kernel of ``kbit::optimizer_update_32bit``: one optimizer step with float32 states (SPEC §7)."""

from __future__ import annotations

import torch

from . import optimizer_rules as rules

_OP = "optimizer_update_32bit"


def _trust_scale(
    u: torch.Tensor, unorm_vec: torch.Tensor | None, max_unorm: float, param_norm: float
) -> torch.Tensor:
    """s = max_unorm * ‖p‖ / ‖u‖ if ‖u‖ > max_unorm * ‖p‖ else 1 (a 0-dim float32 tensor, no host sync).

    ``unorm_vec[0]`` is overwritten with ‖u‖² (the sum a device kernel would accumulate block by block).
    """
    unorm_sq = (u * u).sum()
    if unorm_vec is not None:
        unorm_vec.fill_(unorm_sq)
    unorm = unorm_sq.sqrt()
    limit = max_unorm * param_norm
    return torch.where(unorm > limit, limit / unorm, torch.ones_like(unorm))


def optimizer_update_32bit(
    optimizer_name: str,
    g: torch.Tensor,
    p: torch.Tensor,
    state1: torch.Tensor,
    state2: torch.Tensor | None,
    unorm_vec: torch.Tensor | None,
    max_unorm: float,
    param_norm: float,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    step: int,
    lr: float,
    gnorm_scale: float,
    skip_zeros: bool = False,
) -> None:
    """In place: p (any float dtype, written back rounded to p.dtype), state1, state2, unorm_vec.

    g, p: same shape. state1: float32 ``p.shape`` (``[2, *p.shape]`` = m1, m2 for "ademamix"); state2:
    float32 ``p.shape`` (2-state optimizers) or None. All arithmetic is float32; g is scaled by
    gnorm_scale first. Decoupled weight decay (adam, lamb, ademamix, lion) multiplies p by
    ``1 - lr * wd`` before the step (the default/CPU order). max_unorm > 0 (not adagrad): ‖u‖² of the
    unscaled update u goes to ``unorm_vec[0]`` and the step is ``-lr * s * u`` with the clipping trust
    scale s of SPEC §7 (param_norm = ‖p‖ before the step, from the caller). skip_zeros: elements whose
    gradient is exactly zero keep p and their states (and add nothing to ‖u‖). g is not modified.
    """
    rule = rules.check_name(_OP, optimizer_name)
    grad = g.to(torch.float32) * gnorm_scale
    p32 = p.to(torch.float32)
    s1 = state1.to(torch.float32)
    s2 = state2.to(torch.float32) if optimizer_name in rules.TWO_STATE else None
    u, s1_new, s2_new = rules.direction(
        rule, grad, p32, s1, s2, beta1, beta2, beta3, alpha, eps, weight_decay, step
    )
    keep = (g == 0) if skip_zeros else None
    if keep is not None:
        u = u.masked_fill(keep, 0.0)
    update = u * lr
    if max_unorm > 0.0 and optimizer_name not in rules.NO_TRUST_SCALE:
        update = update * _trust_scale(u, unorm_vec, max_unorm, param_norm)
    factor = rules.decay_factor(optimizer_name, lr, weight_decay)
    p_new = (p32 * factor if factor is not None else p32) - update
    if keep is not None:
        p_new = torch.where(keep, p32, p_new)
        s1_new = torch.where(keep, s1, s1_new)
        if s2_new is not None:
            s2_new = torch.where(keep, s2, s2_new)
    p.copy_(p_new)
    state1.copy_(s1_new)
    if s2_new is not None:
        state2.copy_(s2_new)
