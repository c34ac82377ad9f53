"""transformers integration: load, quantize and save Hugging Face models with kbit layers.

    import kbit
    from transformers import AutoModelForCausalLM
    from kbit.integrations.transformers import KbitConfig

    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=KbitConfig(load_in_4bit=True))
    model.save_pretrained(out)                     # config.json: quant_method "kbit"
    model = AutoModelForCausalLM.from_pretrained(out)  # pre-quantized, needs kbit imported first

- ``KbitConfig`` / ``KbitHfQuantizer``: the quantization method "kbit", registered with
  transformers when this module is imported — which ``import kbit`` arranges by itself as soon
  as transformers' quantizer registry loads. Without kbit imported, transformers does not know
  "kbit": it warns "Unknown quantization type, got kbit" and then fails on the packed weights.
- ``save_pretrained_bnb``: writes a checkpoint with a stock bitsandbytes quantization config, which
  transformers + bitsandbytes load (kbit's state dicts are bitsandbytes', SPEC §3, §5).
- ``from_pretrained_bnb``: loads a bitsandbytes checkpoint (written by bitsandbytes or by
  ``save_pretrained_bnb``) into kbit layers, without bitsandbytes installed.

Requires transformers >= 5 (its quantizer and weight-conversion contract); tested with 5.22.2.
"""

from __future__ import annotations

import torch
import transformers
from packaging.version import Version

from ..nn.linear4bit import Linear4bit
from ..nn.linear8bitlt import Linear8bitLt
from .transformers_config import BNB_QUANT_METHOD, QUANT_METHOD, KbitConfig
from .transformers_quantizer import KbitHfQuantizer

TRANSFORMERS_MIN_VERSION = "5.0"
_WHERE = "kbit.integrations.transformers"

if Version(transformers.__version__).release < Version(TRANSFORMERS_MIN_VERSION).release:
    raise ImportError(f"{_WHERE}: needs transformers >= {TRANSFORMERS_MIN_VERSION} (its 5.x quantizer contract), found {transformers.__version__}")

__all__ = ["KbitConfig", "KbitHfQuantizer", "bitsandbytes_config", "from_pretrained_bnb", "register", "save_pretrained_bnb"]


def register() -> None:
    """Register the "kbit" quantization config and quantizer with transformers (idempotent).

    Runs on import of this module; ``import kbit`` triggers that import when transformers loads.
    """
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING, register_quantization_config, register_quantizer

    for mapping, register_fn, cls in ((AUTO_QUANTIZATION_CONFIG_MAPPING, register_quantization_config, KbitConfig), (AUTO_QUANTIZER_MAPPING, register_quantizer, KbitHfQuantizer)):
        current = mapping.get(QUANT_METHOD)
        if current is cls:
            continue
        if current is not None and (current.__module__, current.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"{_WHERE}.register: transformers already maps quant_method {QUANT_METHOD!r} to {current.__module__}.{current.__qualname__}")
        mapping.pop(QUANT_METHOD, None)  # a reloaded copy of this module
        register_fn(QUANT_METHOD)(cls)


def _unquantized_linears(model) -> list[str]:
    from transformers.pytorch_utils import Conv1D

    return sorted(name for name, m in model.named_modules() if name and (type(m) is torch.nn.Linear or isinstance(m, Conv1D)))


def _one(values: set, what: str):
    if len(values) != 1:
        raise ValueError(f"{_WHERE}.bitsandbytes_config: the model's kbit layers mix {what} {sorted(map(str, values))}; a bitsandbytes config records one")
    return values.pop()


