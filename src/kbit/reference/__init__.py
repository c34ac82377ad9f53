"""Pure-torch reference kernels for every kbit op: correct on any device, and the oracle backends are tested against.

Each op lives in its own module with the op's name; ``KERNELS`` maps op names (with overload) to the
kernel. ``register()`` installs them as CompositeExplicitAutograd, the fallback for any device that no
backend claims.
"""

from __future__ import annotations

import torch

from .. import _ops
from .dequantize_4bit import dequantize_4bit, dequantize_4bit_out
from .dequantize_blockwise import dequantize_blockwise, dequantize_blockwise_out
from .gemm_4bit import gemm_4bit
from .gemv_4bit import gemv_4bit, gemv_4bit_out
from .int8_double_quant import int8_double_quant
from .int8_linear_matmul import int8_linear_matmul, int8_linear_matmul_out
from .int8_mixed_scaled_mm import int8_mixed_scaled_mm
from .int8_mm_dequant import int8_mm_dequant
from .int8_scaled_mm import int8_scaled_mm
from .int8_vectorwise_dequant import int8_vectorwise_dequant
from .int8_vectorwise_quant import int8_vectorwise_quant
from .optimizer_update_32bit import optimizer_update_32bit
from .optimizer_update_8bit_blockwise import optimizer_update_8bit_blockwise
from .quantize_4bit import quantize_4bit
from .quantize_blockwise import quantize_blockwise

KERNELS = {
    "quantize_blockwise": quantize_blockwise,
    "dequantize_blockwise": dequantize_blockwise,
    "dequantize_blockwise.out": dequantize_blockwise_out,
    "quantize_4bit": quantize_4bit,
    "dequantize_4bit": dequantize_4bit,
    "dequantize_4bit.out": dequantize_4bit_out,
    "gemv_4bit": gemv_4bit,
    "gemv_4bit.out": gemv_4bit_out,
    "gemm_4bit": gemm_4bit,
    "int8_linear_matmul": int8_linear_matmul,
    "int8_linear_matmul.out": int8_linear_matmul_out,
    "int8_mm_dequant": int8_mm_dequant,
    "int8_scaled_mm": int8_scaled_mm,
    "int8_vectorwise_quant": int8_vectorwise_quant,
    "int8_vectorwise_dequant": int8_vectorwise_dequant,
    "int8_double_quant": int8_double_quant,
    "int8_mixed_scaled_mm": int8_mixed_scaled_mm,
    "optimizer_update_32bit": optimizer_update_32bit,
    "optimizer_update_8bit_blockwise": optimizer_update_8bit_blockwise,
}

_registered = False


def register() -> None:
    """Install every reference kernel as the CompositeExplicitAutograd kernel of its op (once)."""
    global _registered
    if _registered:
        return
    missing = set(_ops.OP_NAMES) - set(KERNELS)
    if missing:
        raise RuntimeError(f"kbit.reference: no reference kernel for {sorted(missing)}")
    for name, fn in KERNELS.items():
        # "default" = CompositeExplicitAutograd; torch.library.impl rather than register_kernel: see kbit.backends.
        torch.library.impl(_ops.qualname(name), "default", fn)
    _registered = True
