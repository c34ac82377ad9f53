"""Element-wise optimizer update rules (SPEC §7), shared by the 32-bit and 8-bit blockwise reference kernels.

Every function takes float32 tensors of the same shape (``m1m2`` of AdEMAMix: ``[2, *shape]``) and returns
new tensors; nothing is written in place. The kernels add what differs between them: trust scale and
state storage (32-bit), block quantization of the states and NaN handling (8-bit), and the position of
the decoupled weight decay.

``direction`` returns the *unscaled update* ``u`` (the parameter moves by ``-lr * s * u``, ``s`` the trust
scale) and the new states. Coupled weight decay (``g <- g + wd * p``) is folded in here; decoupled decay
(``p <- p * (1 - lr * wd)``) is left to the caller, for the names in :data:`DECOUPLED_DECAY`.
"""

from __future__ import annotations

import torch

#: Kernel names accepted by both optimizer ops ("lamb" runs the adam rule, "lars" the momentum rule).
OPTIMIZER_NAMES = ("adam", "momentum", "rmsprop", "lion", "adagrad", "lamb", "lars", "ademamix")
#: Optimizers keeping a second state tensor (state2 / qmap2 / absmax2 are required).
TWO_STATE = ("adam", "lamb", "ademamix")
#: AdEMAMix keeps two first moments in state1, shaped ``[ADEMAMIX_MOMENTS, *p.shape]``.
ADEMAMIX_MOMENTS = 2
#: Optimizers whose weight decay is decoupled (``p * (1 - lr * wd)``); the others add ``wd * p`` to the gradient.
DECOUPLED_DECAY = ("adam", "lamb", "ademamix", "lion")
#: Optimizers for which the trust scale (max_unorm > 0) is not applied.
NO_TRUST_SCALE = ("adagrad",)

_RULE_OF = {"lamb": "adam", "lars": "momentum"}


def check_name(op: str, optimizer_name: str) -> str:
    """The rule that ``optimizer_name`` runs; ValueError naming the valid names otherwise."""
    if optimizer_name not in OPTIMIZER_NAMES:
        raise ValueError(f"kbit.{op}: optimizer_name must be one of {OPTIMIZER_NAMES}, got {optimizer_name!r}")
    return _RULE_OF.get(optimizer_name, optimizer_name)


def _bias_corrections(beta1: float, beta2: float, step: int) -> tuple[float, float]:
    """c1 = 1 - beta1^t and c2 = sqrt(1 - beta2^t)."""
    return 1.0 - beta1**step, (1.0 - beta2**step) ** 0.5


def direction(
    rule: str,
    g: torch.Tensor,
    p: torch.Tensor,
    s1: torch.Tensor,
    s2: torch.Tensor | None,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    step: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(u, new state1, new state2) of one step of ``rule`` (a name after ``check_name``), all float32.

    g: the gradient already multiplied by gnorm_scale. p: the parameter before the step. s1/s2: the
    states before the step (s1 ``[2, *p.shape]`` for ademamix; s2 None for 1-state rules).
    """
    if rule == "adam":
        c1, c2 = _bias_corrections(beta1, beta2, step)
        m = s1 * beta1 + g * (1.0 - beta1)
        v = s2 * beta2 + g * g * (1.0 - beta2)
        u = (m / c1) / (v.sqrt() / c2 + eps)
        return u, m, v
    if rule == "ademamix":
        c1, c2 = _bias_corrections(beta1, beta2, step)
        m1 = s1[0] * beta1 + g * (1.0 - beta1)
        m2 = s1[1] * beta3 + g * (1.0 - beta3)
        nu = s2 * beta2 + g * g * (1.0 - beta2)
        u = (m1 / c1 + m2 * alpha) / (nu.sqrt() / c2 + eps)
        return u, torch.stack((m1, m2)), nu
    if rule == "lion":
        u = torch.sign(s1 * beta1 + g * (1.0 - beta1))
        m = s1 * beta2 + g * (1.0 - beta2)
        return u, m, None
    if weight_decay > 0.0:
        g = g + p * weight_decay
    if rule == "momentum":
        buf = g.clone() if step == 1 else s1 * beta1 + g
        return buf, buf, None
    if rule == "rmsprop":
        v = s1 * beta1 + g * g * (1.0 - beta1)
        return g / (v.sqrt() + eps), v, None
    if rule == "adagrad":
        v = s1 + g * g
        return g / (v.sqrt() + eps), v, None
    raise ValueError(f"kbit.optimizer_rules: unknown rule {rule!r}")


def decay_factor(optimizer_name: str, lr: float, weight_decay: float) -> float | None:
    """``1 - lr * wd`` for decoupled-decay optimizers with wd > 0, else None (no multiplication)."""
    if weight_decay > 0.0 and optimizer_name in DECOUPLED_DECAY:
        return 1.0 - lr * weight_decay
    return None
