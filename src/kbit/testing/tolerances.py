"""The one tolerance table of the conformance suite (kbit SPEC §9); tests import from here, never inline numbers."""

from __future__ import annotations

import torch

#: Mean |x - dequant(quant(x))| on randn data, by (quant type, blocksize) (measured, SPEC §9).
ROUNDTRIP_4BIT_ABS = {
    "nf4": {32: 0.06775, 64: 0.07275, 128: 0.07683, 256: 0.08042, 512: 0.08360, 1024: 0.08658, 2048: 0.08965, 4096: 0.09256},
    "fp4": {32: 0.08889, 64: 0.09659, 128: 0.10288, 256: 0.10872, 512: 0.11402, 1024: 0.11927, 2048: 0.12448, 4096: 0.12958},
}
#: Mean relative error on randn data, same keys.
ROUNDTRIP_4BIT_REL = {
    "nf4": {32: 0.1898, 64: 0.2030, 128: 0.2152, 256: 0.2265, 512: 0.2362, 1024: 0.2454, 2048: 0.2542, 4096: 0.2624},
    "fp4": {32: 0.2425, 64: 0.2602, 128: 0.2754, 256: 0.2899, 512: 0.3025, 1024: 0.3150, 2048: 0.3262, 4096: 0.3375},
}
#: Seed-to-seed standard deviation of those means (B=32 .. B=4096); bounds are mean + 7 sigma.
ROUNDTRIP_4BIT_SIGMA_ABS = {32: 7e-5, 64: 1e-4, 128: 1.5e-4, 256: 2e-4, 512: 3e-4, 1024: 4e-4, 2048: 5e-4, 4096: 6e-4}
ROUNDTRIP_4BIT_SIGMA_REL = {32: 3e-4, 64: 4e-4, 128: 5e-4, 256: 6e-4, 512: 7e-4, 1024: 8e-4, 2048: 1e-3, 4096: 1.2e-3}
SIGMAS = 7
#: Half-precision outputs may add up to this fraction to the float32 mean error.
HALF_PRECISION_SLACK = 0.01

#: Per-element bound |x - y| <= h * absmax (SPEC §3), plus output-dtype rounding.
ELEMENT_BOUND = {"nf4": 0.15190, "fp4": 0.16667, "dynamic_signed": 0.00705, "dynamic_unsigned": 0.00352}

#: 8-bit blockwise round trip on randn (any blocksize 64..4096, nested or not).
BLOCKWISE_RANDN_ABS = 0.011
BLOCKWISE_RANDN_REL = 0.018
BLOCKWISE_UNIFORM_SIGNED_ABS = 0.0036
BLOCKWISE_UNIFORM_UNSIGNED_ABS = 0.0023

#: int8 vectorwise round trip on f16 randn: mean and max abs error.
INT8_ROUNDTRIP_ABS = 0.0068 * 1.1
INT8_ROUNDTRIP_MAX = 0.019 * 1.1

#: Relative spacing (machine epsilon) of each float dtype, used to scale float-output tolerances.
EPS = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}

#: gemv_4bit / gemm_4bit vs the reference: (atol, rtol) for outputs of each activation dtype.
#: The reference accumulates in float32; a backend may sum in another order and round once more.
MATMUL_4BIT_TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-2, 1e-2), torch.bfloat16: (1e-1, 2e-2)}

#: Float outputs of composite int8 ops vs the reference (order of float32 multiplies may differ).
INT8_DEQUANT_TOL = {torch.float32: (1e-5, 1e-6), torch.float16: (1e-3, 1e-3), torch.bfloat16: (1e-2, 8e-3)}


def tol(table: dict, dtype: torch.dtype) -> dict:
    atol, rtol = table[dtype]
    return {"atol": atol, "rtol": rtol}

