// kbit::dequantize_blockwise on Apple GPUs: out[i] = code[q[i]] * absmax[i / blocksize], rounded once to
// the output dtype. One thread per element. Mirrors src/kbit/reference/dequantize_blockwise.py.
//
// Host contract (kbit_mps/dequantize_blockwise.py): q contiguous uint8, 0 < n < 2^31 elements,
// 0 < blocksize < 2^31, code float32 with 256 entries, absmax float32 with at least
// ceil(n / blocksize) entries; grid = n threads.
#include "formats.h"

template <typename T>
inline void dequantize_blockwise_impl(device const uchar* q, device const float* absmax, device const float* code,
                                      device T* out, uint n, uint blocksize, uint i) {
  if (i >= n) return;
  store_float(out, i, code[q[i]] * absmax[i / blocksize]);
}

#define KBIT_DEQUANTIZE_BLOCKWISE(SUFFIX, T)                                                            \
  kernel void kbit_dequantize_blockwise_##SUFFIX(device const uchar* q, device const float* absmax,       \
                                                 device const float* code, device T* out,                \
                                                 constant long& n, constant long& blocksize,             \
                                                 uint i [[thread_position_in_grid]]) {                   \
    dequantize_blockwise_impl(q, absmax, code, out, uint(n), uint(blocksize), i);                        \
  }

KBIT_DEQUANTIZE_BLOCKWISE(f32, float)
KBIT_DEQUANTIZE_BLOCKWISE(f16, half)
KBIT_DEQUANTIZE_BLOCKWISE(bf16, bf16_t)
