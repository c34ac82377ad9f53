"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") in plain, 8-bit, 32-bit and
paged forms (kernel "lion", SPEC §7).

p ← p·(1 − lr·wd) (decoupled); p ← p − lr·sign(β1·m + (1−β1)·g); m ← β2·m + (1−β2)·g. One state, eps 0.
"""

from __future__ import annotations

from .optimizer import Optimizer1State

LION_BETAS = (0.9, 0.99)
LION_LR = 1e-4


class _LionBase(Optimizer1State):
    def _setup(self, params, lr, betas, weight_decay, bits, args, min_8bit_size, is_paged, percentile_clipping,
               block_wise):
        Optimizer1State.__init__(
            self, "lion", params, lr, betas, 0.0, weight_decay, bits, args, min_8bit_size, is_paged=is_paged,
            percentile_clipping=percentile_clipping, block_wise=block_wise,
        )


class Lion(_LionBase):
    """Lion with an 8-bit (optim_bits=8) or 32-bit momentum."""

    def __init__(self, params, lr=LION_LR, betas=LION_BETAS, weight_decay=0, optim_bits=32, args=None,
                 min_8bit_size=4096, is_paged=False, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, betas, weight_decay, optim_bits, args, min_8bit_size, is_paged,
                    percentile_clipping, block_wise)


class Lion8bit(_LionBase):
    """Lion with a blockwise 8-bit momentum (parameters below min_8bit_size keep a 32-bit one)."""

    def __init__(self, params, lr=LION_LR, betas=LION_BETAS, weight_decay=0, args=None, min_8bit_size=4096,
                 is_paged=False, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, betas, weight_decay, 8, args, min_8bit_size, is_paged, percentile_clipping,
                    block_wise)


class Lion32bit(_LionBase):
    """Lion with a float32 momentum."""

    def __init__(self, params, lr=LION_LR, betas=LION_BETAS, weight_decay=0, args=None, min_8bit_size=4096,
                 is_paged=False, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, betas, weight_decay, 32, args, min_8bit_size, is_paged, percentile_clipping,
                    block_wise)


class PagedLion(_LionBase):
    """:class:`Lion` with paged states."""

    def __init__(self, params, lr=LION_LR, betas=LION_BETAS, weight_decay=0, optim_bits=32, args=None,
                 min_8bit_size=4096, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, betas, weight_decay, optim_bits, args, min_8bit_size, True, percentile_clipping,
                    block_wise)


class PagedLion8bit(_LionBase):
    """:class:`Lion8bit` with paged states."""

    def __init__(self, params, lr=LION_LR, betas=LION_BETAS, weight_decay=0, args=None, min_8bit_size=4096, *,
                 percentile_clipping=100, block_wise=True):
        self._setup(params, lr, betas, weight_decay, 8, args, min_8bit_size, True, percentile_clipping, block_wise)


class PagedLion32bit(_LionBase):
    """:class:`Lion32bit` with paged states."""

    def __init__(self, params, lr=LION_LR, betas=LION_BETAS, weight_decay=0, args=None, min_8bit_size=4096, *,
                 percentile_clipping=100, block_wise=True):
        self._setup(params, lr, betas, weight_decay, 32, args, min_8bit_size, True, percentile_clipping, block_wise)