#: int8 codes vs round_half_even(x * 127 / absmax) computed exactly: a kernel evaluates the quotient in
#: float32 with a few roundings, so where the exact quotient lies within this many float32 ulps (relative)
#: of a .5 boundary the code may be off by one; everywhere else it must be exact.
INT8_QUANT_TIE_ULPS = 4
#: Float outputs of int8 dequantize ops (vectorwise_dequant, mm_dequant, scaled_mm) vs a float64 oracle:
#: this many float32 ulps of the summed term magnitudes, plus one rounding to the output dtype.
INT8_ORACLE_F32_ULPS = 8
#: int8_mixed_scaled_mm vs a float64 oracle: ulps of A's dtype relative to the summed magnitudes
#: (int8 part cast to A.dtype, outlier weights cast, outlier matmul and the final sum each round once).
INT8_MIXED_ULPS = 4
#: int8_scaled_mm of row-quantized f16 randn activations and weights vs the float product, both divided
#: by the output's standard deviation (SPEC §9: f16 pipeline atol .025 rtol .05).
INT8_PIPELINE_TOL = (0.025, 0.05)
#: ... of which this fraction may fall outside (the quantization error is random: measured 0.1% mean,
#: 0.24% worst over 20 seeds of 64x512 @ 512x64).
INT8_PIPELINE_MISMATCH_FRACTION = 0.005
#: Linear8bitLt(threshold=6.0) int8 path vs the float path (SPEC §9): fewer than this fraction of
#: outputs off by more than INT8_LINEAR_VS_FP_ATOL, and none off by more than INT8_LINEAR_VS_FP_MAX.
INT8_LINEAR_VS_FP_FRACTION = 0.00025
INT8_LINEAR_VS_FP_ATOL = 0.02
INT8_LINEAR_VS_FP_MAX = 0.03

#: optimizer_update_32bit parameters vs the float64 oracle and torch.optim, by parameter dtype:
#: (atol, rtol) (SPEC §9 optimizer bounds: f32 1e-6/1e-5, f16 1e-4/1e-3, bf16 1e-3/1e-2).
OPTIM_32BIT_TOL = {torch.float32: (1e-6, 1e-5), torch.float16: (1e-4, 1e-3), torch.bfloat16: (1e-3, 1e-2)}
#: float32 optimizer states (and unorm_vec) vs the float64 oracle, by parameter dtype: (atol as a fraction
#: of max|state|, rtol). Half-precision parameters feed their rounding into coupled decay and trust norms.
OPTIM_32BIT_STATE_TOL = {torch.float32: (1e-6, 1e-5), torch.float16: (1e-4, 1e-3), torch.bfloat16: (1e-3, 1e-2)}
#: Lion steps by sign(...): a near-zero argument may round to the other sign (SPEC §9 allows 15 elements).
OPTIM_LION_MAX_MISMATCH = 15
#: ‖p_new - p‖ of a clipped (trust-scaled) step vs lr * max_unorm * ‖p‖ (float32 norms of ~4k elements).
OPTIM_TRUST_NORM_RTOL = 1e-3

#: optimizer_update_8bit_blockwise vs the float64 oracle, one step from the same codes: parameters use the
#: 32-bit table (only float32-vs-float64 arithmetic differs within a step).
OPTIM_8BIT_ORACLE_TOL = OPTIM_32BIT_TOL
#: Where a backend's code differs from the float64 oracle's, the two codes must be neighbours and the
#: oracle's scaled value |s / absmax| <= 1 must lie this close to their decision boundary (float32
#: rounding of the state update and of the division; SPEC §3: tests must not rely on ties).
OPTIM_8BIT_BOUNDARY_ATOL = 2e-6
#: New per-block absmax (max|state| in float32) vs the float64 oracle.
OPTIM_8BIT_ABSMAX_TOL = {torch.float32: (0.0, 1e-5)}
#: 8-bit step vs torch.optim from the same float32 point, by parameter dtype: (mean |p - p_torch|,
#: mean |p - p_torch| / (|p_torch| + OPTIM_8BIT_REL_FLOOR)) (SPEC §9, upstream bounds; f16 uses f32's).
OPTIM_8BIT_VS_TORCH = {torch.float32: (6e-5, 6e-4), torch.float16: (6e-5, 6e-4), torch.bfloat16: (1.7e-4, 1.6e-3)}
OPTIM_8BIT_REL_FLOOR = 1e-9
#: Dequantized 8-bit states vs torch.optim's float32 states: (atol, rtol) and how many elements may be off.
OPTIM_8BIT_STATE_VS_TORCH = (3e-3, 1e-3)
OPTIM_8BIT_STATE_MAX_OFF = 20
