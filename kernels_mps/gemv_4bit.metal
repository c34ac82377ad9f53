// kbit::gemv_4bit on Apple GPUs: out[r] = sum_k A[k] * (code[q[r*K + k]] * absmax[(r*K + k) / blocksize]),
// accumulated in float32 and rounded once to A's dtype. Mirrors src/kbit/reference/gemv_4bit.py (which
// dequantizes W to float32 and runs F.linear); only the order of the float32 sum differs.
//
// One SIMD-group (one threadgroup of SIMD_WIDTH threads) per output row: the lanes stride over K
// (neighbouring lanes read neighbouring nibbles), then a SIMD sum. Any K works: a row may start in the
// low nibble of a byte when K is odd.
//
// Host contract (kbit_mps/gemv_4bit.py): A contiguous with K elements, B the packed bytes of W [N, K]
// (any storage dtype viewed as uint8), N * K < 2^31, absmax float32 with ceil(N*K / blocksize) entries,
// code float32 with 16 entries, blocksize a power of two given as its log2; grid = N * SIMD_WIDTH
// threads, threadgroups of SIMD_WIDTH; out has N elements of A's dtype.
#include "formats.h"

template <typename T>
inline void gemv_4bit_impl(device const T* A, device const uchar* B, device const float* absmax,
                           device const float* code, device T* out, uint N, uint K, uint blocksize_log2,
                           uint tid, uint lane) {
  uint row = tid / SIMD_WIDTH;
  float acc = 0.0f;
  if (row < N) {
    uint base = row * K;
    for (uint k = lane; k < K; k += SIMD_WIDTH) {
      uint e = base + k;
      uint packed = B[e / 2u];
      uint q = (e & 1u) != 0u ? (packed & NIBBLE_MASK) : (packed >> NIBBLE_BITS);
      float w = code[q] * absmax[e >> blocksize_log2];
      acc += load_float(A, k) * w;
    }
  }
  acc = simd_sum(acc);
  if (lane == 0 && row < N) store_float(out, row, acc);
}

#define KBIT_GEMV_4BIT(SUFFIX, T)                                                                       \
  kernel void kbit_gemv_4bit_##SUFFIX(device const T* A, device const uchar* B, device const float* absmax, \
                                      device const float* code, device T* out, constant long& N,         \
                                      constant long& K, constant long& blocksize_log2,                   \
                                      uint tid [[thread_position_in_grid]],                              \
                                      uint lane [[thread_index_in_simdgroup]]) {                         \
    gemv_4bit_impl(A, B, absmax, code, out, uint(N), uint(K), uint(blocksize_log2), tid, lane);          \
  }

KBIT_GEMV_4BIT(f32, float)
KBIT_GEMV_4BIT(f16, half)
KBIT_GEMV_4BIT(bf16, bf16_t)
