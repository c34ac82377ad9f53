// nearest_code.h — blockwise scaling and nearest-code rounding exactly as kbit.reference.blocks does it.
//
// Codes are sorted by value with a stable sort (equal values keep index order: FP4 +0 before -0);
// boundaries are the float32 midpoints (a + b) * 0.5 of sorted neighbours. The sorted position of x is
// the number of boundaries b with !(b >= x) — torch.searchsorted(right=False), so a value on a boundary
// takes the lower code and NaN takes the last position — found by a branchless binary search.
// AVX-512 builds add the 16-lane forms for 256-entry codes: Lut256 (table lookup) and Search256.
#ifndef KBIT_CPU_NEAREST_CODE_H
#define KBIT_CPU_NEAREST_CODE_H

#include <cstdint>

#include "dispatch.h"
#include "kbit_cpu.h"

#if defined(KBIT_ISA_AVX512)
#include <immintrin.h>
#endif

namespace kbit_cpu {
namespace KBIT_NS {

// Sorted view of a codebook of N = 16 or 256 values: bounds[0, N-1) and code index of each sorted slot.
template <int N>
struct SortedCode {
  float bounds[N];     // bounds[N - 1] unused (kept 0)
  float sorted[N];
  uint8_t order[N];
};

template <int N>
inline void sort_code(const float* code, SortedCode<N>& out) {
  for (int i = 0; i < N; ++i) {  // stable insertion sort by value
    const float v = code[i];
    int j = i;
    while (j > 0 && v < out.sorted[j - 1]) {
      out.sorted[j] = out.sorted[j - 1];
      out.order[j] = out.order[j - 1];
      --j;
    }
    out.sorted[j] = v;
    out.order[j] = static_cast<uint8_t>(i);
  }
  for (int i = 0; i + 1 < N; ++i) out.bounds[i] = (out.sorted[i] + out.sorted[i + 1]) * 0.5f;
  out.bounds[N - 1] = 0.0f;
}

// Sorted position of x in [0, N - 1].
template <int N>
inline int sorted_position(const float* bounds, float x) {
  int p = 0;
  for (int step = N / 2; step >= 1; step /= 2) {
    if (!(bounds[p + step - 1] >= x)) p += step;
  }
  return p;
}

// 1 / max(absmax, ABSMAX_EPS) with NaN kept (torch clamp_min propagates NaN).
inline float inverse_scale(float absmax) {
  const float clamped = absmax < KBIT_ABSMAX_EPS ? KBIT_ABSMAX_EPS : absmax;
  return 1.0f / clamped;
}

// clamp(x * inv, -1, 1) with NaN kept.
inline float scale_clamp(float x, float inv) {
  const float s = x * inv;
  return s < -1.0f ? -1.0f : (s > 1.0f ? 1.0f : s);
}

// max|x| over [begin, end) with NaN propagated (torch amax).
inline float absmax_scalar(const float* x, int64_t n) {
  float m = 0.0f;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    const float a = x[i] < 0.0f ? -x[i] : x[i];
    nan |= a != a;
    m = a > m ? a : m;
  }
  return nan ? __builtin_nanf("") : m;
}

#if defined(KBIT_ISA_AVX512)
// Lookup of 16 indices in [0, 255] into a 256-entry float table without gathers (slow on some CPUs):
// eight vpermt2ps over 32-entry slices (index bits 4:0), merged by bits 5, 6 and 7.
struct Lut256 {
  __m512 t[16];
  explicit Lut256(const float* table) {
    for (int i = 0; i < 16; ++i) t[i] = _mm512_loadu_ps(table + 16 * i);
  }
  __m512 lookup(__m512i idx) const {
    const __mmask16 b5 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(32));
    const __mmask16 b6 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(64));
    const __mmask16 b7 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(128));
    __m512 q[4];
    for (int i = 0; i < 4; ++i) {
      const __m512 lo = _mm512_permutex2var_ps(t[4 * i], idx, t[4 * i + 1]);
      const __m512 hi = _mm512_permutex2var_ps(t[4 * i + 2], idx, t[4 * i + 3]);
      q[i] = _mm512_mask_blend_ps(b5, lo, hi);
    }
    return _mm512_mask_blend_ps(b7, _mm512_mask_blend_ps(b6, q[0], q[1]), _mm512_mask_blend_ps(b6, q[2], q[3]));
  }
};

