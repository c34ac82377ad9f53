"""``KbitHfQuantizer``: the transformers quantizer behind ``quant_method = "kbit"``.

What ``from_pretrained`` asks of it, in order (transformers 5.x quantizer contract):
1. ``preprocess_model`` -> ``_process_model_before_weight_loading``: on the meta-device model,
   every ``nn.Linear`` (and transformers ``Conv1D``) not skipped becomes a kbit ``Linear4bit`` or
   ``Linear8bitLt``. Skipped: ``KbitConfig.skip_modules``, the output embedding, tied weights and
   the model's ``_keep_in_fp32_modules``.
2. Float checkpoint: ``param_needs_quantization`` picks the weights of those layers and
   ``get_quantize_ops`` quantizes each one as it is loaded, on its device, with kbit's ops.
   Pre-quantized checkpoint: ``get_weight_conversions`` groups each weight with its companion
   tensors (``serialized_names``) and a deserialize op rebuilds the quantized parameter.
3. ``postprocess_model``: records the KbitConfig on ``model.config`` (nothing kbit-specific to do).
Saving uses the layers' own state dicts (bitsandbytes' keys), so kbit checkpoints are serializable.
"""

from __future__ import annotations

import logging

import torch
from transformers.quantizers.base import HfQuantizer
from transformers.quantizers.quantizers_utils import should_convert_module

from .. import formats
from ..functional.fourbit import dequantize_4bit
from ..functional.int8 import int8_vectorwise_dequant
from ..nn.linear4bit import Linear4bit
from ..nn.linear8bitlt import Linear8bitLt
from .transformers_config import KbitConfig

log = logging.getLogger("kbit")

#: Bytes per element of a quantized weight, by bit width (for transformers' memory planning).
_ELEMENT_SIZE = {4: 0.5, 8: 1.0}
#: Checkpoint names of one quantized weight (a module's ``weight`` plus its companions), SPEC §3/§5.
SERIALIZED_NAMES_4BIT = {
    "weight": ["weight"]
    + [f"weight.{k}" for k in ("absmax", "quant_map", "nested_absmax", "nested_quant_map")]
    + [f"weight.quant_state.{k}" for k in formats.VALID_QS_TYPE_KEYS]
}
SERIALIZED_NAMES_8BIT = {"weight": ["weight", "SCB", "weight_format"]}
#: Attribute set on a kbit layer that replaced a transformers ``Conv1D`` (checkpoint weights ``[in, out]``).
TRANSPOSED_SOURCE_ATTR = "kbit_transposed_source"


def _kbit_layer(config: KbitConfig, linear: torch.nn.Module, transposed: bool) -> torch.nn.Module:
    """The meta-device kbit layer that replaces ``linear`` (weight dtype and bias kept)."""
    weight = linear.weight
    out_features, in_features = (weight.shape[1], weight.shape[0]) if transposed else (weight.shape[0], weight.shape[1])
    bias = linear.bias is not None
    if config.load_in_4bit:
        new = Linear4bit(in_features, out_features, bias, config.compute_dtype, config.compress_statistics, config.quant_type, config.quant_storage, device="meta")
    else:
        new = Linear8bitLt(in_features, out_features, bias, has_fp16_weights=False, threshold=config.llm_int8_threshold, device="meta")
    new.weight.data = torch.empty((out_features, in_features), dtype=weight.dtype, device="meta")
    if bias:
        new.bias.data = torch.empty_like(linear.bias, device="meta")
    if transposed:
        setattr(new, TRANSPOSED_SOURCE_ATTR, True)
    new.requires_grad_(False)
    new.train(linear.training)
    return new


