"""``quantize_model``: swap a model's nn.Linear layers for 4-bit or 8-bit kbit layers in place."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from .linear4bit import Linear4bit
from .linear8bitlt import Linear8bitLt


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """What ``quantize_model`` does.

    bits: 4 (Linear4bit) or 8 (Linear8bitLt). quant_type/compute_dtype/compress_statistics/
    quant_storage apply to 4-bit; threshold (outlier threshold, 0 = none) to 8-bit. skip: module
    names (exact, or a dotted suffix such as "lm_head") left in full precision.
    """

    bits: int = 4
    quant_type: str = "nf4"
    compute_dtype: torch.dtype | None = torch.bfloat16
    compress_statistics: bool = True
    quant_storage: torch.dtype = torch.uint8
    threshold: float = 0.0
    skip: Sequence[str] = ("lm_head",)

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"kbit.nn.QuantConfig: bits must be 4 or 8, got {self.bits}")


def _skipped(name: str, skip: Sequence[str]) -> bool:
    return any(name == s or name.endswith("." + s) for s in skip)


def _replacement(linear: torch.nn.Linear, config: QuantConfig) -> torch.nn.Module:
    device = linear.weight.device
    bias = linear.bias is not None
    if config.bits == 4:
        new = Linear4bit(linear.in_features, linear.out_features, bias, config.compute_dtype, config.compress_statistics, config.quant_type, config.quant_storage, device="meta")
        new.weight = type(new.weight)(linear.weight.data.detach(), requires_grad=False, **{k: v for k, v in new.weight._metadata().items() if k != "module"}, module=new)
        new.weight = new.weight._quantize(device)
    else:
        new = Linear8bitLt(linear.in_features, linear.out_features, bias, has_fp16_weights=False, threshold=config.threshold, device="meta")
        new.weight = type(new.weight)(linear.weight.data.detach(), requires_grad=False, has_fp16_weights=False)._quantize(device)
    if bias:
        new.bias = torch.nn.Parameter(linear.bias.data.detach().clone(), requires_grad=linear.bias.requires_grad)
    new.train(linear.training)
    return new


def quantize_model(model: torch.nn.Module, config: QuantConfig | None = None) -> torch.nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (not in ``config.skip``) by its quantized kbit layer, in place.

    Weights are quantized on the device they are on. Returns the model.
    """
    config = config or QuantConfig()
    targets = [(name, m) for name, m in model.named_modules() if type(m) is torch.nn.Linear and not _skipped(name, config.skip)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _replacement(linear, config))
    return model
