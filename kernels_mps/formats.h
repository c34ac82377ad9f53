// Packed formats and numeric constants of kbit (mirror of src/kbit/formats.py) for the Metal kernels.
//
// Every kernel file includes this header first. Under the Metal compiler it pulls in the Metal
// standard library; the C++ verification harness (shim/) includes shim/metal_shim.h before it instead,
// which maps the Metal subset these kernels use onto C++.
//
// 4-bit packing: flat row-major element 2*i is the HIGH nibble of byte i, element 2*i + 1 the LOW
// nibble; an odd element count pads the last low nibble with the code of 0.0.
// Blockwise scales: absmax[b] = max|x| over block b (float32, NaN propagates); values are scaled by
// 1 / max(absmax, ABSMAX_EPS) and clamped to [-1, 1].
// bfloat16 tensors are read and written as raw 16-bit patterns (bf16_t), rounded to nearest even here,
// so the kernels need no Metal bfloat type (Metal 3.1) and round exactly as torch does.
#ifndef KBIT_MPS_FORMATS_H
#define KBIT_MPS_FORMATS_H

#if defined(__METAL_VERSION__)
#include <metal_stdlib>
using namespace metal;
#endif

enum : uint {
  // kbit.OPS_VERSION these kernels implement.
  OPS_VERSION = 1,
  // Threads per SIMD-group on every Apple GPU; SIMD kernels run one SIMD-group per threadgroup.
  SIMD_WIDTH = 32,
  // quant_type argument of the 4-bit kernels.
  QUANT_TYPE_NF4 = 0,
  QUANT_TYPE_FP4 = 1,
  CODE_4BIT_SIZE = 16,
  CODE_8BIT_SIZE = 256,
  NIBBLE_BITS = 4,
  NIBBLE_MASK = 0xF,
  // Code written into the padding nibble of an odd-length input (the code of 0.0).
  NF4_ZERO_CODE = 0x7,
  FP4_ZERO_CODE = 0x0,
  FP4_SIGN_BIT = 0x8,
  // Block of the 8-bit optimizer states (formats.OPTIMIZER_BLOCKSIZE).
  OPTIMIZER_BLOCKSIZE = 256,
  OPTIMIZER_ELEMENTS_PER_LANE = OPTIMIZER_BLOCKSIZE / SIMD_WIDTH,
  // float32 bit fields.
  FLOAT_SIGN_MASK = 0x80000000u,
  FLOAT_ABS_MASK = 0x7FFFFFFFu,
  FLOAT_EXPONENT_MASK = 0x7F800000u,
  // Bits of float32(formats.ABSMAX_EPS) = float32(1e-38), a subnormal: compared as bits so that a GPU
  // flushing subnormals to zero still takes the same branch as the reference.
  ABSMAX_EPS_BITS = 0x006CE3EEu,
  // bfloat16 <-> float32: the high 16 bits; canonical quiet NaN that torch writes.
  BF16_SHIFT = 16,
  BF16_ROUND_BIAS = 0x7FFFu,
  BF16_QUIET_NAN = 0x7FC0u,
};

// 1 / float32(ABSMAX_EPS), rounded to float32 (what the reference multiplies an all-zero block by).
constant float INV_ABSMAX_EPS = 1.00000007e+38f;

// NF4 code values (QLoRA, Dettmers et al. 2023), float32, index = 4-bit code (formats.NF4_CODE).
constant float NF4_CODE[CODE_4BIT_SIZE] = {
    -1.0f,          -0.696192801f, -0.525073051f, -0.394917488f, -0.284441382f, -0.18477343f,
    -0.0910500363f, 0.0f,          0.0795802996f, 0.160930201f,  0.246112302f,  0.337915242f,
    0.440709829f,   0.562617004f,  0.722956836f,  1.0f,
};

// FP4 code values: formats.FP4_MAGNITUDES / formats.FP4_SCALE for codes 0..7, negated for 8..15
// (bit 3 is the sign; code 8 is -0.0).
constant float FP4_CODE[CODE_4BIT_SIZE] = {
    0.0f,  0.00520833349f,  0.666666687f,  1.0f,  0.333333343f,  0.5f,  0.166666672f,  0.25f,
    -0.0f, -0.00520833349f, -0.666666687f, -1.0f, -0.333333343f, -0.5f, -0.166666672f, -0.25f,
};

// A bfloat16 element, stored as its bit pattern.
struct bf16_t {
  ushort bits;
};

inline bool is_nan(float x) { return (as_type<uint>(x) & FLOAT_ABS_MASK) > FLOAT_EXPONENT_MASK; }

inline bool is_finite(float x) { return (as_type<uint>(x) & FLOAT_EXPONENT_MASK) != FLOAT_EXPONENT_MASK; }

// Bits of |x|; for non-negative floats (and NaN) the unsigned order of the bits is the float order,
// with every NaN above +inf, so a max over these bits propagates NaN like torch's amax.
inline uint abs_bits(float x) { return as_type<uint>(x) & FLOAT_ABS_MASK; }

// 1 / max(absmax, ABSMAX_EPS) for absmax given as abs_bits (NaN stays NaN, +inf gives 0).
inline float inverse_absmax(uint absmax_bits) {
  return absmax_bits > ABSMAX_EPS_BITS ? 1.0f / as_type<float>(absmax_bits) : INV_ABSMAX_EPS;
}

// clamp(x * inv, -1, 1) with NaN passing through, as torch.clamp does.
inline float scale_value(float x, float inv) {
  float s = x * inv;
  return s < -1.0f ? -1.0f : (s > 1.0f ? 1.0f : s);
}

inline ushort float_to_bf16_bits(float x) {
  uint u = as_type<uint>(x);
  if (is_nan(x)) return ushort(BF16_QUIET_NAN);
  return ushort((u + BF16_ROUND_BIAS + ((u >> BF16_SHIFT) & 1u)) >> BF16_SHIFT);
}

inline float load_float(device const float* p, uint i) { return p[i]; }
inline float load_float(device const half* p, uint i) { return float(p[i]); }
inline float load_float(device const bf16_t* p, uint i) { return as_type<float>(uint(p[i].bits) << BF16_SHIFT); }

inline void store_float(device float* p, uint i, float v) { p[i] = v; }
inline void store_float(device half* p, uint i, float v) { p[i] = half(v); }
inline void store_float(device bf16_t* p, uint i, float v) { p[i].bits = float_to_bf16_bits(v); }

#endif  // KBIT_MPS_FORMATS_H
