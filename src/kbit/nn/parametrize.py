"""4-bit quantization of any parameter (e.g. MoE expert tensors) through torch parametrizations.

``replace_parameter_4bit(module, "w")`` stores ``w`` packed in 4 bits and makes ``module.w`` dequantize
on access. The state dict keeps the name ``w`` (the packed bytes) plus its QuantState entries
(``w.absmax``, ``w.quant_map``, ``w.quant_state.bitsandbytes__nf4``, ...), like Linear4bit's weight.
"""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize as P

from ..functional.fourbit import dequantize_4bit, quantize_4bit
from ..functional.quant_state import QuantState


class Bnb4bitParametrization(torch.nn.Module):
    """Maps the stored packed tensor to its dequantized value."""

    def __init__(self, quant_state: QuantState):
        super().__init__()
        self.quant_state = quant_state

    def forward(self, quantized_param: torch.Tensor) -> torch.Tensor:
        return dequantize_4bit(quantized_param, self.quant_state)


def _original_key(param_name: str) -> str:
    return f"parametrizations.{param_name}.original"


def _install(module: torch.nn.Module, param_name: str, packed: torch.Tensor, state: QuantState) -> None:
    if P.is_parametrized(module, param_name):
        P.remove_parametrizations(module, param_name, leave_parametrized=False)
    delattr(module, param_name)
    module.register_parameter(param_name, torch.nn.Parameter(packed, requires_grad=False))
    P.register_parametrization(module, param_name, Bnb4bitParametrization(state), unsafe=True)
    _hook_state_dict(module, param_name)


def _hook_state_dict(module: torch.nn.Module, param_name: str) -> None:
    flag = f"_kbit_4bit_hooked_{param_name}"
    if getattr(module, flag, False):
        return
    setattr(module, flag, True)

    def save(mod, state_dict, prefix, local_metadata):
        packed = state_dict.pop(prefix + _original_key(param_name))
        state_dict[prefix + param_name] = packed
        qs = mod.parametrizations[param_name][0].quant_state
        for k, v in qs.as_dict(packed=True).items():
            state_dict[f"{prefix}{param_name}.{k}"] = v

    def load(state_dict, prefix, *args):
        head = f"{prefix}{param_name}."
        keys = [k for k in state_dict if k.startswith(head)]
        if prefix + param_name not in state_dict or not keys:
            return
        items = {k[len(head):]: state_dict.pop(k) for k in keys}
        packed = state_dict.pop(prefix + param_name)
        state = QuantState.from_dict(items, device=packed.device)
        _install(module, param_name, packed, state)
        state_dict[prefix + _original_key(param_name)] = packed

    module._register_state_dict_hook(save)
    module._register_load_state_dict_pre_hook(load)


def replace_parameter_4bit(module: torch.nn.Module, param_name: str, compress_statistics: bool = False, quant_type: str = "nf4", blocksize: int | None = None) -> None:
    """Quantize ``module.<param_name>`` to 4 bits in place; reading it afterwards returns the dequantized tensor."""
    original = getattr(module, param_name, None)
    if not isinstance(original, torch.Tensor):
        raise AttributeError(f"kbit.nn.parametrize: {type(module).__name__} has no tensor parameter {param_name!r}")
    packed, state = quantize_4bit(original.detach(), blocksize=blocksize, compress_statistics=compress_statistics, quant_type=quant_type)
    _install(module, param_name, packed, state)


def replace_parameter_4bit_prequantized(module: torch.nn.Module, param_name: str, qs_dict: dict, device) -> None:
    """Install an already-quantized parameter: ``qs_dict`` holds the packed tensor under ``param_name``'s
    packed bytes key ``"weight"``-style entries (as ``QuantState.as_dict(packed=True)``) plus the data
    under key ``param_name``.
    """
    items = dict(qs_dict)
    packed = items.pop(param_name, None)
    if packed is None:
        packed = getattr(module, param_name)
    state = QuantState.from_dict(items, device=device)
    _install(module, param_name, packed.to(device), state)
