"""The weight-loading operations of kbit's transformers quantizer (transformers ``ConversionOps``).

``from_pretrained`` runs one of them per checkpoint weight that lands in a kbit layer:
- ``KbitQuantize``: a float weight, quantized on the device it was loaded to (kbit's own ops);
- ``Kbit4bitDeserialize`` / ``Kbit8bitDeserialize``: a pre-quantized weight with its companion
  tensors (``weight.absmax``, ``weight.quant_state.bitsandbytes__nf4``…, or ``SCB``), the
  bitsandbytes state-dict format of SPEC §3 and §5, rebuilt into ``Params4bit`` / ``Int8Params``.

Imported on first use only: ``transformers.core_model_loading`` is heavier than the quantizer registry.
"""

from __future__ import annotations

import abc

import torch
from transformers.core_model_loading import ConversionOps
from transformers.quantizers.quantizers_utils import get_module_from_name

from ..functional.int8 import int8_vectorwise_quant
from ..nn.int8_params import Int8Params
from ..nn.linear4bit import Linear4bit
from ..nn.linear8bitlt import Linear8bitLt
from ..nn.params4bit import Params4bit
from .transformers_quantizer import TRANSPOSED_SOURCE_ATTR

WEIGHT = "weight"
SCB = "SCB"
WEIGHT_FORMAT = "weight_format"


def _first(value):
    return value[0] if isinstance(value, list) else value


def quantized_weight(module: torch.nn.Module, value: torch.Tensor) -> torch.nn.Parameter:
    """``value`` (float ``[out, in]``, or ``[in, out]`` from a Conv1D) quantized the way ``module`` stores it."""
    if getattr(module, TRANSPOSED_SOURCE_ATTR, False):
        value = value.t()
    value = value.contiguous()
    if isinstance(module, Linear4bit):
        w = module.weight  # the layer's settings; Params4bit quantizes on its first move to a device
        fresh = Params4bit(value, requires_grad=False, blocksize=w.blocksize, compress_statistics=w.compress_statistics, quant_type=w.quant_type, quant_storage=w.quant_storage, module=module)
        return fresh.to(value.device)
    if isinstance(module, Linear8bitLt):
        module.state.CB = module.state.SCB = None
        CB, SCB, _ = int8_vectorwise_quant(value.to(torch.float16))  # LLM.int8() rows of the f16 weight (SPEC §5)
        return Int8Params(CB, requires_grad=False, has_fp16_weights=False, CB=CB, SCB=SCB)
    raise TypeError(f"kbit.integrations.transformers: cannot quantize a weight into {type(module).__name__}, expected a kbit Linear4bit or Linear8bitLt")


def _plain(model, name: str, value: torch.Tensor) -> torch.Tensor:
    """A weight of a module kbit does not quantize, cast to the dtype the model gives it.

    Pre-quantized loads keep every tensor this converter collects in its checkpoint dtype (the
    quantized companions must not be cast), so the float weights of other modules are cast here.
    """
    ref = model.get_parameter_or_buffer(name)
    if value.is_floating_point() and ref.is_floating_point() and value.dtype != ref.dtype:
        return value.to(ref.dtype)
    return value


def _collected(input_dict: dict, model, name: str):
    """(companion tensors, weight, module) of one converter group."""
    tensors = {k: _first(v) for k, v in input_dict.items()}
    if WEIGHT not in tensors:
        raise ValueError(f"kbit.integrations.transformers: {name}: the checkpoint has {sorted(tensors)} but not the weight itself")
    weight = tensors.pop(WEIGHT)
    module, _ = get_module_from_name(model, name)
    return tensors, weight, module


class KeepSerialized(ConversionOps):
    """The reverse of a deserialize op for ``save_pretrained``: kbit layers already save their
    weights in the checkpoint format, so every tensor passes through unchanged."""

    def convert(self, input_dict: dict, **kwargs) -> dict:
        return input_dict

    @property
    def reverse_op(self) -> ConversionOps:
        return self


