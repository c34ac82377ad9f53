"""PEFT LoRA on kbit's quantized linears: adapters on ``Linear4bit`` / ``Linear8bitLt`` that train, merge, unload.

PEFT builds LoRA layers for module types it does not know from a mapping registered on the
``LoraConfig`` (``LoraConfig._register_custom_module``). :func:`register` adds kbit's mapping;
:func:`get_peft_model` and :func:`from_pretrained` do it for you::

    from peft import LoraConfig
    from kbit.integrations.peft import get_peft_model
    model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))

or, with PEFT's own function: ``peft.get_peft_model(model, register(LoraConfig(...)))``.

The adapter computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` (``scaling = alpha / r``,
or ``alpha / sqrt(r)`` with rsLoRA); the quantized base weight stays frozen. Plain LoRA only: DoRA
and the other LoRA variants, and the initialisations that read or rewrite the float base weight
(PiSSA, OLoRA, CorDA, LoftQ, ...), raise ``ValueError``.

Merging keeps the layer type, so ``merge_and_unload()`` returns the model with the same kbit layers:
the merged float weight ``W = dequantize(base) + sum_i scaling_i * B_i @ A_i`` (float32) is
re-quantized once, the way a float weight loaded into that layer is quantized (4-bit: same
quant_type, blocksize, nested statistics and storage dtype, from ``quant_state.dtype``; int8:
Int8Params' row-wise absmax of the float16 weight). Merging several adapters, at once or one after
another, always re-quantizes from the original weight, so quantization errors do not compound.
While merged, the original quantized weight is kept aside (one more packed copy per merged layer)
and ``unmerge()`` restores it bit for bit. A ``Linear8bitLt`` with ``has_fp16_weights=True`` keeps a
float weight and is merged in float.

Requires peft >= 0.19 (LoRA layers are built from the ``LoraConfig``); tested with peft 0.21.
Importing this module imports peft; ``import kbit`` does not import this module.
"""

from __future__ import annotations

import abc
import warnings
from typing import Any

import peft
import torch
from packaging.version import Version
from peft import LoraConfig, PeftConfig, PeftModel
from peft.tuners.lora import LoraLayer
from peft.tuners.lora import layer as _peft_lora_layer
from peft.tuners.tuners_utils import check_adapters_to_merge

from .. import functional as F
from ..nn.int8_params import Int8Params
from ..nn.linear4bit import Linear4bit
from ..nn.linear8bitlt import Linear8bitLt
from ..nn.params4bit import Params4bit

#: First peft release whose LoRA layers receive the LoraConfig (huggingface/peft#2960).
PEFT_MIN_VERSION = "0.19.0"
#: ``init_lora_weights`` values that need neither the float base weight nor a LoRA variant.
SUPPORTED_INITS = (True, False, "gaussian", "eva")
#: Forward kwargs that only LoRA variants use (peft strips them before calling the base layer).
_VARIANT_KWARGS = tuple(getattr(_peft_lora_layer, "VARIANT_KWARG_KEYS", ()))
#: peft's keyword arguments for loading a config from the Hub or a folder (``PeftModel.from_pretrained``).
_HUB_KWARGS = ("subfolder", "revision", "cache_dir", "token")

if Version(peft.__version__).release < Version(PEFT_MIN_VERSION).release:
    raise ImportError(
        f"kbit.integrations.peft: needs peft >= {PEFT_MIN_VERSION} (LoRA layers built from the LoraConfig), "
        f"found peft {peft.__version__}; upgrade it with `pip install -U peft`"
    )


