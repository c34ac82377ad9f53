"""LAMB (You et al. 2019) in plain, 8-bit and 32-bit forms (kernel "lamb", SPEC §7).

The Adam update (decoupled weight decay) scaled by a layer-wise trust ratio: with float32 states and
``max_unorm`` > 0 (default 1.0) the step is clipped so that ‖update‖ ≤ max_unorm·‖p‖. 8-bit states
have no trust ratio (the step is plain Adam). ``bias_correction``, ``amsgrad`` and ``adam_w_mode``
are accepted and ignored (bias correction is always on, decay always decoupled), as in bitsandbytes.
"""

from __future__ import annotations

from .optimizer import Optimizer2State

LAMB_BETAS = (0.9, 0.999)
LAMB_MAX_UNORM = 1.0


class _LAMBBase(Optimizer2State):
    def _setup(self, params, lr, betas, eps, weight_decay, bits, args, min_8bit_size, max_unorm,
               percentile_clipping, block_wise):
        Optimizer2State.__init__(
            self, "lamb", params, lr, betas, eps, weight_decay, bits, args, min_8bit_size, max_unorm,
            percentile_clipping=percentile_clipping, block_wise=block_wise,
        )


class LAMB(_LAMBBase):
    """LAMB with 8-bit (optim_bits=8) or 32-bit states."""

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=LAMB_BETAS, eps=1e-8, weight_decay=0,
                 amsgrad=False, adam_w_mode=True, optim_bits=32, args=None, min_8bit_size=4096,
                 max_unorm=LAMB_MAX_UNORM, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, max_unorm,
                    percentile_clipping, block_wise)


class LAMB8bit(_LAMBBase):
    """LAMB with blockwise 8-bit states (no trust ratio for 8-bit states; small parameters keep 32-bit ones)."""

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=LAMB_BETAS, eps=1e-8, weight_decay=0,
                 amsgrad=False, adam_w_mode=True, args=None, min_8bit_size=4096, max_unorm=LAMB_MAX_UNORM, *,
                 percentile_clipping=100, block_wise=True):
        where = f"kbit.optim.{type(self).__name__}"
        if amsgrad:
            raise ValueError(f"{where}: amsgrad=True is not supported by 8-bit LAMB")
        if max_unorm != LAMB_MAX_UNORM:
            raise ValueError(f"{where}: max_unorm must stay {LAMB_MAX_UNORM} for 8-bit LAMB, got {max_unorm}")
        self._setup(params, lr, betas, eps, weight_decay, 8, args, min_8bit_size, max_unorm,
                    percentile_clipping, block_wise)


class LAMB32bit(_LAMBBase):
    """LAMB with float32 states and the trust ratio."""

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=LAMB_BETAS, eps=1e-8, weight_decay=0,
                 amsgrad=False, adam_w_mode=True, args=None, min_8bit_size=4096, max_unorm=LAMB_MAX_UNORM, *,
                 percentile_clipping=100, block_wise=True):
        self._setup(params, lr, betas, eps, weight_decay, 32, args, min_8bit_size, max_unorm,
                    percentile_clipping, block_wise)
