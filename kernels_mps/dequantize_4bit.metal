// kbit::dequantize_4bit on Apple GPUs: out[e] = code[nibble e] * absmax[e / blocksize], rounded once to
// the output dtype. One thread per packed byte (two elements). Mirrors src/kbit/reference/dequantize_4bit.py.
//
// Host contract (kbit_mps/dequantize_4bit.py): A is the packed bytes (any storage dtype viewed as
// uint8), n < 2^31 elements, absmax float32 with at least ceil(n / blocksize) entries, blocksize a power
// of two given as its log2, quant_type QUANT_TYPE_NF4 or QUANT_TYPE_FP4; grid = (n + 1) / 2 threads.
#include "formats.h"

template <typename T>
inline void dequantize_4bit_impl(device const uchar* A, device const float* absmax, device T* out, uint n,
                                 uint blocksize_log2, uint quant_type, uint byte_index) {
  uint nbytes = n / 2u + (n & 1u);
  if (byte_index >= nbytes) return;
  constant float* code = quant_type == QUANT_TYPE_FP4 ? FP4_CODE : NF4_CODE;
  uint packed = A[byte_index];
  uint e = 2u * byte_index;
  store_float(out, e, code[packed >> NIBBLE_BITS] * absmax[e >> blocksize_log2]);
  if (e + 1u < n) {
    store_float(out, e + 1u, code[packed & NIBBLE_MASK] * absmax[(e + 1u) >> blocksize_log2]);
  }
}

#define KBIT_DEQUANTIZE_4BIT(SUFFIX, T)                                                                    \
  kernel void kbit_dequantize_4bit_##SUFFIX(device const uchar* A, device const float* absmax,             \
                                            device T* out, constant long& n, constant long& blocksize_log2, \
                                            constant long& quant_type,                                      \
                                            uint byte_index [[thread_position_in_grid]]) {                  \
    dequantize_4bit_impl(A, absmax, out, uint(n), uint(blocksize_log2), uint(quant_type), byte_index);      \
  }

KBIT_DEQUANTIZE_4BIT(f32, float)
KBIT_DEQUANTIZE_4BIT(f16, half)
KBIT_DEQUANTIZE_4BIT(bf16, bf16_t)