class _KbitLoraLinear(torch.nn.Module, LoraLayer):
    """Plain LoRA around a kbit quantized linear; subclasses say how the base weight is read and written.

    Built by PEFT as ``cls(base_layer, adapter_name, config=lora_config, r=..., lora_alpha=..., **kwargs)``.
    Adapters live in ``lora_A[name]`` (``Linear(in, r)``) and ``lora_B[name]`` (``Linear(r, out)``) on the
    base layer's device, in its ``compute_dtype`` (Linear4bit, when set) or float weight's dtype, else float32.
    """

    def __init__(self, base_layer: torch.nn.Module, adapter_name: str, config: LoraConfig, r: int = 0, lora_alpha: int = 1, **kwargs: Any) -> None:
        super().__init__()
        LoraLayer.__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = False  # kbit weights are always [out_features, in_features]
        self._pristine = None  # the base weight as it was before the first merge, while merged
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    # --- configuration -------------------------------------------------------------------------

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs: Any) -> None:
        """Add (or replace) adapter ``adapter_name``; rejects what a quantized base cannot support."""
        name = f"kbit.integrations.peft.{type(self).__name__}"
        init = config.init_lora_weights
        if not (isinstance(init, bool) or init in SUPPORTED_INITS):
            raise ValueError(f"{name}: init_lora_weights must be one of {SUPPORTED_INITS} (the others read or rewrite the float base weight), got {init!r}")
        if config.fan_in_fan_out:
            warnings.warn(f"{name}: fan_in_fan_out=True is ignored, kbit weights are stored [out_features, in_features]", stacklevel=2)
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs: Any):
        try:
            return super().resolve_lora_variant(config=config, **kwargs)
        except ValueError as exc:
            raise ValueError(f"kbit.integrations.peft.{type(self).__name__}: only plain LoRA is supported (no DoRA or other LoRA variants); {exc}") from exc

    # --- forward -------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``base(x) + sum over active adapters of lora_B(lora_A(dropout(x))) * scaling``, in ``base(x)``'s dtype.

        x: ``[..., in_features]``. ``adapter_names=[...]`` (one name per row of x, ``"__base__"`` for
        none) mixes adapters in one batch; disabled adapters give ``base(x)``.
        """
        self._check_forward_args(x, *args, **kwargs)
        adapter_names = kwargs.pop("adapter_names", None)
        for key in _VARIANT_KWARGS:
            kwargs.pop(key, None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        out = result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_A, lora_B = self.lora_A[name], self.lora_B[name]
            h = self._cast_input_dtype(x, lora_A.weight.dtype)
            out = out + lora_B(lora_A(self.lora_dropout[name](h))) * self.scaling[name]
        return out.to(result.dtype)

    def _mixed_batch_forward(self, x: torch.Tensor, *args: Any, adapter_names: list[str], **kwargs: Any) -> torch.Tensor:
        """Row ``i`` of ``x`` goes through adapter ``adapter_names[i]`` (``"__base__"``: the base layer only)."""
        # a copy: the int8 matmul may return a custom Function's view, which must not be modified in place
        result = self.base_layer(x, *args, **kwargs).clone()
        for name in set(adapter_names):
            if name not in self.lora_A:  # "__base__", or an adapter this layer does not have
                continue
            rows = [i for i, a in enumerate(adapter_names) if a == name]
            lora_A, lora_B = self.lora_A[name], self.lora_B[name]
            h = self._cast_input_dtype(x[rows], lora_A.weight.dtype)
            result[rows] += (lora_B(lora_A(self.lora_dropout[name](h))) * self.scaling[name]).to(result.dtype)
        return result

    # --- merging -------------------------------------------------------------------------------

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``scaling * B @ A`` of adapter ``adapter``: float32 ``[out_features, in_features]``."""
        A = self.lora_A[adapter].weight.float()
        B = self.lora_B[adapter].weight.float()
        return (B @ A) * self.scaling[adapter]

    def _bias_delta(self, adapter: str) -> torch.Tensor:
        """``scaling * lora_B.bias`` (lora_bias=True): float32 ``[out_features]``."""
        return self.lora_B[adapter].bias.detach().float() * self.scaling[adapter]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold adapters (default: the active ones) into the base weight, re-quantized once from the original.

        safe_merge: check that the merged weight and bias are finite before changing anything
        (``ValueError`` if not).
        """
        names = [n for n in check_adapters_to_merge(self, adapter_names) if n in self.lora_A]
        if not names:
            return
        base = self.get_base_layer()
        biased = [n for n in names if self.lora_bias.get(n, False)]
        if biased and getattr(base, "bias", None) is None:
            raise RuntimeError(f"kbit.integrations.peft.{type(self).__name__}.merge: adapters {biased} have lora_bias=True but the base layer has no bias")
        pristine = self._pristine if self._pristine is not None else self._snapshot()
        weight = self._dequantize(pristine)
        for n in self.merged_adapters + names:
            weight += self.get_delta_weight(n).to(weight.device)
        bias = base.bias.detach().float() + sum(self._bias_delta(n) for n in biased) if biased else None
        if safe_merge and not (torch.isfinite(weight).all() and (bias is None or torch.isfinite(bias).all())):
            raise ValueError(f"kbit.integrations.peft.{type(self).__name__}.merge: merging adapters {names} gives non-finite weights; the adapter is broken")
        self._pristine = pristine
        self._store(weight)
        if bias is not None:
            base.bias.data = bias.to(base.bias.dtype)
        self.merged_adapters.extend(names)

    def unmerge(self) -> None:
        """Undo every merge: the base weight becomes the original quantized weight again, bit for bit."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        for n in reversed(self.merged_adapters):
            if self.lora_bias.get(n, False):
                base.bias.data -= self._bias_delta(n).to(base.bias.device, base.bias.dtype)
        self._restore(self._pristine)
        self._pristine = None
        self.merged_adapters.clear()

    @abc.abstractmethod
    def _snapshot(self):
        """The base layer's current quantized weight, kept to merge from and to restore."""

    @abc.abstractmethod
    def _dequantize(self, snapshot) -> torch.Tensor:
        """float32 ``[out, in]`` weight of a snapshot, on the base layer's device (a fresh tensor)."""

    @abc.abstractmethod
    def _store(self, weight: torch.Tensor) -> None:
        """Quantize float32 ``weight`` into the base layer the way the layer quantizes a float weight."""

    @abc.abstractmethod
    def _restore(self, snapshot) -> None:
        """Put a snapshot back as the base layer's weight."""

    def __repr__(self) -> str:
        return "kbit_lora." + super().__repr__()


