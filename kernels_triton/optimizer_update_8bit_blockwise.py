"""kbit::optimizer_update_8bit_blockwise in Triton: one optimizer step with blockwise 8-bit states, in place.

Semantics of ``kbit.reference.optimizer_update_8bit_blockwise`` (SPEC §7 "8-bit blockwise step"). Each
block of ``OPTIMIZER_BLOCKSIZE`` (256) elements of flat p and of every state is handled on its own:
dequantize the states (``qmap[code] * absmax[block]``), apply the rule, freeze elements with a NaN/Inf
gradient (states 0, p kept) or, with skip_zeros, a zero gradient, and requantize each state: new
absmax = max|s|, nearest code of the sorted map (ties to the lower value), then for qmap1 the sign
rule. Decoupled decay comes after the step for 2-state rules and before it for lion. A program
handles ``ROWS`` blocks as a [ROWS, 256] tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kbit import formats
from kbit.backends import Unsupported

from . import codebook
from . import optimizer_rules as rules
from .launch import EXACT_FP, on_device, require_contiguous, tiled
from .rounding import INF, block_absmax, cast_rne, inverse_absmax, nearest_code, scale_clamped

OP = "optimizer_update_8bit_blockwise"
#: Entries of a state map; the sign rule keeps indices within [0, QMAP_SIZE - 1].
QMAP_SIZE = 256
MAX_CODE = tl.constexpr(QMAP_SIZE - 1)
#: Blocks of 256 per program.
ROWS = 4


@triton.jit
def _dequantize(codes_ptr, qmap_ptr, absmax_ptr, idx, ok, scale_idx, scale_ok):
    """qmap[code] * absmax[block] (float32) for a [ROWS, BLOCK] tile: one block per row."""
    code = tl.load(codes_ptr + idx, mask=ok, other=0).to(tl.int32)
    scale = tl.load(absmax_ptr + scale_idx, mask=scale_ok, other=0.0)
    return tl.load(qmap_ptr + code, mask=ok, other=0.0) * scale[:, None]


@triton.jit
def _requantize(s, idx, ok, scale_idx, scale_ok, codes_ptr, absmax_ptr, qmap_ptr, mids_ptr, order_ptr, n_mids,
                STEPS: tl.constexpr, SIGNED: tl.constexpr):
    """Store codes and per-row absmax of the new state values ``s`` (a [ROWS, BLOCK] tile)."""
    s = tl.where(ok, s, 0.0)
    absmax = block_absmax(s, 1)
    scaled = scale_clamped(s, inverse_absmax(absmax)[:, None])
    code = nearest_code(scaled, mids_ptr, order_ptr, n_mids, STEPS)
    if SIGNED:
        chosen = tl.load(qmap_ptr + code, mask=ok, other=0.0)
        code += ((chosen < 0) & (scaled > 0)).to(tl.int32) - ((chosen > 0) & (scaled < 0)).to(tl.int32)
        code = tl.where(code < 0, 0, tl.where(code > MAX_CODE, MAX_CODE, code))
    tl.store(codes_ptr + idx, code.to(tl.uint8), mask=ok)
    tl.store(absmax_ptr + scale_idx, absmax, mask=scale_ok)


@triton.jit
def optimizer_update_8bit_blockwise_kernel(
    g_ptr, p_ptr, state1_ptr, state2_ptr, qmap1_ptr, qmap2_ptr, absmax1_ptr, absmax2_ptr,
    mids1_ptr, order1_ptr, mids2_ptr, order2_ptr, n, n_blocks, n_mids1, n_mids2,
    gnorm_scale, lr, decay, beta1, beta2, beta3, omb1, omb2, omb3, alpha, eps, weight_decay, c1, c2, first,
    RULE: tl.constexpr, TWO_STATE: tl.constexpr, DECOUPLED: tl.constexpr, COUPLED: tl.constexpr,
    SKIP_ZEROS: tl.constexpr, STEPS1: tl.constexpr, STEPS2: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    blocks = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    block_ok = blocks < n_blocks
    idx = blocks[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    ok = block_ok[:, None] & (idx < n)
    g_raw = tl.load(g_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    g = g_raw * gnorm_scale
    p = tl.load(p_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    s1 = _dequantize(state1_ptr, qmap1_ptr, absmax1_ptr, idx, ok, blocks, block_ok)
    m2 = s1
    s2 = s1
    if RULE == rules.ADEMAMIX:  # m2 is the second [n] half of state1, with the second row of absmax1
        m2 = _dequantize(state1_ptr, qmap1_ptr, absmax1_ptr, n + idx, ok, n_blocks + blocks, block_ok)
    if TWO_STATE:
        s2 = _dequantize(state2_ptr, qmap2_ptr, absmax2_ptr, idx, ok, blocks, block_ok)
    u, n1, nm2, n2 = rules.direction(
        g, p, s1, m2, s2, beta1, beta2, beta3, omb1, omb2, omb3, alpha, eps, weight_decay, c1, c2, first,
        RULE, COUPLED,
    )
    if DECOUPLED:
        if TWO_STATE:
            p_new = (p - u * lr) * decay
        else:
            p_new = p * decay - u * lr
    else:
        p_new = p - u * lr

    bad = ~(tl.abs(g) < INF)
    if SKIP_ZEROS:
        zero = g_raw == 0.0
    else:
        zero = tl.zeros([ROWS, BLOCK], dtype=tl.int1)
    p_new = tl.where(bad | zero, p, p_new)
    tl.store(p_ptr + idx, cast_rne(p_new, p_ptr.dtype.element_ty), mask=ok)

    n1 = tl.where(bad, 0.0, tl.where(zero, s1, n1))
    _requantize(n1, idx, ok, blocks, block_ok, state1_ptr, absmax1_ptr, qmap1_ptr, mids1_ptr, order1_ptr, n_mids1, STEPS1, True)
    if RULE == rules.ADEMAMIX:
        nm2 = tl.where(bad, 0.0, tl.where(zero, m2, nm2))
        _requantize(nm2, n + idx, ok, n_blocks + blocks, block_ok, state1_ptr, absmax1_ptr, qmap1_ptr, mids1_ptr,
                    order1_ptr, n_mids1, STEPS1, True)
    if TWO_STATE:
        n2 = tl.where(bad, 0.0, tl.where(zero, s2, n2))
        _requantize(n2, idx, ok, blocks, block_ok, state2_ptr, absmax2_ptr, qmap2_ptr, mids2_ptr, order2_ptr, n_mids2, STEPS2, False)


def optimizer_update_8bit_blockwise(
    optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps, step, lr, qmap1, qmap2, absmax1, absmax2,
    weight_decay, gnorm_scale, skip_zeros=False,
):
    """In place: p (f16/bf16/f32), state1/state2 (u8 codes), absmax1/absmax2 (f32 per block of 256).

    state1 ``p.shape`` (``[2, *p.shape]`` for ademamix, absmax1 ``[2, nb]``); qmap1 signed and qmap2
    unsigned, 256 entries each; state2/qmap2/absmax2 only for adam, lamb and ademamix."""
    plan = rules.plan(OP, optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale)
    two = plan.two_state
    require_contiguous(OP, g=g, p=p, state1=state1, absmax1=absmax1, state2=state2 if two else None, absmax2=absmax2 if two else None)
    if qmap1.numel() != QMAP_SIZE or (two and (qmap2 is None or qmap2.numel() != QMAP_SIZE)):
        raise Unsupported(f"kbit-triton {OP}: state maps must have {QMAP_SIZE} entries")
    n = p.numel()
    if n == 0:
        return
    n_blocks = formats.num_blocks(n, formats.OPTIMIZER_BLOCKSIZE)
    t1, q1 = codebook.sorted_code(qmap1), qmap1.float().contiguous()
    if two:
        t2, s2, q2, a2 = codebook.sorted_code(qmap2), state2, qmap2.float().contiguous(), absmax2
    else:  # not read by 1-state rules; any valid pointers do
        t2, s2, q2, a2 = t1, state1, q1, absmax1
    rows = tiled(ROWS)
    with on_device(p):
        optimizer_update_8bit_blockwise_kernel[(triton.cdiv(n_blocks, rows),)](
            g, p, state1, s2, q1, q2, absmax1, a2, t1.mids, t1.order, t2.mids, t2.order,
            n, n_blocks, t1.n_mids, t2.n_mids, *plan.scalars,
            RULE=plan.rule, TWO_STATE=two, DECOUPLED=plan.decoupled, COUPLED=plan.coupled,
            SKIP_ZEROS=bool(skip_zeros), STEPS1=t1.steps, STEPS2=t2.steps, ROWS=rows,
            BLOCK=formats.OPTIMIZER_BLOCKSIZE, **EXACT_FP,
        )
