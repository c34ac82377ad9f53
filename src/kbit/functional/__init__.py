"""The stateless functional API (bitsandbytes' ``bitsandbytes.functional`` names and signatures).

Functions validate their arguments, then call the ``torch.ops.kbit`` op that the device's backend
serves. See SPEC §8 for the full list.
"""

from __future__ import annotations

from .blockwise import dequantize_blockwise, quantize_blockwise
from .codebooks import (
    create_dynamic_map,
    create_fp8_map,
    create_linear_map,
    create_normal_map,
    get_4bit_type,
)
from .devices import get_ptr, has_avx512bf16, is_on_gpu
from .fourbit import (
    dequantize_4bit,
    dequantize_fp4,
    dequantize_nf4,
    gemv_4bit,
    quantize_4bit,
    quantize_fp4,
    quantize_nf4,
)
from .int8 import *  # noqa: F403
from .int8 import __all__ as _int8_all
from .optim import optimizer_update_8bit_blockwise, optimizer_update_32bit
from .paged import GlobalPageManager, fill, get_paged, prefetch_tensor
from .quant_state import QuantState, pack_dict_to_tensor, unpack_tensor_to_dict

__all__ = [
    "GlobalPageManager",
    "QuantState",
    "create_dynamic_map",
    "create_fp8_map",
    "create_linear_map",
    "create_normal_map",
    "dequantize_4bit",
    "dequantize_blockwise",
    "dequantize_fp4",
    "dequantize_nf4",
    "fill",
    "gemv_4bit",
    "get_4bit_type",
    "get_paged",
    "get_ptr",
    "has_avx512bf16",
    "is_on_gpu",
    "optimizer_update_32bit",
    "optimizer_update_8bit_blockwise",
    "pack_dict_to_tensor",
    "prefetch_tensor",
    "quantize_4bit",
    "quantize_blockwise",
    "quantize_fp4",
    "quantize_nf4",
    "unpack_tensor_to_dict",
    *_int8_all,
]
