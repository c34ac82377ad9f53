"""AdEMAMix (Pagliardini et al. 2024) in plain, 8-bit, 32-bit and paged forms (kernel "ademamix", SPEC §7).

Two first moments, a fast m1 (β1) and a slow m2 (β3), and the second moment ν (β2):
m1 ← β1·m1 + (1−β1)·g; m2 ← β3·m2 + (1−β3)·g; ν ← β2·ν + (1−β2)·g²; p ← p·(1 − lr·wd);
p ← p − lr·(m1/(1−β1ᵗ) + α·m2) / (√ν/√(1−β2ᵗ) + eps). state1 holds m1 and m2 (``[2, *p.shape]``;
8-bit: absmax1 ``[2, blocks]``), state2 holds ν. With ``t_alpha`` / ``t_beta3`` set, α and β3 follow
the warm-up schedules of :mod:`kbit.optim.rules`, computed on the host each step.
"""

from __future__ import annotations

from . import rules
from .optimizer import Optimizer2State

ADEMAMIX_BETAS = (0.9, 0.999, 0.9999)
ADEMAMIX_ALPHA = 5.0
ADEMAMIX_WEIGHT_DECAY = 1e-2


class _AdEMAMixBase(Optimizer2State):
    """Shared constructor: checks the three betas, alpha and the schedule lengths."""

    def _setup(self, params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, optim_bits, min_8bit_size,
               is_paged):
        where = f"kbit.optim.{type(self).__name__}"
        betas = rules.parse_betas(where, betas)
        if len(betas) != 3:
            raise ValueError(f"{where}: betas must hold three values (beta1, beta2, beta3), got {betas}")
        if t_beta3 is not None and (betas[0] <= 0.0 or betas[2] <= 0.0):
            raise ValueError(f"{where}: the t_beta3 schedule needs beta1 > 0 and beta3 > 0, got {betas}")
        if not 0.0 <= alpha:
            raise ValueError(f"{where}: alpha must be >= 0, got {alpha}")
        for name, value in (("t_alpha", t_alpha), ("t_beta3", t_beta3)):
            if value is not None and not value > 0:
                raise ValueError(f"{where}: {name} must be None or > 0, got {value}")
        Optimizer2State.__init__(
            self, "ademamix", params, lr, betas, eps, weight_decay, optim_bits, None, min_8bit_size,
            is_paged=is_paged, alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3,
        )


class AdEMAMix(_AdEMAMixBase):
    """AdEMAMix with 8-bit (optim_bits=8) or 32-bit states."""

    def __init__(self, params, lr=1e-3, betas=ADEMAMIX_BETAS, alpha=ADEMAMIX_ALPHA, t_alpha=None, t_beta3=None,
                 eps=1e-8, weight_decay=ADEMAMIX_WEIGHT_DECAY, optim_bits=32, min_8bit_size=4096, is_paged=False):
        self._setup(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, optim_bits, min_8bit_size, is_paged)


class AdEMAMix8bit(_AdEMAMixBase):
    """AdEMAMix with blockwise 8-bit states (parameters below min_8bit_size keep 32-bit states)."""

    def __init__(self, params, lr=1e-3, betas=ADEMAMIX_BETAS, alpha=ADEMAMIX_ALPHA, t_alpha=None, t_beta3=None,
                 eps=1e-8, weight_decay=ADEMAMIX_WEIGHT_DECAY, min_8bit_size=4096, is_paged=False):
        self._setup(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 8, min_8bit_size, is_paged)


class AdEMAMix32bit(_AdEMAMixBase):
    """AdEMAMix with float32 states."""

    def __init__(self, params, lr=1e-3, betas=ADEMAMIX_BETAS, alpha=ADEMAMIX_ALPHA, t_alpha=None, t_beta3=None,
                 eps=1e-8, weight_decay=ADEMAMIX_WEIGHT_DECAY, min_8bit_size=4096, is_paged=False):
        self._setup(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 32, min_8bit_size, is_paged)


class PagedAdEMAMix(_AdEMAMixBase):
    """:class:`AdEMAMix` with paged states."""

    def __init__(self, params, lr=1e-3, betas=ADEMAMIX_BETAS, alpha=ADEMAMIX_ALPHA, t_alpha=None, t_beta3=None,
                 eps=1e-8, weight_decay=ADEMAMIX_WEIGHT_DECAY, optim_bits=32, min_8bit_size=4096):
        self._setup(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, optim_bits, min_8bit_size, True)


class PagedAdEMAMix8bit(_AdEMAMixBase):
    """:class:`AdEMAMix8bit` with paged states."""

    def __init__(self, params, lr=1e-3, betas=ADEMAMIX_BETAS, alpha=ADEMAMIX_ALPHA, t_alpha=None, t_beta3=None,
                 eps=1e-8, weight_decay=ADEMAMIX_WEIGHT_DECAY, min_8bit_size=4096):
        self._setup(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 8, min_8bit_size, True)


class PagedAdEMAMix32bit(_AdEMAMixBase):
    """:class:`AdEMAMix32bit` with paged states."""

    def __init__(self, params, lr=1e-3, betas=ADEMAMIX_BETAS, alpha=ADEMAMIX_ALPHA, t_alpha=None, t_beta3=None,
                 eps=1e-8, weight_decay=ADEMAMIX_WEIGHT_DECAY, min_8bit_size=4096):
        self._setup(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 32, min_8bit_size, True)
