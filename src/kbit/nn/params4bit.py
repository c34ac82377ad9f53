"""Params4bit: a Parameter that quantizes itself to 4 bits on its first move to a device (SPEC §6)."""

from __future__ import annotations

import copy

import torch

from .. import formats
from ..functional.fourbit import quantize_4bit
from ..functional.quant_state import QuantState

_PROXIED = {
    "absmax": lambda qs: qs.absmax,
    "code": lambda qs: qs.code,
    "quant_map": lambda qs: qs.code,
    "offset": lambda qs: qs.offset,
    "state2": lambda qs: qs.state2,
    "nested_absmax": lambda qs: qs.state2.absmax if qs.nested else None,
    "nested_blocksize": lambda qs: qs.state2.blocksize if qs.nested else None,
    "nested_quant_map": lambda qs: qs.state2.code if qs.nested else None,
    "nested_dtype": lambda qs: qs.state2.dtype if qs.nested else None,
    "nested_offset": lambda qs: qs.offset.item() if qs.nested else None,
}


def _proxied(name: str) -> property:
    """A read-only attribute answered by the QuantState (None before quantization).

    A property rather than ``__getattr__``: torch.compile cannot trace a tensor subclass that defines
    ``__getattr__``, and every module forward reads attributes of its Params4bit.
    """
    getter = _PROXIED[name]

    def fget(self):
        qs = getattr(self, "quant_state", None)
        return None if qs is None else getter(qs)

    return property(fget, doc=f"``quant_state``'s {name} (None until quantized).")


_SPLITTERS = {torch.chunk, torch.split, torch.Tensor.chunk, torch.Tensor.split}


def _parse_to(*args, **kwargs):
    device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
    return device, dtype, non_blocking


def _rebuild(data, requires_grad, state):
    p = Params4bit(data, requires_grad=requires_grad)
    p.__dict__.update(state)
    return p


class Params4bit(torch.nn.Parameter):
    """A 4-bit weight: float data until it is moved to a (non-meta) device, packed 4-bit codes after.

    Attributes: blocksize (64), compress_statistics, quant_type, quant_storage, quant_state
    (a QuantState once quantized), bnb_quantized, module (a Linear4bit whose ``quant_state`` is kept
    in sync).
    """

    def __new__(
        cls,
        data=None,
        requires_grad=False,
        quant_state=None,
        blocksize=None,
        compress_statistics=True,
        quant_type="fp4",
        quant_storage=torch.uint8,
        module=None,
        bnb_quantized=False,
        **kwargs,
    ):
        if data is None:
            data = torch.empty(0)
        self = torch.Tensor._make_subclass(cls, data, requires_grad)
        self.blocksize = blocksize if blocksize is not None else formats.FOURBIT_DEFAULT_BLOCKSIZE
        self.compress_statistics = compress_statistics
        self.quant_type = quant_type
        self.quant_state = quant_state
        self.quant_storage = quant_storage
        self.bnb_quantized = bnb_quantized
        self.module = module
        return self

    absmax = _proxied("absmax")
    code = _proxied("code")
    quant_map = _proxied("quant_map")
    offset = _proxied("offset")
    state2 = _proxied("state2")
    nested_absmax = _proxied("nested_absmax")
    nested_blocksize = _proxied("nested_blocksize")
    nested_quant_map = _proxied("nested_quant_map")
    nested_dtype = _proxied("nested_dtype")
    nested_offset = _proxied("nested_offset")

    def _metadata(self) -> dict:
        return {
            "blocksize": self.blocksize,
            "compress_statistics": self.compress_statistics,
            "quant_type": self.quant_type,
            "quant_state": self.quant_state,
            "quant_storage": self.quant_storage,
            "bnb_quantized": self.bnb_quantized,
            "module": self.module,
        }

    def __reduce_ex__(self, protocol):
        state = dict(self.__dict__)
        state.pop("module", None)
        return _rebuild, (self.data, self.requires_grad, state)

    def __copy__(self):
        new = Params4bit(self.data, requires_grad=self.requires_grad)
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo):
        new = Params4bit(self.data.clone(), requires_grad=self.requires_grad)
        memo[id(self)] = new
        state = {k: v for k, v in self.__dict__.items() if k != "module"}
        new.__dict__.update(copy.deepcopy(state, memo))
        new.module = None
        return new

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
        if func in _SPLITTERS and isinstance(args[0], Params4bit):
            src = args[0]
            return tuple(Params4bit(chunk, requires_grad=src.requires_grad, **src._metadata()) for chunk in result)
        return result

    def _quantize(self, device) -> Params4bit:
        w = self.data.contiguous().to(device)
        packed, state = quantize_4bit(
            w,
            blocksize=self.blocksize,
            compress_statistics=self.compress_statistics,
            quant_type=self.quant_type,
            quant_storage=self.quant_storage,
        )
        self.data = packed
        self.quant_state = state
        if self.module is not None:
            self.module.quant_state = state
        self.bnb_quantized = True
        return self

    @classmethod
    def from_prequantized(cls, data, quantized_stats, requires_grad=False, device="cuda", module=None, **kwargs) -> Params4bit:
        """A quantized Params4bit from packed ``data`` and its QuantState dict (``as_dict(packed=True)`` form)."""
        device = torch.device(device)
        state = QuantState.from_dict(quantized_stats, device=device)
        self = cls(
            data.to(device),
            requires_grad=requires_grad,
            quant_state=state,
            blocksize=state.blocksize,
            compress_statistics=state.nested,
            quant_type=state.quant_type,
            quant_storage=data.dtype,
            module=module,
            bnb_quantized=True,
        )
        if module is not None:
            module.quant_state = state
        return self

    def cpu(self):
        return self.to(device="cpu")

    def cuda(self, device=None, non_blocking=False):
        return self.to(device="cuda" if device is None else device, non_blocking=non_blocking)

    def xpu(self, device=None, non_blocking=False):
        return self.to(device="xpu" if device is None else device, non_blocking=non_blocking)

    def to(self, *args, **kwargs):
        device, dtype, non_blocking = _parse_to(*args, **kwargs)
        if device is not None and device.type != "meta" and not self.bnb_quantized:
            return self._quantize(device)
        if self.quant_state is not None and device is not None:
            self.quant_state.to(device)
        with torch._C.DisableTorchFunctionSubclass():
            moved = torch.Tensor.to(self.data, device=device, dtype=dtype if not self.bnb_quantized else None, non_blocking=non_blocking)
        return Params4bit(moved, requires_grad=self.requires_grad, **self._metadata())
