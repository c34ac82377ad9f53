"""bitsandbytes-compatible ``utils``: outlier tracing, module replacement, state-dict packing helpers."""

from __future__ import annotations

import torch

from ..functional.quant_state import pack_dict_to_tensor, unpack_tensor_to_dict
from ..nn.linear8bitlt import INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING, LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING
from .outliers import OutlierTracer, find_outlier_dims
from .replace import replace_linear


def sync_gpu(t: torch.Tensor) -> None:
    """Wait for the device that holds ``t`` (no-op on CPU)."""
    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)
    elif t.device.type == "xpu":
        torch.xpu.synchronize(t.device)
    elif t.device.type == "mps":
        torch.mps.synchronize()


__all__ = [
    "INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING",
    "LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING",
    "OutlierTracer",
    "find_outlier_dims",
    "pack_dict_to_tensor",
    "replace_linear",
    "sync_gpu",
    "unpack_tensor_to_dict",
]