class KbitLoraLinear4bit(_KbitLoraLinear):
    """LoRA on :class:`kbit.nn.Linear4bit` (NF4/FP4, QLoRA); merged weights are re-quantized to 4 bits."""

    def _device(self) -> torch.device:
        return self.get_base_layer().weight.device

    def _snapshot(self) -> Params4bit:
        base = self.get_base_layer()
        base._ensure_quantized()
        return base.weight

    def _here(self, weight: Params4bit) -> Params4bit:
        return weight if weight.device == self._device() else weight.to(self._device())

    def _dequantize(self, snapshot: Params4bit) -> torch.Tensor:
        weight = self._here(snapshot)
        return F.dequantize_4bit(weight.data, weight.quant_state).float()

    def _store(self, weight: torch.Tensor) -> None:
        base = self.get_base_layer()
        old = base.weight
        meta = {k: v for k, v in old._metadata().items() if k not in ("quant_state", "bnb_quantized", "module")}
        fresh = Params4bit(weight.to(old.quant_state.dtype), requires_grad=False, module=base, **meta)
        base.weight = fresh._quantize(old.device)  # also sets base.quant_state

    def _restore(self, snapshot: Params4bit) -> None:
        base = self.get_base_layer()
        base.weight = self._here(snapshot)
        base.weight.module = base
        base.quant_state = base.weight.quant_state


