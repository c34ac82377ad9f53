// kbit::quantize_4bit on Apple GPUs: blockwise absmax + nearest NF4/FP4 code, two codes per byte.
// Mirrors src/kbit/reference/quantize_4bit.py bit for bit (formats.py: packing, scaling, rounding).
//
// One SIMD-group (one threadgroup of SIMD_WIDTH threads) per block: the lanes stride over the block for
// max|x| (a SIMD max over the bit patterns of |x|, so NaN propagates), then each lane encodes pairs of
// elements into whole bytes. Blocks start at even elements (blocksize >= 32 is even), so a byte never
// spans two blocks; only the last byte of an odd-length input gets the zero-code padding nibble.
//
// Host contract (kbit_mps/quantize_4bit.py): A contiguous, 0 < n < 2^31 elements, blocksize a power of
// two in [32, 4096] given as its log2; grid = ceil(n / blocksize) * SIMD_WIDTH threads, threadgroups of
// SIMD_WIDTH; packed has (n + 1) / 2 bytes, absmax ceil(n / blocksize) floats.
#include "nearest_code.h"

template <typename T>
inline void quantize_4bit_impl(device const T* A, device uchar* packed, device float* absmax, uint n,
                               uint blocksize_log2, uint quant_type, uint tid, uint lane) {
  uint block = tid / SIMD_WIDTH;
  uint start = block << blocksize_log2;
  uint end = min(start + (1u << blocksize_log2), n);
  uint max_bits = 0;
  for (uint e = start + lane; e < end; e += SIMD_WIDTH) {
    max_bits = max(max_bits, abs_bits(load_float(A, e)));
  }
  max_bits = simd_max(max_bits);
  if (lane == 0 && start < n) absmax[block] = as_type<float>(max_bits);
  float inv = inverse_absmax(max_bits);
  uint zero_code = quant_type == QUANT_TYPE_FP4 ? FP4_ZERO_CODE : NF4_ZERO_CODE;
  for (uint e = start + 2u * lane; e < end; e += 2u * SIMD_WIDTH) {
    uint high = nearest_code_4bit(quant_type, scale_value(load_float(A, e), inv));
    uint low = e + 1u < end ? nearest_code_4bit(quant_type, scale_value(load_float(A, e + 1u), inv)) : zero_code;
    packed[e / 2u] = uchar((high << NIBBLE_BITS) | low);
  }
}

#define KBIT_QUANTIZE_4BIT(SUFFIX, T)                                                                   \
  kernel void kbit_quantize_4bit_##SUFFIX(device const T* A, device uchar* packed, device float* absmax, \
                                          constant long& n, constant long& blocksize_log2,               \
                                          constant long& quant_type,                                     \
                                          uint tid [[thread_position_in_grid]],                          \
                                          uint lane [[thread_index_in_simdgroup]]) {                     \
    quantize_4bit_impl(A, packed, absmax, uint(n), uint(blocksize_log2), uint(quant_type), tid, lane);   \
  }

KBIT_QUANTIZE_4BIT(f32, float)
KBIT_QUANTIZE_4BIT(f16, half)
KBIT_QUANTIZE_4BIT(bf16, bf16_t)
