// blocks.cuh — blockwise scaling and nearest-code rounding (mirrors src/kbit/reference/blocks.py).
//
// Plain float arithmetic shared by the kernels and by host_check.cpp, which compiles this header with a
// host C++ compiler and compares it with the reference on the CPU. The library is built with
// --fmad=false (and a host build with -ffp-contract=off), so every + - * / sqrtf below rounds once to
// float32, exactly as the reference's separate torch operations do.
#ifndef KBIT_BLOCKS_CUH
#define KBIT_BLOCKS_CUH

#include <float.h>
#include <math.h>
#include <stdint.h>

#include "kbit_cuda.h"

#ifdef __CUDACC__
#define KBIT_HD __host__ __device__ __forceinline__
#else
#define KBIT_HD inline
#endif

namespace kbit {

KBIT_HD float to_float(float x) { return x; }

// max that propagates NaN like torch.amax (fmaxf would drop it).
KBIT_HD float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }

KBIT_HD bool is_finite(float x) { return fabsf(x) <= FLT_MAX; }

// 1 / max(absmax, KBIT_ABSMAX_EPS); a NaN absmax stays NaN (torch.clamp_min propagates it).
KBIT_HD float inverse_scale(float absmax) {
  const float d = absmax < KBIT_ABSMAX_EPS ? KBIT_ABSMAX_EPS : absmax;
  return 1.0f / d;
}

// clamp(x * inv, -1, 1), NaN passing through (torch.clamp).
KBIT_HD float scale_value(float x, float inv) {
  const float v = x * inv;
  return v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
}

// Position of code[i] in a stable ascending sort of code[0..n): entries that compare equal (FP4's +0
// and -0) keep their index order, as torch.sort(stable=True) does.
KBIT_HD int stable_rank(const float* code, int n, int i) {
  const float ci = code[i];
  int rank = 0;
  for (int j = 0; j < n; ++j) {
    const float cj = code[j];
    rank += (cj < ci || (cj == ci && j < i)) ? 1 : 0;
  }
  return rank;
}

// Decision boundary between two neighbouring sorted code values, in float32.
KBIT_HD float midpoint(float lo, float hi) { return (lo + hi) * 0.5f; }

