"""kbit::optimizer_update_32bit in Triton: one optimizer step with float32 states, in place.

Semantics of ``kbit.reference.optimizer_update_32bit`` (SPEC §7): g scaled by gnorm_scale; decoupled
weight decay multiplies p by ``1 - lr * wd`` before the step; skip_zeros freezes elements whose
gradient is exactly zero; p is written back rounded to its dtype. With a trust scale (max_unorm > 0,
not adagrad) a first launch sums ``‖u‖²`` per program, the host reduces the partial sums and forms
the clipping scale on the device (no synchronisation), and the update launch reads it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kbit.backends import Unsupported
from kbit.reference import optimizer_rules as ref

from . import optimizer_rules as rules
from .launch import EXACT_FP, on_device, require_contiguous, tiled
from .rounding import cast_rne

OP = "optimizer_update_32bit"
#: Elements per program.
BLOCK = 1024


@triton.jit
def optimizer_update_32bit_kernel(
    g_ptr, p_ptr, s1_ptr, s2_ptr, partial_ptr, trust_ptr, n,
    gnorm_scale, lr, decay, beta1, beta2, beta3, omb1, omb2, omb3, alpha, eps, weight_decay, c1, c2, first,
    RULE: tl.constexpr, TWO_STATE: tl.constexpr, DECOUPLED: tl.constexpr, COUPLED: tl.constexpr,
    SKIP_ZEROS: tl.constexpr, NORM_PASS: tl.constexpr, TRUST: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    idx = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = idx < n
    g_raw = tl.load(g_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    p = tl.load(p_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    s1 = tl.load(s1_ptr + idx, mask=ok, other=0.0)
    m2 = s1
    s2 = s1
    if RULE == rules.ADEMAMIX:
        m2 = tl.load(s1_ptr + n + idx, mask=ok, other=0.0)
    if TWO_STATE:
        s2 = tl.load(s2_ptr + idx, mask=ok, other=0.0)
    u, n1, nm2, n2 = rules.direction(
        g_raw * gnorm_scale, p, s1, m2, s2, beta1, beta2, beta3, omb1, omb2, omb3, alpha, eps, weight_decay,
        c1, c2, first, RULE, COUPLED,
    )
    keep = g_raw == 0.0
    if SKIP_ZEROS:
        u = tl.where(keep, 0.0, u)
    if NORM_PASS:
        tl.store(partial_ptr + pid, tl.sum(tl.where(ok, u * u, 0.0), axis=0), mask=pid < tl.num_programs(0))
    else:
        update = u * lr
        if TRUST:
            update = update * tl.load(trust_ptr + tl.zeros([BLOCK], dtype=tl.int32), mask=ok, other=1.0)
        if DECOUPLED:
            p_new = p * decay - update
        else:
            p_new = p - update
        if SKIP_ZEROS:
            p_new = tl.where(keep, p, p_new)
            n1 = tl.where(keep, s1, n1)
            nm2 = tl.where(keep, m2, nm2)
            n2 = tl.where(keep, s2, n2)
        tl.store(p_ptr + idx, cast_rne(p_new, p_ptr.dtype.element_ty), mask=ok)
        tl.store(s1_ptr + idx, n1, mask=ok)
        if RULE == rules.ADEMAMIX:
            tl.store(s1_ptr + n + idx, nm2, mask=ok)
        if TWO_STATE:
            tl.store(s2_ptr + idx, n2, mask=ok)


def optimizer_update_32bit(
    optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, param_norm, beta1, beta2, beta3, alpha, eps,
    weight_decay, step, lr, gnorm_scale, skip_zeros=False,
):
    """In place: p (f16/bf16/f32), state1 (f32 ``p.shape``; ``[2, *p.shape]`` for ademamix), state2
    (f32 ``p.shape`` for adam/lamb/ademamix), unorm_vec (f32 [1], ‖u‖² when max_unorm > 0)."""
    plan = rules.plan(OP, optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale)
    require_contiguous(OP, g=g, p=p, state1=state1, state2=state2 if plan.two_state else None)
    if state1.dtype != torch.float32 or (plan.two_state and (state2 is None or state2.dtype != torch.float32)):
        raise Unsupported(f"kbit-triton {OP}: states must be float32 tensors")
    n = p.numel()
    trust = max_unorm > 0.0 and optimizer_name not in ref.NO_TRUST_SCALE
    block = tiled(BLOCK)
    grid = (triton.cdiv(n, block),)
    s2 = state2 if plan.two_state else state1
    meta = dict(
        RULE=plan.rule, TWO_STATE=plan.two_state, DECOUPLED=plan.decoupled, COUPLED=plan.coupled,
        SKIP_ZEROS=bool(skip_zeros), TRUST=trust, BLOCK=block, **EXACT_FP,
    )
    with on_device(p):
        scale = state1
        if trust:
            partial = torch.zeros(grid[0], dtype=torch.float32, device=p.device)
            if n:
                optimizer_update_32bit_kernel[grid](g, p, state1, s2, partial, scale, n, *plan.scalars, NORM_PASS=True, **meta)
            unorm_sq = partial.sum()
            if unorm_vec is not None:
                unorm_vec.fill_(unorm_sq)
            unorm = unorm_sq.sqrt()
            limit = max_unorm * param_norm
            scale = torch.where(unorm > limit, limit / unorm, torch.ones_like(unorm)).reshape(1)
        if n:
            optimizer_update_32bit_kernel[grid](g, p, state1, s2, state1, scale, n, *plan.scalars, NORM_PASS=False, **meta)
