"""Host-side parts of an optimizer step (SPEC §7): betas parsing, percentile clipping, AdEMAMix schedules.

The element-wise update itself runs in the ``optimizer_update_*`` ops; what is computed here are the
scalars passed to them (gnorm_scale, the scheduled alpha and beta3).
"""

from __future__ import annotations

import math

import torch

#: Slots of the gradient-norm history kept for percentile clipping (state key ``gnorm_vec``).
GNORM_HISTORY = 100
#: percentile_clipping=100 turns clipping off.
NO_CLIPPING = 100


def parse_betas(where: str, betas) -> tuple[float, ...]:
    """betas as a tuple of floats; also accepts the string form ``"(0.9, 0.999)"`` of bitsandbytes configs."""
    if isinstance(betas, str):
        parts = betas.replace("(", "").replace(")", "").replace("[", "").replace("]", "").split(",")
        try:
            betas = [float(b) for b in parts if b.strip()]
        except ValueError:
            raise ValueError(f"{where}: betas must be numbers or a string like '(0.9, 0.999)', got {betas!r}") from None
    elif isinstance(betas, (int, float)):
        betas = (betas,)
    try:
        values = tuple(float(b) for b in betas)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: betas must be a sequence of floats, got {betas!r}") from None
    if not values:
        raise ValueError(f"{where}: betas must hold at least one value, got {betas!r}")
    return values


def check_percentile(where: str, percentile) -> int:
    """percentile_clipping must be an int in [1, 100] (100 = off)."""
    if isinstance(percentile, bool) or not isinstance(percentile, int) or not 1 <= percentile <= NO_CLIPPING:
        raise ValueError(f"{where}: percentile_clipping must be an int in [1, {NO_CLIPPING}], got {percentile!r}")
    return percentile


@torch.no_grad()
def percentile_clipping(grad: torch.Tensor, gnorm_vec: torch.Tensor, step: int, percentile: int) -> float:
    """gnorm_scale of adaptive gradient clipping (updates ``gnorm_vec``, float32 ``[100]``, in place).

    q = ‖grad‖² (float32 sum). Step 1 writes q to all 100 slots, later steps to slot ``step % 100``.
    current = √gnorm_vec[step % 100]; clip = √(gnorm_vec sorted ascending)[percentile]; returns
    clip / current if current > clip, else 1.0 (the gradient is multiplied by it inside the kernel).
    """
    norm_sq = grad.detach().to(torch.float32).square().sum()
    slot = step % GNORM_HISTORY
    if step == 1:
        gnorm_vec.fill_(norm_sq)
    else:
        gnorm_vec[slot] = norm_sq
    current = math.sqrt(float(gnorm_vec[slot]))
    clip = math.sqrt(float(torch.sort(gnorm_vec).values[percentile]))
    return clip / current if current > clip else 1.0


def ademamix_alpha(alpha: float, t_alpha, step: int) -> float:
    """α_t = min(t·α / t_alpha, α) when t_alpha is set, else α (linear warm-up of the slow EMA's weight)."""
    if t_alpha is None:
        return alpha
    return min(step * alpha / t_alpha, alpha)


def ademamix_beta3(beta1: float, beta3: float, t_beta3, step: int) -> float:
    """β3_t = min(exp(ln β1 · ln β3 / ((1 − t/T) ln β3 + (t/T) ln β1)), β3), T = t_beta3; β3 when T is None.

    The schedule of the AdEMAMix paper (Pagliardini et al. 2024): the slow EMA's half-life grows from
    β1's to β3's over T steps.
    """
    if t_beta3 is None:
        return beta3
    frac = step / t_beta3
    ln1, ln3 = math.log(beta1), math.log(beta3)
    return min(math.exp(ln1 * ln3 / ((1.0 - frac) * ln3 + frac * ln1)), beta3)