// torch.searchsorted(bounds, v, right=False) on ascending bounds: the first index whose bound is >= v,
// so a value exactly on a boundary takes the lower code. NaN compares false and lands past the end.
KBIT_HD int count_below(const float* bounds, int n_bounds, float v) {
  int lo = 0;
  int hi = n_bounds;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (!(bounds[mid] >= v)) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// A code sorted for rounding: bounds[j] between sorted values j and j + 1, order[j] = original index of
// sorted value j. Filled by each kernel (cooperatively) or by host_check.cpp (sequentially).
struct SortedCode {
  float bounds[KBIT_CODE_MAX_SIZE - 1];
  uint8_t order[KBIT_CODE_MAX_SIZE];
  int n_bounds;
};

// Index into the original code of the code value nearest to scaled value v.
KBIT_HD int nearest_code(const SortedCode& table, float v) {
  return table.order[count_below(table.bounds, table.n_bounds, v)];
}

// 4-bit byte of a pair of codes: element 2*i in the high nibble, 2*i+1 in the low one.
KBIT_HD uint8_t pack_nibbles(int hi, int lo) { return static_cast<uint8_t>((hi << 4) | lo); }

// --- one lane's share of a block ---------------------------------------------------------------------
// A kernel's lane `first` of `step` lanes handles elements (or bytes) first, first + step, ... of a block;
// host_check.cpp runs the same functions with every lane in turn and reduces like the warp does.

// max|A[i]| over the lane's elements of block [start, end), NaN-propagating (0 if it has none).
template <class T>
KBIT_HD float absmax_share(const T* A, int64_t start, int64_t end, int first, int step) {
  float m = 0.0f;
  for (int64_t i = start + first; i < end; i += step) m = nan_max(m, fabsf(to_float(A[i])));
  return m;
}

// 8-bit codes of the lane's elements of block [start, end) with inverse scale inv.
template <class T>
KBIT_HD void quantize_codes_share(const T* A, int64_t start, int64_t end, float inv, const SortedCode& table,
                                  uint8_t* q, int first, int step) {
  for (int64_t i = start + first; i < end; i += step) {
    q[i] = static_cast<uint8_t>(nearest_code(table, scale_value(to_float(A[i]), inv)));
  }
}

// Packed 4-bit bytes of the lane: bytes start/2 + first, ... below ceil(end / 2) of a block [start, end)
// (start even). Byte b holds elements 2b (high nibble) and 2b + 1 (low; the zero code past n).
template <class T>
KBIT_HD void quantize_4bit_share(const T* A, int64_t start, int64_t end, int64_t n, float inv, const SortedCode& table,
                                 int zero_code, uint8_t* packed, int first, int step) {
  for (int64_t byte = start / 2 + first; byte < (end + 1) / 2; byte += step) {
    const int64_t e = 2 * byte;
    const int hi = nearest_code(table, scale_value(to_float(A[e]), inv));
    const int lo = e + 1 < n ? nearest_code(table, scale_value(to_float(A[e + 1]), inv)) : zero_code;
    packed[byte] = pack_nibbles(hi, lo);
  }
}

// --- LLM.int8() ----------------------------------------------------------------------------------------

// Code of x in a row (or column) with absmax s (reference int8_vectorwise_quant.scale_to_int8):
// round_half_even((x * 127) / s) clamped to [-127, 127]; 0 where s == 0.
KBIT_HD int8_t scale_to_int8(float x, float s) {
  if (s == 0.0f) return 0;
  float q = rintf(x * KBIT_INT8_MAX / s);
  q = q < -KBIT_INT8_MAX ? -KBIT_INT8_MAX : (q > KBIT_INT8_MAX ? KBIT_INT8_MAX : q);
  return static_cast<int8_t>(q);
}

// An outlier (|x| >= threshold, threshold > 0) is left out of its row's absmax and coded 0.
KBIT_HD bool is_outlier(float x, float threshold) { return threshold > 0.0f && fabsf(x) >= threshold; }

// max|x| over the lane's non-outlier elements of a row of `cols` values.
template <class T>
KBIT_HD float row_absmax_share(const T* row, int64_t cols, float threshold, int first, int step) {
  float m = 0.0f;
  for (int64_t c = first; c < cols; c += step) {
    const float x = to_float(row[c]);
    if (!is_outlier(x, threshold)) m = nan_max(m, fabsf(x));
  }
  return m;
}

// Codes of the lane's elements of a row with absmax s; with zero_columns (threshold > 0 and more than
// one row) columns flagged in `flags` are coded 0 entirely.
template <class T>
KBIT_HD void row_codes_share(const T* row, int64_t cols, float threshold, float s, bool zero_columns,
                             const int32_t* flags, int8_t* out, int first, int step) {
  for (int64_t c = first; c < cols; c += step) {
    const float x = to_float(row[c]);
    const bool zeroed = is_outlier(x, threshold) || (zero_columns && flags[c] != 0);
    out[c] = zeroed ? int8_t{0} : scale_to_int8(x, s);
  }
}

// Bytes X[r, k .. k+4) of a row-major int8 matrix [rows, K] as one 32-bit word (byte j in bits 8j..8j+7,
// the operand layout of __dp4a); rows and columns past the matrix read as 0, so a zero-padded tile of A
// and B contributes nothing to the int32 dot product.
KBIT_HD int32_t load_int8x4(const int8_t* X, int64_t rows, int64_t K, int64_t r, int64_t k) {
  uint32_t word = 0;
  if (r < rows) {
    for (int j = 0; j < 4; ++j) {
      if (k + j < K) word |= static_cast<uint32_t>(static_cast<uint8_t>(X[r * K + k + j])) << (8 * j);
    }
  }
  return static_cast<int32_t>(word);
}

}  // namespace kbit

#endif  // KBIT_BLOCKS_CUH