class KbitQuantize(ConversionOps):
    """Float checkpoint weight -> quantized kbit parameter (on-the-fly quantization)."""

    def __init__(self, hf_quantizer):
        self.hf_quantizer = hf_quantizer

    def convert(self, input_dict: dict, model=None, **kwargs) -> dict:
        result = {}
        for name, value in input_dict.items():
            module, _ = get_module_from_name(model, name)
            result[name] = quantized_weight(module, _first(value))
            module._is_hf_initialized = True
        return result


class _Deserialize(ConversionOps):
    """Rebuilds a quantized parameter from checkpoint tensors; saving writes them back unchanged."""

    def __init__(self, hf_quantizer):
        self.hf_quantizer = hf_quantizer

    #: The quantized module class this op rebuilds weights for; other modules get a plain parameter.
    module_type: type

    @property
    def reverse_op(self) -> ConversionOps:
        return KeepSerialized()

    def convert(self, input_dict: dict, model=None, full_layer_name: str | None = None, **kwargs) -> dict:
        tensors, weight, module = _collected(input_dict, model, full_layer_name)
        if not isinstance(module, self.module_type):
            return {WEIGHT: _plain(model, full_layer_name, weight)}
        module._is_hf_initialized = True
        return {WEIGHT: self.rebuild(tensors, weight, module, full_layer_name)}

    @abc.abstractmethod
    def rebuild(self, tensors: dict, weight: torch.Tensor, module, full_layer_name: str):
        """The parameter for `module` from its checkpoint weight and the tensors stored beside it."""


class Kbit4bitDeserialize(_Deserialize):
    """Packed 4-bit weight + its QuantState tensors -> ``Params4bit`` (bitsandbytes key format)."""

    module_type = Linear4bit

    def rebuild(self, tensors, weight, module, full_layer_name):
        if not tensors:
            if not weight.is_floating_point():
                raise ValueError(f"kbit.integrations.transformers: {full_layer_name} is packed 4-bit data without its quant_state ('{WEIGHT}.absmax', '{WEIGHT}.quant_state.bitsandbytes__<type>')")
            return quantized_weight(module, weight)  # a layer the checkpoint kept in float
        param = Params4bit.from_prequantized(weight, tensors, requires_grad=False, device=weight.device, module=module)
        expected = (module.out_features, module.in_features)
        if tuple(param.quant_state.shape) != expected:
            raise ValueError(f"kbit.integrations.transformers: {full_layer_name} holds a {tuple(param.quant_state.shape)} weight, the model expects {expected}")
        module.quant_storage = weight.dtype
        return param


class Kbit8bitDeserialize(_Deserialize):
    """int8 weight + ``SCB`` row scales (+ ``weight_format``) -> ``Int8Params`` (bitsandbytes key format)."""

    module_type = Linear8bitLt

    def rebuild(self, tensors, weight, module, full_layer_name):
        fmt = tensors.pop(WEIGHT_FORMAT, None)
        if fmt is not None and int(fmt.item()) != 0:
            raise ValueError(f"kbit.integrations.transformers: {full_layer_name} has weight_format {int(fmt.item())}; only the row-major layout (0) is supported")
        if weight.dtype != torch.int8:
            return quantized_weight(module, weight)  # a layer the checkpoint kept in float
        if SCB not in tensors:
            raise ValueError(f"kbit.integrations.transformers: {full_layer_name} is an int8 weight without its row scales (SCB)")
        expected = (module.out_features, module.in_features)
        if tuple(weight.shape) != expected:
            raise ValueError(f"kbit.integrations.transformers: {full_layer_name} holds a {tuple(weight.shape)} weight, the model expects {expected}")
        CB = weight.contiguous()
        module.state.CB = module.state.SCB = None
        return Int8Params(CB, requires_grad=False, has_fp16_weights=False, CB=CB, SCB=tensors[SCB].to(torch.float32))
