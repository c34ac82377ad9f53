"""RMSprop in plain, 8-bit and 32-bit forms (kernel "rmsprop", SPEC §7).

g ← g + wd·p; v ← α·v + (1−α)·g²; p ← p − lr·g/(√v + eps) — ``torch.optim.RMSprop`` without momentum
or centering. ``momentum`` is accepted and ignored, as in bitsandbytes; alpha=0 and centered=True
raise NotImplementedError.
"""

from __future__ import annotations

from .optimizer import Optimizer1State

RMSPROP_ALPHA = 0.99


class _RMSpropBase(Optimizer1State):
    def _setup(self, params, lr, alpha, eps, weight_decay, momentum, centered, bits, args, min_8bit_size,
               percentile_clipping, block_wise):
        where = f"kbit.optim.{type(self).__name__}"
        if alpha == 0:
            raise NotImplementedError(f"{where}: alpha=0 is not supported")
        if centered:
            raise NotImplementedError(f"{where}: centered=True is not supported")
        Optimizer1State.__init__(
            self, "rmsprop", params, lr, (alpha, momentum), eps, weight_decay, bits, args, min_8bit_size,
            percentile_clipping=percentile_clipping, block_wise=block_wise,
        )


class RMSprop(_RMSpropBase):
    """RMSprop with an 8-bit (optim_bits=8) or 32-bit square average."""

    def __init__(self, params, lr=1e-2, alpha=RMSPROP_ALPHA, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 optim_bits=32, args=None, min_8bit_size=4096, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, alpha, eps, weight_decay, momentum, centered, optim_bits, args, min_8bit_size,
                    percentile_clipping, block_wise)


class RMSprop8bit(_RMSpropBase):
    """RMSprop with a blockwise 8-bit square average (parameters below min_8bit_size keep a 32-bit one)."""

    def __init__(self, params, lr=1e-2, alpha=RMSPROP_ALPHA, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 args=None, min_8bit_size=4096, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, alpha, eps, weight_decay, momentum, centered, 8, args, min_8bit_size,
                    percentile_clipping, block_wise)


class RMSprop32bit(_RMSpropBase):
    """RMSprop with a float32 square average."""

    def __init__(self, params, lr=1e-2, alpha=RMSPROP_ALPHA, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 args=None, min_8bit_size=4096, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, alpha, eps, weight_decay, momentum, centered, 32, args, min_8bit_size,
                    percentile_clipping, block_wise)
