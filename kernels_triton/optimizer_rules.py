"""Optimizer update rules (SPEC §7) as a Triton device function, shared by the 32-bit and 8-bit kernels.

Mirrors ``kbit.reference.optimizer_rules``: ``direction`` returns the unscaled update ``u`` (p moves by
``-lr * s * u``) and the new states; coupled weight decay (``g + wd * p``) is folded in, decoupled decay
is left to the kernels. Scalars derived from the hyper-parameters (``1 - beta``, bias corrections) are
computed on the host in double precision and rounded once to float32, as the reference's Python
scalars are, so the float32 arithmetic matches it operation for operation.
"""

from __future__ import annotations

import dataclasses

import triton
import triton.language as tl

from kbit.backends import Unsupported
from kbit.reference import optimizer_rules as ref

ADAM = tl.constexpr(0)
MOMENTUM = tl.constexpr(1)
RMSPROP = tl.constexpr(2)
ADAGRAD = tl.constexpr(3)
LION = tl.constexpr(4)
ADEMAMIX = tl.constexpr(5)

#: Kernel name -> rule ("lamb" runs the adam rule and "lars" the momentum rule, as in the reference).
RULES = {
    "adam": ADAM, "lamb": ADAM, "momentum": MOMENTUM, "lars": MOMENTUM,
    "rmsprop": RMSPROP, "adagrad": ADAGRAD, "lion": LION, "ademamix": ADEMAMIX,
}


@dataclasses.dataclass(frozen=True)
class Step:
    """Launch arguments of one step: the rule, its flags and the float32 scalars of ``direction``."""

    rule: int
    two_state: bool
    decoupled: bool
    coupled: bool
    scalars: tuple[float, ...]


def plan(op: str, optimizer_name: str, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale) -> Step:
    """The Step of ``optimizer_name``; names without a Triton rule raise Unsupported (the reference serves them)."""
    if optimizer_name not in RULES:
        raise Unsupported(f"kbit-triton {op}: no kernel for optimizer {optimizer_name!r}")
    decoupled = weight_decay > 0.0 and optimizer_name in ref.DECOUPLED_DECAY
    coupled = weight_decay > 0.0 and optimizer_name not in ref.DECOUPLED_DECAY
    decay = 1.0 - lr * weight_decay if decoupled else 1.0
    c1 = 1.0 - beta1**step
    c2 = (1.0 - beta2**step) ** 0.5
    floats = (
        gnorm_scale, lr, decay, beta1, beta2, beta3, 1.0 - beta1, 1.0 - beta2, 1.0 - beta3, alpha, eps, weight_decay, c1, c2,
    )
    scalars = (*(float(x) for x in floats), int(step == 1))  # floats stay float32 arguments even when given as ints
    return Step(RULES[optimizer_name].value, optimizer_name in ref.TWO_STATE, decoupled, coupled, scalars)


@triton.jit
def _sign(x):
    """torch.sign: -1, 0 or 1, NaN kept."""
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, tl.where(x != x, x, 0.0)))


@triton.jit
def direction(
    g, p, s1, m2, s2, beta1, beta2, beta3, omb1, omb2, omb3, alpha, eps, weight_decay, c1, c2, first,
    RULE: tl.constexpr, COUPLED: tl.constexpr,
):
    """(u, new s1, new m2, new s2), float32. g is already scaled by gnorm_scale; omb* = 1 - beta*.
    m2 is AdEMAMix's second first-moment and s2 the second state; unused ones pass through."""
    if COUPLED:
        g = g + p * weight_decay
    if RULE == ADAM:
        s1 = s1 * beta1 + g * omb1
        s2 = s2 * beta2 + g * g * omb2
        u = tl.math.div_rn(tl.math.div_rn(s1, c1), tl.math.div_rn(tl.math.sqrt_rn(s2), c2) + eps)
    elif RULE == ADEMAMIX:
        s1 = s1 * beta1 + g * omb1
        m2 = m2 * beta3 + g * omb3
        s2 = s2 * beta2 + g * g * omb2
        u = tl.math.div_rn(tl.math.div_rn(s1, c1) + m2 * alpha, tl.math.div_rn(tl.math.sqrt_rn(s2), c2) + eps)
    elif RULE == LION:
        u = _sign(s1 * beta1 + g * omb1)
        s1 = s1 * beta2 + g * omb2
    elif RULE == MOMENTUM:
        s1 = tl.where(first != 0, g, s1 * beta1 + g)
        u = s1
    elif RULE == RMSPROP:
        s1 = s1 * beta1 + g * g * omb1
        u = tl.math.div_rn(g, tl.math.sqrt_rn(s1) + eps)
    else:  # ADAGRAD
        s1 = s1 + g * g
        u = tl.math.div_rn(g, tl.math.sqrt_rn(s1) + eps)
    return u, s1, m2, s2
