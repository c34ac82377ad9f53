"""Int8Params: a Parameter that quantizes itself to row-wise int8 (CB, SCB) on its first move (SPEC §5)."""

from __future__ import annotations

import copy

import torch

from ..functional.int8 import int8_vectorwise_quant
from .params4bit import _parse_to


def _rebuild(data, requires_grad, state):
    p = Int8Params(data, requires_grad=requires_grad)
    p.__dict__.update(state)
    return p


class Int8Params(torch.nn.Parameter):
    """An LLM.int8() weight ``[N, K]``.

    has_fp16_weights=False: the first move of a float CPU tensor to a real device (CPU included)
    quantizes it — data becomes CB (int8 ``[N, K]``) and SCB holds the f32 row absmax ``[N]``.
    has_fp16_weights=True keeps the float weight (it is trained) and moves it plainly.
    """

    def __new__(cls, data=None, requires_grad=True, has_fp16_weights=False, CB=None, SCB=None, **kwargs):
        if data is None:
            data = torch.empty(0)
        if data.dtype == torch.int8:
            requires_grad = False
        self = torch.Tensor._make_subclass(cls, data, requires_grad)
        self.has_fp16_weights = has_fp16_weights
        self.CB = CB
        self.SCB = SCB
        return self

    def __reduce_ex__(self, protocol):
        return _rebuild, (self.data, self.requires_grad, dict(self.__dict__))

    def __deepcopy__(self, memo):
        new = Int8Params(self.data.clone(), requires_grad=self.requires_grad)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(dict(self.__dict__), memo))
        return new

    def _quantize(self, device) -> Int8Params:
        CB, SCB, _ = int8_vectorwise_quant(self.data.contiguous().to(device=device, dtype=torch.float16))
        self.data = CB
        self.CB = CB
        self.SCB = SCB
        self.requires_grad_(False)
        return self

    def cpu(self):
        return self.to(device="cpu")

    def cuda(self, device=None, non_blocking=False):
        return self.to(device="cuda" if device is None else device, non_blocking=non_blocking)

    def xpu(self, device=None, non_blocking=False):
        return self.to(device="xpu" if device is None else device, non_blocking=non_blocking)

    def to(self, *args, **kwargs):
        device, dtype, non_blocking = _parse_to(*args, **kwargs)
        quantizable = (
            device is not None
            and device.type != "meta"
            and not self.has_fp16_weights
            and self.data.dtype != torch.int8
            and self.data.device.type == "cpu"
            and self.data.numel() > 0
        )
        if quantizable:
            return self._quantize(device)
        is_int8 = self.data.dtype == torch.int8
        with torch._C.DisableTorchFunctionSubclass():
            moved = torch.Tensor.to(self.data, device=device, dtype=None if is_int8 else dtype, non_blocking=non_blocking)
        new = Int8Params(moved, requires_grad=self.requires_grad and not is_int8, has_fp16_weights=self.has_fp16_weights)
        if is_int8:
            new.CB = moved
            new.SCB = self.SCB.to(device) if self.SCB is not None and device is not None else self.SCB
        return new