def bitsandbytes_config(model):
    """The transformers ``BitsAndBytesConfig`` that describes ``model``'s kbit layers.

    Read from the layers themselves (so it also works for models quantized with
    ``kbit.nn.quantize_model``): 4-bit quant_type, nested statistics, storage dtype and compute
    dtype, or the 8-bit threshold; ``llm_int8_skip_modules`` lists every ``nn.Linear`` left in
    float, so bitsandbytes rebuilds exactly these layers. ValueError if the model has no kbit
    layers, mixes 4- and 8-bit ones or settings a single config cannot record, or holds a layer
    that is not quantized yet.
    """
    q4 = [(n, m) for n, m in model.named_modules() if isinstance(m, Linear4bit)]
    q8 = [(n, m) for n, m in model.named_modules() if isinstance(m, Linear8bitLt)]
    if bool(q4) == bool(q8):
        raise ValueError(f"{_WHERE}.bitsandbytes_config: the model must hold kbit Linear4bit or Linear8bitLt layers (not both), found {len(q4)} and {len(q8)}")
    skip = _unquantized_linears(model)
    if q8:
        for name, m in q8:
            if m.state.has_fp16_weights:
                raise ValueError(f"{_WHERE}.bitsandbytes_config: {name} keeps float weights (has_fp16_weights=True); only int8 layers can be exported")
        threshold = _one({float(m.state.threshold) for _, m in q8}, "llm_int8_threshold")
        return KbitConfig(load_in_8bit=True, llm_int8_threshold=threshold).to_bitsandbytes(skip_modules=skip)
    states = {}
    for name, m in q4:
        if m.weight.quant_state is None:
            raise ValueError(f"{_WHERE}.bitsandbytes_config: {name} is not quantized yet (move the model to a device or run it first)")
        states[name] = m.weight.quant_state
    config = KbitConfig(
        load_in_4bit=True,
        quant_type=_one({qs.quant_type for qs in states.values()}, "quant_type"),
        compress_statistics=_one({qs.nested for qs in states.values()}, "nested statistics"),
        quant_storage=_one({m.weight.dtype for _, m in q4}, "quant_storage"),
        compute_dtype=_one({m.compute_dtype for _, m in q4}, "compute_dtype"),
    )
    return config.to_bitsandbytes(skip_modules=skip)


def save_pretrained_bnb(model, save_directory, **kwargs) -> None:
    """``model.save_pretrained(save_directory, **kwargs)`` with a bitsandbytes quantization config.

    The weights are written exactly as ``save_pretrained`` writes them (bitsandbytes' state-dict
    keys); config.json gets ``quant_method: "bitsandbytes"`` and the ``load_in_4bit`` /
    ``bnb_4bit_*`` or ``load_in_8bit`` / ``llm_int8_*`` fields of ``bitsandbytes_config(model)``,
    so transformers + bitsandbytes load it. ``model.config`` is left as it was.
    """
    config = bitsandbytes_config(model)
    missing = object()
    previous = getattr(model.config, "quantization_config", missing)
    model.config.quantization_config = config
    try:
        model.save_pretrained(save_directory, **kwargs)
    finally:
        if previous is missing:
            del model.config.quantization_config
        else:
            model.config.quantization_config = previous


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "revision", "subfolder", "token", "trust_remote_code")


def from_pretrained_bnb(model_class, pretrained_model_name_or_path, **kwargs):
    """``model_class.from_pretrained`` for a checkpoint saved with a bitsandbytes quantization config.

    The checkpoint's ``BitsAndBytesConfig`` becomes the equivalent ``KbitConfig``
    (``KbitConfig.from_bitsandbytes``) and the pre-quantized weights load into kbit layers, on any
    device kbit serves; bitsandbytes need not be installed. ``model_class`` is e.g.
    ``AutoModelForCausalLM``; ``kwargs`` go to ``from_pretrained`` (not ``config``). The loaded model
    records the KbitConfig, so its ``save_pretrained`` writes a "kbit" checkpoint.
    A checkpoint that already says "kbit" loads as is.
    """
    if "config" in kwargs:
        raise TypeError(f"{_WHERE}.from_pretrained_bnb: config is read from the checkpoint; do not pass it")
    hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    config = transformers.AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub)
    quant = getattr(config, "quantization_config", None)
    if quant is None:
        raise ValueError(f"{_WHERE}.from_pretrained_bnb: {pretrained_model_name_or_path} has no quantization_config; to quantize a float checkpoint pass quantization_config=KbitConfig(...) to from_pretrained")
    quant = quant if isinstance(quant, dict) else quant.to_dict()
    method = quant.get("quant_method")
    if method == BNB_QUANT_METHOD:
        config.quantization_config = KbitConfig.from_bitsandbytes(quant).to_dict()
    elif method != QUANT_METHOD:
        raise ValueError(f"{_WHERE}.from_pretrained_bnb: {pretrained_model_name_or_path} is quantized with {method!r}, expected {BNB_QUANT_METHOD!r}")
    return model_class.from_pretrained(pretrained_model_name_or_path, config=config, **kwargs)


register()
