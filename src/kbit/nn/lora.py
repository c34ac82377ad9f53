"""A small LoRA adapter (Hu et al. 2021) for kbit's quantized linears, for QLoRA without extra packages.

``y = base(x) + (dropout(x) @ A.T @ B.T) * (alpha / r)`` with A ``[r, in]`` (Kaiming-uniform init) and B
``[out, r]`` (zeros), so a fresh adapter leaves the output unchanged. Only A and B train.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class LoRALinear(torch.nn.Module):
    """Wraps a linear layer (float, Linear4bit or Linear8bitLt) with a trainable low-rank update."""

    def __init__(self, base: torch.nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0, dtype: torch.dtype = torch.float32):
        super().__init__()
        if r <= 0:
            raise ValueError(f"kbit.nn.LoRALinear: r must be positive, got {r}")
        self.base = base
        self.r = r
        self.scaling = alpha / r
        device = base.bias.device if getattr(base, "bias", None) is not None else base.weight.device
        self.lora_A = torch.nn.Parameter(torch.empty(r, base.in_features, device=device, dtype=dtype))
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, r, device=device, dtype=dtype))
        torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
        for p in base.parameters():
            p.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        update = self.dropout(x.to(self.lora_A.dtype)) @ self.lora_A.t() @ self.lora_B.t()
        return y + (update * self.scaling).to(y.dtype)


def add_lora(model: torch.nn.Module, target: Sequence[str], r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> list[str]:
    """Wrap every submodule whose name ends with one of ``target`` in a LoRALinear; freeze everything else.

    Returns the wrapped module names.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear) or not hasattr(module, "in_features"):
            continue
        if not any(name == t or name.endswith("." + t) for t in target):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, r=r, alpha=alpha, dropout=dropout))
        wrapped.append(name)
    return wrapped
