"""LARS (You et al. 2017, layer-wise adaptive rate scaling) in plain, 8-bit and 32-bit forms (kernel
"lars", SPEC §7), and ``PytorchLARS``, a plain-PyTorch implementation of the same rule.

SGD with momentum (g ← g + wd·p; buf ← g at the first step, else momentum·buf + g) whose step is
clipped so that ‖lr·buf‖ ≤ lr·max_unorm·‖p‖ (float32 states; default max_unorm 0.02). 8-bit states
have no trust ratio (the step is plain momentum SGD). ``dampening`` and ``nesterov`` are accepted and
ignored; momentum=0 raises NotImplementedError.
"""

from __future__ import annotations

import torch

from .optimizer import Optimizer1State

LARS_MAX_UNORM = 0.02
PYTORCH_LARS_LR = 0.01


class _LARSBase(Optimizer1State):
    def _setup(self, params, lr, momentum, dampening, weight_decay, bits, args, min_8bit_size, max_unorm,
               percentile_clipping, block_wise):
        if momentum == 0:
            raise NotImplementedError(f"kbit.optim.{type(self).__name__}: momentum=0 is not supported; use PytorchLARS")
        Optimizer1State.__init__(
            self, "lars", params, lr, (momentum, dampening), 0.0, weight_decay, bits, args, min_8bit_size,
            max_unorm, percentile_clipping=percentile_clipping, block_wise=block_wise,
        )


class LARS(_LARSBase):
    """LARS with an 8-bit (optim_bits=8) or 32-bit momentum buffer."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, optim_bits=32, args=None,
                 min_8bit_size=4096, max_unorm=LARS_MAX_UNORM, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, momentum, dampening, weight_decay, optim_bits, args, min_8bit_size, max_unorm,
                    percentile_clipping, block_wise)


class LARS8bit(_LARSBase):
    """LARS with a blockwise 8-bit momentum buffer (no trust ratio for 8-bit states)."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None,
                 min_8bit_size=4096, max_unorm=LARS_MAX_UNORM, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, momentum, dampening, weight_decay, 8, args, min_8bit_size, max_unorm,
                    percentile_clipping, block_wise)


class LARS32bit(_LARSBase):
    """LARS with a float32 momentum buffer and the trust ratio."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None,
                 min_8bit_size=4096, max_unorm=LARS_MAX_UNORM, *, percentile_clipping=100, block_wise=True):
        self._setup(params, lr, momentum, dampening, weight_decay, 32, args, min_8bit_size, max_unorm,
                    percentile_clipping, block_wise)


class PytorchLARS(torch.optim.Optimizer):
    """LARS written with plain tensor operations (a reference for :class:`LARS`; any device, any float dtype).

    d = g + wd·p; with momentum: buf ← d at the first step, else momentum·buf + (1 − dampening)·d, and
    the update is ``d + momentum·buf`` (nesterov) or ``buf``; without momentum the update is d. With
    max_unorm > 0 the update is scaled by max_unorm·‖p‖/‖update‖ where ‖update‖ exceeds max_unorm·‖p‖.
    State key: ``momentum_buffer``.
    """

    def __init__(self, params, lr=PYTORCH_LARS_LR, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 max_unorm=LARS_MAX_UNORM):
        where = f"kbit.optim.{type(self).__name__}"
        if lr < 0.0:
            raise ValueError(f"{where}: invalid learning rate: lr must be >= 0, got {lr}")
        if momentum < 0.0:
            raise ValueError(f"{where}: invalid momentum value: momentum must be >= 0, got {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"{where}: invalid weight_decay value: weight_decay must be >= 0, got {weight_decay}")
        if max_unorm < 0.0:
            raise ValueError(f"{where}: max_unorm must be >= 0, got {max_unorm}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"{where}: nesterov momentum requires momentum > 0 and dampening = 0")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, max_unorm=max_unorm)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One LARS step over every parameter with a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum, dampening = group["momentum"], group["dampening"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["weight_decay"] != 0:
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                update = d_p
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = torch.clone(d_p).detach()
                        state["momentum_buffer"] = buf
                    else:
                        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
                    update = d_p + buf * momentum if group["nesterov"] else buf
                scale = 1.0
                if group["max_unorm"] > 0.0:
                    pnorm = torch.linalg.vector_norm(p.detach().float())
                    unorm = torch.linalg.vector_norm(update.float())
                    limit = group["max_unorm"] * pnorm
                    scale = torch.where(unorm > limit, limit / unorm, torch.ones_like(unorm))
                p.add_(update * scale, alpha=-group["lr"])
        return loss
