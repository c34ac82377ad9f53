"""SGD with momentum in plain, 8-bit and 32-bit forms (kernel "momentum", SPEC §7).

g ← g + wd·p (coupled weight decay); buf ← g at the first step, else momentum·buf + g; p ← p − lr·buf —
``torch.optim.SGD(momentum=..., dampening=0, nesterov=False)``. ``dampening`` and ``nesterov`` are
accepted and ignored, as in bitsandbytes; momentum=0 (plain SGD, no state) raises NotImplementedError:
use ``torch.optim.SGD``.
"""

from __future__ import annotations

from .optimizer import Optimizer1State


class _SGDBase(Optimizer1State):
    def _setup(self, params, lr, momentum, dampening, weight_decay, bits, args, min_8bit_size,
               percentile_clipping, block_wise):
        if momentum == 0:
            raise NotImplementedError(
                f"kbit.optim.{type(self).__name__}: momentum=0 (SGD without momentum) is not supported; use torch.optim.SGD"
            )
        Optimizer1State.__init__(
            self, "momentum", params, lr, (momentum, dampening), 0.0, weight_decay, bits, args, min_8bit_size,
            percentile_clipping=percentile_clipping, block_wise=block_wise,
        )


class SGD(_SGDBase):
    """SGD with momentum, 8-bit (optim_bits=8) or 32-bit momentum buffer."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, optim_bits=32,
                 args=None, min_8bit_size=4096, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, momentum, dampening, weight_decay, optim_bits, args, min_8bit_size,
                    percentile_clipping, block_wise)


class SGD8bit(_SGDBase):
    """SGD with a blockwise 8-bit momentum buffer (parameters below min_8bit_size keep a 32-bit one)."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None,
                 min_8bit_size=4096, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, momentum, dampening, weight_decay, 8, args, min_8bit_size,
                    percentile_clipping, block_wise)


class SGD32bit(_SGDBase):
    """SGD with a float32 momentum buffer."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None,
                 min_8bit_size=4096, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, momentum, dampening, weight_decay, 32, args, min_8bit_size,
                    percentile_clipping, block_wise)