class KbitLoraLinear8bitLt(_KbitLoraLinear):
    """LoRA on :class:`kbit.nn.Linear8bitLt` (LLM.int8()); merged weights are re-quantized to int8 (CB, SCB)."""

    def _int8(self) -> bool:
        return not self.get_base_layer().state.has_fp16_weights

    def _snapshot(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        base = self.get_base_layer()
        w = base.weight
        if not self._int8():
            return w.data.clone(), None
        if w.dtype != torch.int8 and base.state.CB is None:
            base.weight = w = w._quantize(w.device)  # what the first forward would do
        SCB = w.SCB if w.SCB is not None else base.state.SCB
        if SCB is None:
            raise RuntimeError(f"kbit.integrations.peft.{type(self).__name__}: the int8 weight has no row scales (SCB) to dequantize with")
        return w.data, SCB

    def _dequantize(self, snapshot) -> torch.Tensor:
        data, SCB = snapshot
        device = self.get_base_layer().weight.device
        if SCB is None:
            return data.to(device=device, dtype=torch.float32, copy=True)
        return F.int8_vectorwise_dequant(data.to(device), SCB.to(device))

    def _store(self, weight: torch.Tensor) -> None:
        base = self.get_base_layer()
        base.state.reset_grads()  # drop cached int8 copies of the old weight
        if not self._int8():
            base.weight.data = weight.to(base.weight.dtype)
            return
        base.weight = Int8Params(weight, requires_grad=False, has_fp16_weights=False)._quantize(base.weight.device)

    def _restore(self, snapshot) -> None:
        base = self.get_base_layer()
        data, SCB = snapshot
        device = base.weight.device
        base.state.reset_grads()
        if SCB is None:
            base.weight.data = data.to(device)
            return
        CB = data.to(device)
        base.weight = Int8Params(CB, requires_grad=False, has_fp16_weights=False, CB=CB, SCB=SCB.to(device))


def custom_modules() -> dict[type[torch.nn.Module], type[torch.nn.Module]]:
    """The mapping kbit layer type -> kbit LoRA layer type that :func:`register` puts on a LoraConfig."""
    return {Linear4bit: KbitLoraLinear4bit, Linear8bitLt: KbitLoraLinear8bitLt}


def register(config: LoraConfig) -> LoraConfig:
    """Register kbit's LoRA layers on ``config`` (in place) and return it.

    Not saved with the adapter: register again on the config you load with (see :func:`from_pretrained`).
    """
    if not isinstance(config, LoraConfig):
        raise TypeError(f"kbit.integrations.peft.register: config must be a peft.LoraConfig, got {type(config).__name__}")
    config._register_custom_module(custom_modules())
    return config


def get_peft_model(model: torch.nn.Module, peft_config: PeftConfig, *args: Any, **kwargs: Any):
    """``peft.get_peft_model`` with kbit's LoRA layers registered on a LoraConfig (other configs pass through)."""
    if isinstance(peft_config, LoraConfig):
        register(peft_config)
    return peft.get_peft_model(model, peft_config, *args, **kwargs)


def from_pretrained(model: torch.nn.Module, model_id: str, *args: Any, config: PeftConfig | None = None, **kwargs: Any) -> PeftModel:
    """``PeftModel.from_pretrained`` for a model with kbit layers: loads the adapter config, registers, loads.

    ``model_id``: a folder written by ``save_pretrained`` or a Hub id; other arguments as PEFT's.
    """
    if config is None:
        config = PeftConfig.from_pretrained(model_id, **{k: kwargs[k] for k in _HUB_KWARGS if k in kwargs})
    if isinstance(config, LoraConfig):
        register(config)
    return PeftModel.from_pretrained(model, model_id, *args, config=config, **kwargs)


__all__ = [
    "PEFT_MIN_VERSION",
    "SUPPORTED_INITS",
    "KbitLoraLinear4bit",
    "KbitLoraLinear8bitLt",
    "custom_modules",
    "from_pretrained",
    "get_peft_model",
    "register",
]