// Vector sorted position + code index of 16 scaled values over a 256-entry code, in two levels of
// four binary-search steps: the group c of 16 sorted slots from every 16th boundary (vpermps over a
// 16-entry table), then the slot f inside the group from 15 tables W_j[c] = bounds[16 c + j] — each step
// reads its candidates with one to four vpermt2ps (the tables of the f values still possible) merged
// by the bits of f. No gathers (slow on some CPUs), 16 vector registers of tables.
struct Search256 {
  __m512 coarse_b, coarse_t4, coarse_t2, coarse_t1;  // every 16th boundary, shifted per step
  __m512 w[16];                                      // w[j][c] = bounds[16 c + j]; w[15] unused
  alignas(64) int32_t order[256];
  bool sorted;
  explicit Search256(const SortedCode<256>& sc) : sorted(true) {
    alignas(64) float t[3][16];
    for (int j = 0; j < 16; ++j) {
      // coarse boundary c = bounds[16 c + 15] for c in 0..14; step s reads coarse[p + s - 1]
      auto coarse = [&sc](int c) { return c < 15 ? sc.bounds[16 * c + 15] : 0.0f; };
      t[0][j] = coarse(j + 3);
      t[1][j] = coarse(j + 1);
      t[2][j] = coarse(j);
    }
    coarse_b = _mm512_set1_ps(sc.bounds[16 * 7 + 15]);
    coarse_t4 = _mm512_load_ps(t[0]);
    coarse_t2 = _mm512_load_ps(t[1]);
    coarse_t1 = _mm512_load_ps(t[2]);
    alignas(64) float col[16];
    for (int j = 0; j < 16; ++j) {
      for (int c = 0; c < 16; ++c) col[c] = j < 15 ? sc.bounds[16 * c + j] : 0.0f;
      w[j] = _mm512_load_ps(col);
    }
    for (int j = 0; j < 256; ++j) {
      order[j] = sc.order[j];
      sorted &= sc.order[j] == j;
    }
  }
  // Sorted position (0..255) of each lane.
  __m512i positions(__m512 s) const {
    const __m512i zero = _mm512_setzero_si512();
    __m512i c = _mm512_mask_mov_epi32(zero, _mm512_cmp_ps_mask(coarse_b, s, _CMP_NGE_UQ), _mm512_set1_epi32(8));
    c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(_mm512_permutexvar_ps(c, coarse_t4), s, _CMP_NGE_UQ), c, _mm512_set1_epi32(4));
    c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(_mm512_permutexvar_ps(c, coarse_t2), s, _CMP_NGE_UQ), c, _mm512_set1_epi32(2));
    c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(_mm512_permutexvar_ps(c, coarse_t1), s, _CMP_NGE_UQ), c, _mm512_set1_epi32(1));
    // step 8: W_7
    __m512i f = _mm512_mask_mov_epi32(zero, _mm512_cmp_ps_mask(_mm512_permutexvar_ps(c, w[7]), s, _CMP_NGE_UQ),
                                      _mm512_set1_epi32(8));
    // step 4: W_{f+3}, f in {0, 8}: tables W_3 | W_11 by f bit 3
    const __m512i hi3 = _mm512_or_si512(c, _mm512_slli_epi32(_mm512_srli_epi32(f, 3), 4));
    f = _mm512_mask_add_epi32(f, _mm512_cmp_ps_mask(_mm512_permutex2var_ps(w[3], hi3, w[11]), s, _CMP_NGE_UQ), f,
                              _mm512_set1_epi32(4));
    // step 2: W_{f+1}, f in {0, 4, 8, 12}: pairs (W_1 | W_5), (W_9 | W_13) by bit 2, then bit 3
    const __m512i hi2 = _mm512_or_si512(c, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(f, 2), _mm512_set1_epi32(1)), 4));
    const __mmask16 f8 = _mm512_test_epi32_mask(f, _mm512_set1_epi32(8));
    const __m512 b2 = _mm512_mask_blend_ps(f8, _mm512_permutex2var_ps(w[1], hi2, w[5]), _mm512_permutex2var_ps(w[9], hi2, w[13]));
    f = _mm512_mask_add_epi32(f, _mm512_cmp_ps_mask(b2, s, _CMP_NGE_UQ), f, _mm512_set1_epi32(2));
    // step 1: W_f, f even: pairs (W_0 | W_2), (W_4 | W_6), (W_8 | W_10), (W_12 | W_14) by bit 1, then bits 2, 3
    const __m512i hi1 = _mm512_or_si512(c, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(f, 1), _mm512_set1_epi32(1)), 4));
    const __mmask16 g4 = _mm512_test_epi32_mask(f, _mm512_set1_epi32(4)), g8 = _mm512_test_epi32_mask(f, _mm512_set1_epi32(8));
    const __m512 lo = _mm512_mask_blend_ps(g4, _mm512_permutex2var_ps(w[0], hi1, w[2]), _mm512_permutex2var_ps(w[4], hi1, w[6]));
    const __m512 hi = _mm512_mask_blend_ps(g4, _mm512_permutex2var_ps(w[8], hi1, w[10]), _mm512_permutex2var_ps(w[12], hi1, w[14]));
    f = _mm512_mask_add_epi32(f, _mm512_cmp_ps_mask(_mm512_mask_blend_ps(g8, lo, hi), s, _CMP_NGE_UQ), f, _mm512_set1_epi32(1));
    return _mm512_add_epi32(_mm512_slli_epi32(c, 4), f);
  }
  // Code index of each lane.
  __m512i codes(__m512 s) const {
    const __m512i p = positions(s);
    return sorted ? p : _mm512_i32gather_epi32(p, order, 4);
  }
};

#endif

}  // namespace KBIT_NS
}  // namespace kbit_cpu

#endif  // KBIT_CPU_NEAREST_CODE_H
