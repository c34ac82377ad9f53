"""Outlier dimensions of weights and activations (LLM.int8()'s emergent features)."""

from __future__ import annotations

import torch


def find_outlier_dims(weight: torch.Tensor, reduction_dim: int = 0, zscore: float = 4.0, topk: int | None = None, rdm: bool = False) -> torch.Tensor:
    """Indices of dimensions whose mean |value| (over ``reduction_dim``) is an outlier.

    topk: the k largest instead of a z-score cut; rdm: k random dimensions (a control).
    """
    if rdm:
        return torch.randint(0, weight.shape[1], size=(topk,), device=weight.device).long()
    mean = weight.abs().float().mean(reduction_dim)
    if topk is not None:
        return torch.topk(mean, k=topk, dim=0).indices
    std = mean.std()
    z = (mean - mean.mean()) / std.clamp_min(1e-12)
    return torch.nonzero(z > zscore).view(-1)


class OutlierTracer:
    """Singleton that records, per linear weight, the input dimensions carrying outliers.

    ``initialize(model)`` hooks every nn.Linear; a forward pass then stores the outlier dims of each
    layer's input, retrievable with ``get_outliers(weight)``.
    """

    _instance = None

    def __init__(self):
        raise RuntimeError("kbit.utils.OutlierTracer: use OutlierTracer.get_instance()")

    @classmethod
    def get_instance(cls) -> OutlierTracer:
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
            cls._instance.initialized = False
            cls._instance.hooks = []
            cls._instance.outliers = {}
        return cls._instance

    def initialize(self, model: torch.nn.Module) -> None:
        self.last_w = None
        self.current_outlier_dims = None
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        self.outliers = {}
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                self.hooks.append(module.register_forward_pre_hook(self._record))
        self.initialized = True

    def _record(self, module, inputs):
        x = inputs[0]
        self.outliers[id(module.weight)] = find_outlier_dims(x.reshape(-1, x.shape[-1]), reduction_dim=0)

    def is_initialized(self) -> bool:
        return self.initialized

    def get_outliers(self, weight: torch.Tensor) -> torch.Tensor | None:
        if not self.initialized:
            raise RuntimeError("kbit.utils.OutlierTracer: call initialize(model) first")
        return self.outliers.get(id(weight))
