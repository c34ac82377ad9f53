"""Shared inputs of the optimizer conformance tests: hyper-parameters per case, data, torch.optim twins."""

from __future__ import annotations

import dataclasses

import torch

from .sizes import pick

#: 1 element, a tail, one whole 256-block, many blocks with a 1-element tail, 2-D (small mode: no 4097).
SHAPES = pick([(1,), (7,), (256,), (4097,), (17, 33)], [(1,), (7,), (17, 33)])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
#: Parameters ~ P_SCALE * randn, gradients ~ G_SCALE * randn (SPEC §9 optimizer tests).
P_SCALE = 0.1
G_SCALE = 0.01
TWO_STATE = ("adam", "lamb", "ademamix")


@dataclasses.dataclass(frozen=True)
class Case:
    """One optimizer configuration; ``name`` is the kernel name. max_unorm is ignored by the 8-bit op."""

    name: str
    lr: float
    beta1: float = 0.0
    beta2: float = 0.0
    beta3: float = 0.0
    alpha: float = 0.0
    eps: float = 0.0
    weight_decay: float = 0.0
    gnorm_scale: float = 1.0
    max_unorm: float = 0.0


CASES = {
    "adam": Case("adam", 1e-3, 0.9, 0.999, eps=1e-8),
    "adamw": Case("adam", 1e-3, 0.9, 0.999, eps=1e-8, weight_decay=1e-2, gnorm_scale=0.8),
    "lamb": Case("lamb", 1e-3, 0.9, 0.999, eps=1e-8, weight_decay=1e-2, max_unorm=1.0),
    "ademamix": Case("ademamix", 1e-3, 0.9, 0.999, 0.9999, alpha=5.0, eps=1e-8, weight_decay=1e-2),
    "momentum": Case("momentum", 1e-2, 0.9, weight_decay=1e-2),
    "lars": Case("lars", 1e-2, 0.9, weight_decay=1e-2, max_unorm=0.02),
    "rmsprop": Case("rmsprop", 1e-3, 0.99, eps=1e-8, weight_decay=1e-2, gnorm_scale=1.5),
    "adagrad": Case("adagrad", 1e-2, eps=1e-10, weight_decay=1e-2),
    "lion": Case("lion", 1e-4, 0.9, 0.99, weight_decay=1e-2),
}

#: Cases torch.optim implements, and the torch state keys holding what state1 / state2 hold. bnb "adam"
#: with weight decay is AdamW (decoupled decay before the step), not torch.optim.Adam(weight_decay=...).
TORCH_STATE_KEYS = {
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
    "momentum": ("momentum_buffer", None),
    "rmsprop": ("square_avg", None),
    "adagrad": ("sum", None),
}


def torch_optimizer(case: str, param: torch.nn.Parameter) -> torch.optim.Optimizer:
    """The torch.optim optimizer with the update rule of CASES[case] (a key of TORCH_STATE_KEYS)."""
    c = CASES[case]
    if case == "adam":
        return torch.optim.Adam([param], lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps, foreach=False)
    if case == "adamw":
        return torch.optim.AdamW([param], lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps, weight_decay=c.weight_decay, foreach=False)
    if case == "momentum":
        return torch.optim.SGD([param], lr=c.lr, momentum=c.beta1, weight_decay=c.weight_decay, foreach=False)
    if case == "rmsprop":
        return torch.optim.RMSprop([param], lr=c.lr, alpha=c.beta1, eps=c.eps, weight_decay=c.weight_decay, foreach=False)
    if case == "adagrad":
        return torch.optim.Adagrad([param], lr=c.lr, eps=c.eps, weight_decay=c.weight_decay, foreach=False)
    raise KeyError(case)


def make_inputs(shape, dtype: torch.dtype, steps: int, seed: int = 0):
    """(p, [g] * steps) on the CPU in ``dtype``, from a seeded generator (same data on every device)."""
    gen = torch.Generator().manual_seed(seed)
    p = (torch.randn(shape, generator=gen) * P_SCALE).to(dtype)
    grads = [(torch.randn(shape, generator=gen) * G_SCALE).to(dtype) for _ in range(steps)]
    return p, grads