def replace_linears(model: torch.nn.Module, config: KbitConfig, skip: list[str]) -> list[str]:
    """Swap, in place, every ``nn.Linear`` / ``Conv1D`` of ``model`` whose name ``skip`` does not match
    (transformers' matching: a name prefix at a module boundary, a regex, or a suffix) for its kbit
    layer. Returns the replaced names."""
    from transformers.pytorch_utils import Conv1D  # not at import: this module loads with transformers' registry

    replaced = []
    for name, module in list(model.named_modules()):
        transposed = isinstance(module, Conv1D)
        if not name or not (type(module) is torch.nn.Linear or transposed) or not should_convert_module(name, skip):
            continue
        model.set_submodule(name, _kbit_layer(config, module, transposed))
        replaced.append(name)
    return replaced


def _dequantized_linear(module: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Linear:
    """A float ``nn.Linear`` holding the dequantized weight of a kbit layer."""
    if isinstance(module, Linear4bit):
        weight = dequantize_4bit(module.weight.data, module.weight.quant_state)
    else:
        CB = module.state.CB if module.state.CB is not None else module.weight.data
        SCB = module.state.SCB if module.state.SCB is not None else module.weight.SCB
        weight = int8_vectorwise_dequant(CB, SCB)
    weight = weight.to(dtype or weight.dtype)
    linear = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    if module.bias is not None:
        linear.bias = torch.nn.Parameter(module.bias.data.to(weight.dtype), requires_grad=module.bias.requires_grad)
    return linear


class KbitHfQuantizer(HfQuantizer):
    """Quantizes ``nn.Linear`` layers to kbit ``Linear4bit`` (NF4/FP4) or ``Linear8bitLt`` (LLM.int8())
    while ``from_pretrained`` loads them, on any device kbit serves (CPU included); loads and saves
    pre-quantized checkpoints in bitsandbytes' state-dict format."""

    requires_calibration = False
    quantization_config: KbitConfig

    def __init__(self, quantization_config: KbitConfig, **kwargs):
        if not isinstance(quantization_config, KbitConfig):
            raise TypeError(f"kbit.integrations.transformers.KbitHfQuantizer: quantization_config must be a KbitConfig, got {type(quantization_config).__name__}")
        super().__init__(quantization_config, **kwargs)
        self.serialized_names = SERIALIZED_NAMES_4BIT if quantization_config.load_in_4bit else SERIALIZED_NAMES_8BIT
        self.modules_to_not_convert: list[str] = []

    @property
    def quantized_element_size(self) -> float:
        return _ELEMENT_SIZE[self.quantization_config.bits]

    def validate_environment(self, *args, **kwargs):
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError("kbit.integrations.transformers: device_map offloads modules to 'disk', which kbit's quantized layers do not support; keep them on CPU or an accelerator")

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        module_name, _, name = param_name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        return name == "weight" and isinstance(module, (Linear4bit, Linear8bitLt))

    def get_quantize_ops(self):
        from .transformers_ops import KbitQuantize

        return KbitQuantize(self)

    def get_load_operations(self) -> dict:
        from .transformers_ops import Kbit4bitDeserialize, Kbit8bitDeserialize

        return {"deserialize": Kbit4bitDeserialize if self.quantization_config.load_in_4bit else Kbit8bitDeserialize}

    def _process_model_before_weight_loading(self, model, **kwargs):
        self.modules_to_not_convert = self.get_modules_to_not_convert(
            model, self.quantization_config.skip_modules, getattr(model, "_keep_in_fp32_modules", None), add_default_skips=True
        )
        if not replace_linears(model, self.quantization_config, self.modules_to_not_convert):
            log.warning("kbit.integrations.transformers: %s has no nn.Linear outside skip_modules %s; nothing is quantized", type(model).__name__, self.modules_to_not_convert)
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True  # adapters (LoRA) on top of the frozen quantized layers

    def _dequantize(self, model, dtype=None):
        targets = [(name, m) for name, m in model.named_modules() if isinstance(m, (Linear4bit, Linear8bitLt))]
        for name, module in targets:
            model.set_submodule(name, _dequantized_linear(module, dtype))
        return model
