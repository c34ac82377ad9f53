// kbit::quantize_blockwise on Apple GPUs: blockwise absmax + nearest entry of an m-value code (m <= 256),
// one byte per element. Mirrors src/kbit/reference/quantize_blockwise.py bit for bit.
//
// The code is sorted first by kbit_sort_code (nearest_code.h); then one SIMD-group (one threadgroup of
// SIMD_WIDTH threads) per block: the lanes stride over the block for max|x| (a SIMD max over the bit
// patterns of |x|, so NaN propagates), then each lane encodes its elements.
//
// Host contract (kbit_mps/quantize_blockwise.py): A contiguous, 0 < n < 2^31 elements, 0 < blocksize <
// 2^31, sorted/order from kbit_sort_code over the m-entry code; grid = ceil(n / blocksize) * SIMD_WIDTH
// threads, threadgroups of SIMD_WIDTH; q has n bytes, absmax ceil(n / blocksize) floats.
#include "nearest_code.h"

template <typename T>
inline void quantize_blockwise_impl(device const T* A, device const float* sorted, device const uint* order,
                                    device uchar* q, device float* absmax, uint n, uint blocksize, uint m,
                                    uint tid, uint lane) {
  uint block = tid / SIMD_WIDTH;
  uint start = block * blocksize;
  uint end = min(start + blocksize, n);
  uint max_bits = 0;
  for (uint e = start + lane; e < end; e += SIMD_WIDTH) {
    max_bits = max(max_bits, abs_bits(load_float(A, e)));
  }
  max_bits = simd_max(max_bits);
  if (lane == 0 && start < n) absmax[block] = as_type<float>(max_bits);
  float inv = inverse_absmax(max_bits);
  for (uint e = start + lane; e < end; e += SIMD_WIDTH) {
    q[e] = uchar(order[sorted_position(sorted, m, scale_value(load_float(A, e), inv))]);
  }
}

#define KBIT_QUANTIZE_BLOCKWISE(SUFFIX, T)                                                                    \
  kernel void kbit_quantize_blockwise_##SUFFIX(device const T* A, device const float* sorted,                 \
                                               device const uint* order, device uchar* q, device float* absmax, \
                                               constant long& n, constant long& blocksize, constant long& m,   \
                                               uint tid [[thread_position_in_grid]],                           \
                                               uint lane [[thread_index_in_simdgroup]]) {                      \
    quantize_blockwise_impl(A, sorted, order, q, absmax, uint(n), uint(blocksize), uint(m), tid, lane);       \
  }

KBIT_QUANTIZE_BLOCKWISE(f32, float)
KBIT_QUANTIZE_BLOCKWISE(f16, half)
KBIT_QUANTIZE_BLOCKWISE(bf16, bf16_t)
