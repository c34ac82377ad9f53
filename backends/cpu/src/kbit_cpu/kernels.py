"""Op name (kbit/_ops.py, with overload) -> kbit-cpu kernel. Ops not listed stay with the next provider."""

from __future__ import annotations

from . import blockwise, fourbit, int8, optim

KERNELS = {
    "quantize_blockwise": blockwise.quantize_blockwise,
    "dequantize_blockwise": blockwise.dequantize_blockwise,
    "dequantize_blockwise.out": blockwise.dequantize_blockwise_out,
    "quantize_4bit": fourbit.quantize_4bit,
    "dequantize_4bit": fourbit.dequantize_4bit,
    "dequantize_4bit.out": fourbit.dequantize_4bit_out,
    "gemv_4bit": fourbit.gemv_4bit,
    "gemv_4bit.out": fourbit.gemv_4bit_out,
    "gemm_4bit": fourbit.gemm_4bit,
    "int8_vectorwise_quant": int8.int8_vectorwise_quant,
    "int8_double_quant": int8.int8_double_quant,
    "int8_vectorwise_dequant": int8.int8_vectorwise_dequant,
    "int8_linear_matmul": int8.int8_linear_matmul,
    "int8_linear_matmul.out": int8.int8_linear_matmul_out,
    "int8_mm_dequant": int8.int8_mm_dequant,
    "int8_scaled_mm": int8.int8_scaled_mm,
    "int8_mixed_scaled_mm": int8.int8_mixed_scaled_mm,
    "optimizer_update_32bit": optim.optimizer_update_32bit,
    "optimizer_update_8bit_blockwise": optim.optimizer_update_8bit_blockwise,
}
