"""Adagrad in plain, 8-bit and 32-bit forms (kernel "adagrad", SPEC §7).

g ← g + wd·p; v ← v + g²; p ← p − lr·g/(√v + eps) — ``torch.optim.Adagrad`` with lr_decay=0 and
initial_accumulator_value=0 (other values raise ValueError). No trust ratio.
"""

from __future__ import annotations

from .optimizer import Optimizer1State

ADAGRAD_EPS = 1e-10


class _AdagradBase(Optimizer1State):
    def _setup(self, params, lr, lr_decay, weight_decay, initial_accumulator_value, eps, bits, args,
               min_8bit_size, percentile_clipping, block_wise):
        where = f"kbit.optim.{type(self).__name__}"
        if initial_accumulator_value != 0.0:
            raise ValueError(
                f"{where}: initial_accumulator_value must be 0 (other values are not supported), "
                f"got {initial_accumulator_value}"
            )
        if lr_decay != 0.0:
            raise ValueError(f"{where}: lr_decay must be 0 (learning-rate decay is not supported), got {lr_decay}")
        Optimizer1State.__init__(
            self, "adagrad", params, lr, (0.0, 0.0), eps, weight_decay, bits, args, min_8bit_size,
            percentile_clipping=percentile_clipping, block_wise=block_wise,
        )


class Adagrad(_AdagradBase):
    """Adagrad with an 8-bit (optim_bits=8) or 32-bit sum of squares."""

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=ADAGRAD_EPS,
                 optim_bits=32, args=None, min_8bit_size=4096, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, lr_decay, weight_decay, initial_accumulator_value, eps, optim_bits, args,
                    min_8bit_size, percentile_clipping, block_wise)


class Adagrad8bit(_AdagradBase):
    """Adagrad with a blockwise 8-bit sum of squares (``optim_bits`` must stay 8)."""

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=ADAGRAD_EPS,
                 optim_bits=8, args=None, min_8bit_size=4096, *, percentile_clipping=100, block_wise=True):
        if optim_bits != 8:
            raise ValueError(f"kbit.optim.{type(self).__name__}: optim_bits must be 8, got {optim_bits!r}")
        self._setup(params, lr, lr_decay, weight_decay, initial_accumulator_value, eps, 8, args,
                    min_8bit_size, percentile_clipping, block_wise)


class Adagrad32bit(_AdagradBase):
    """Adagrad with a float32 sum of squares (``optim_bits`` is accepted and ignored)."""

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=ADAGRAD_EPS,
                 optim_bits=32, args=None, min_8bit_size=4096, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, lr_decay, weight_decay, initial_accumulator_value, eps, 32, args,
                    min_8bit_size, percentile_clipping, block_wise)
