// nearest_code.h — blockwise scaling and nearest-code rounding exactly as kbit.reference.blocks does it.
//
// Codes are sorted by value with a stable sort (equal values keep index order: FP4 +0 before -0);
// boundaries are the float32 midpoints (a + b) * 0.5 of sorted neighbours. The sorted position of x is
// the number of boundaries b with !(b >= x) — torch.searchsorted(right=False), so a value on a boundary
// takes the lower code and NaN takes the last position — found by a branchless binary search.
// AVX-512 builds add the 16-lane forms for 256-entry codes: Lut256 (table lookup) and Search256.
// Grid256 finds the sorted position among 256 codes in O(1) from the float bits of x (used by the AVX2
// kernels, 8 lanes with one gather); it is exact wherever it applies and says so.
#ifndef KBIT_CPU_NEAREST_CODE_H
#define KBIT_CPU_NEAREST_CODE_H

#include <cstdint>
#include <cstring>

#include "convert.h"
#include "dispatch.h"
#include "kbit_cpu.h"

#if defined(KBIT_ISA_AVX512) || defined(KBIT_ISA_AVX2)
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

// The float of the largest |x| bits found by a bit max (below): NaN (any payload) as the quiet NaN.
inline float abs_bits_value(uint32_t m) { return m > 0x7F800000u ? __builtin_nanf("") : bits_f32(m); }

// max|x| over [0, n) with NaN propagated (torch amax). Taken as an unsigned max over the bits with the
// sign cleared (float order, NaN above infinity): no branches, so the compiler vectorizes it per ISA.
inline float absmax_scalar(const float* x, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = f32_bits(x[i]) & 0x7FFFFFFFu;
    m = b > m ? b : m;
  }
  return abs_bits_value(m);
}

// ---- Grid256: sorted position among 256 codes from the bits of x ----------------------------------
//
// The scaled value x (in [-1, 1], or NaN) falls into a cell chosen by its bits: with t = |x|'s bits
// minus those of 2^-24 (0 below), the cell offset is t >> (23 - m): each binade [2^e, 2^(e+1)) above
// 2^-24 splits into 2^m cells by the top m mantissa bits, so cells are finest where the dynamic maps'
// codes are densest (near zero); |x| < 2^-24 shares the bottom cell with the first sub-cell above.
// Negative values mirror the positive cells; NaN gets a cell of its own on each side.
// For each cell, base = number of boundaries below the cell's smallest value. When no cell holds more
// than one boundary (and the bottom cells none), the boundaries below x are the `base` ones plus, if
// the cell holds one, that one when x is past it — exactly the binary search's !(b >= x) count. Two
// floats of one cell (not the bottom one) differ only in their low 23 - m bits, which order them
// (reversed for negative values): so the cell's boundary is stored as those bits (their complement
// for negative cells) and compared with x's as integers. One 32-bit entry per cell:
//   base << kGridBaseShift | low bits of the boundary  (all ones: no boundary, never passed)
// m is the smallest in [kGridMinBits, kGridMaxBits] that fits: 6 for the signed dynamic map, 7 for
// the unsigned one. Codes that fit no m (duplicate boundaries, boundaries at or near 0, NaN codes)
// leave ok false: callers use the binary search.
constexpr uint32_t kGridLowBits = 103u << 23;  // bits of 2^-24
constexpr uint32_t kGridOneBits = 0x3F800000u;  // bits of 1.0
constexpr uint32_t kAbsBits = 0x7FFFFFFFu;
constexpr int kGridMinBits = 3, kGridMaxBits = 7;
constexpr int kGridBaseShift = 24;  // entries: base in bits 31..24, boundary bits in 23..0 (23 - m <= 20)
constexpr int kGridMaxCellsPerSign = static_cast<int>((kGridOneBits - kGridLowBits) >> (23 - kGridMaxBits)) + 2;
constexpr int kPositions = 256;

struct Grid256 {
  float code[kPositions];  // the code the grid was built from (callers cache grids by it)
  bool built;              // code[] and ok are valid
  bool ok;                 // the grid applies to this code
  int32_t shift;           // 23 - m
  uint32_t low_mask;       // (1 << shift) - 1
  int32_t cap;             // cell offset of NaN: past every |x| <= 1
  int32_t cells;           // cells per sign: cap + 1; cell index = cells + offset (x >= 0), cells - 1 - offset (x < 0)
  uint32_t entry[2 * kGridMaxCellsPerSign];
};

// Builds g for the sorted code sc (sets g.ok; g.code is left to the caller).
inline void build_grid(const SortedCode<256>& sc, Grid256& g) {
  g.built = true;
  g.ok = false;
  for (int k = 0; k + 1 < kPositions; ++k)
    if (!(sc.bounds[k] == sc.bounds[k])) return;  // a NaN boundary: no order to search
  for (int m = kGridMinBits; m <= kGridMaxBits; ++m) {
    g.shift = 23 - m;
    g.low_mask = (1u << g.shift) - 1;
    g.cap = static_cast<int32_t>((kGridOneBits - kGridLowBits) >> g.shift) + 1;
    g.cells = g.cap + 1;
    bool fits = true;
    int k = 0;  // boundaries below the current cell (cells run in increasing value order)
    for (int32_t c = 1; c + 1 < 2 * g.cells && fits; ++c) {
      const bool negative = c < g.cells;
      const uint32_t offset = static_cast<uint32_t>(negative ? g.cells - 1 - c : c - g.cells);
      const uint32_t lo = offset == 0 ? 0u : kGridLowBits + (offset << g.shift);
      const uint32_t hi = kGridLowBits + ((offset + 1) << g.shift) - 1;
      const float first = negative ? -bits_f32(hi) : bits_f32(lo);
      const float last = negative ? -bits_f32(lo) : bits_f32(hi);
      while (k + 1 < kPositions && sc.bounds[k] < first) ++k;
      int inside = 0;  // boundaries b with first <= b < last: the only ones whose side depends on x
      while (k + inside + 1 < kPositions && sc.bounds[k + inside] < last) ++inside;
      fits = inside <= (offset == 0 ? 0 : 1);
      uint32_t low = g.low_mask;  // no boundary: never passed
      if (inside == 1) {
        const uint32_t b = (f32_bits(sc.bounds[k]) & kAbsBits) - kGridLowBits;
        low = negative ? g.low_mask - (b & g.low_mask) : b & g.low_mask;
      }
      g.entry[c] = static_cast<uint32_t>(k) << kGridBaseShift | low;
    }
    if (fits) {
      g.entry[0] = g.entry[2 * g.cells - 1] = static_cast<uint32_t>(kPositions - 1) << kGridBaseShift | g.low_mask;  // NaN
      g.ok = true;
      return;
    }
  }
}

// Sorted position of x (clamped to [-1, 1] or NaN) by the grid (g.ok).
inline int grid_position(const Grid256& g, float x) {
  const uint32_t u = f32_bits(x), a = u & kAbsBits, negative = (u >> 31) != 0 ? ~0u : 0u;
  const uint32_t t = a > kGridLowBits ? a - kGridLowBits : 0u;
  uint32_t offset = t >> g.shift;
  offset = offset < static_cast<uint32_t>(g.cap) ? offset : static_cast<uint32_t>(g.cap);
  const uint32_t e = g.entry[static_cast<uint32_t>(g.cells) + (offset ^ negative)];
  const uint32_t low = (t ^ negative) & g.low_mask;  // x's low bits, complemented when negative
  return static_cast<int>(e >> kGridBaseShift) + ((e & g.low_mask) < low ? 1 : 0);
}

// The grid of `code` from a per-thread cache of recently used grids, replaced round-robin: the 8-bit
// optimizers call with the same two dynamic maps every step, and a build costs ~10^4 operations. The
// reference stays valid until this thread's kGridCacheSlots-th next miss.
constexpr int kGridCacheSlots = 3;

inline const Grid256& cached_grid(const float* code, const SortedCode<256>& sc) {
  static thread_local Grid256 cache[kGridCacheSlots];
  static thread_local int victim;
  for (int i = 0; i < kGridCacheSlots; ++i)
    if (cache[i].built && std::memcmp(cache[i].code, code, sizeof cache[i].code) == 0) return cache[i];
  Grid256& g = cache[victim];
  victim = (victim + 1) % kGridCacheSlots;
  build_grid(sc, g);
  std::memcpy(g.code, code, sizeof g.code);
  return g;
}

#if defined(KBIT_ISA_AVX2) || defined(KBIT_ISA_AVX512)  // avx512: for kernels that keep the AVX2 form
// table[bytes of w, low first]: vmovss and three vinsertps from memory, the indices taken out of w by
// movzx of its low two bytes and a shift.
inline __m128 lookup4_word(const float* table, uint32_t w) {
  __m128 r = _mm_load_ss(table + (w & 0xFF));
  r = _mm_insert_ps(r, _mm_load_ss(table + ((w >> 8) & 0xFF)), 0x10);
  w >>= 16;
  KBIT_OPAQUE(w);
  r = _mm_insert_ps(r, _mm_load_ss(table + (w & 0xFF)), 0x20);
  return _mm_insert_ps(r, _mm_load_ss(table + (w >> 8)), 0x30);
}

// table[q[0..7]] for byte indices from memory: one 64-bit load of the indices, eight scalar table
// loads merged by vinsertps. On the AVX2-only CPUs measured (Zen 4 under a hypervisor) this takes
// ~0.7 cycles per element against ~1.3 for vgatherdps (byte loads of the indices: ~3% slower).
inline __m256 lookup8(const float* table, const uint8_t* q) {
  const uint64_t w = load_u64(q);
  const __m128 lo = lookup4_word(table, static_cast<uint32_t>(w)), hi = lookup4_word(table, static_cast<uint32_t>(w >> 32));
  return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

// Sorted positions of 8 clamped values by the grid (g.ok), as grid_position: cell indices and low
// bits in vectors, one vpgatherdd of the entries, one integer compare.
inline __m256i grid_positions8(const Grid256& g, __m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(static_cast<int32_t>(kAbsBits)));
  const __m256i t = _mm256_max_epi32(_mm256_sub_epi32(a, _mm256_set1_epi32(static_cast<int32_t>(kGridLowBits))),
                                     _mm256_setzero_si256());
  const __m256i offset = _mm256_min_epu32(_mm256_srl_epi32(t, _mm_cvtsi32_si128(g.shift)), _mm256_set1_epi32(g.cap));
  const __m256i negative = _mm256_srai_epi32(u, 31);
  // x < 0: cells - 1 - offset = cells + ~offset
  const __m256i cell = _mm256_add_epi32(_mm256_set1_epi32(g.cells), _mm256_xor_si256(offset, negative));
  const __m256i low_mask = _mm256_set1_epi32(static_cast<int32_t>(g.low_mask));
  const __m256i low = _mm256_and_si256(_mm256_xor_si256(t, negative), low_mask);
  const __m256i e = _mm256_i32gather_epi32(reinterpret_cast<const int*>(g.entry), cell, 4);
  const __m256i passed = _mm256_cmpgt_epi32(low, _mm256_and_si256(e, low_mask));  // -1 where x is past it
  return _mm256_sub_epi32(_mm256_srli_epi32(e, kGridBaseShift), passed);
}
#endif

#if defined(KBIT_ISA_AVX2) || defined(KBIT_ISA_AVX512)  // avx512: for kernels that keep the AVX2 form
// ---- Grid search without gathers (AVX2) -------------------------------------------------------
// vpgatherdd is slow on the AVX2-only CPUs measured, so the loops over many values split
// grid_positions8 in two: grid_cells8 stores the cell (entry index) and the compared low bits of 8
// values, cell_positions8 later reads the entries of 8 stored cells with scalar loads (faster than
// extracting the cells to general registers in the same loop). quantize_blockwise: 1.5-1.7 cycles per value
// against 2.3-2.5 with the gather (Zen 4, one thread).

// Grid fields held in vectors for the loops.
struct GridVectors {
  const int* entry;
  __m128i shift;
  __m256i cap, cells, low_mask;
  explicit GridVectors(const Grid256& g)
      : entry(reinterpret_cast<const int*>(g.entry)), shift(_mm_cvtsi32_si128(g.shift)), cap(_mm256_set1_epi32(g.cap)),
        cells(_mm256_set1_epi32(g.cells)), low_mask(_mm256_set1_epi32(static_cast<int32_t>(g.low_mask))) {}
};

// The cells and low bits of 8 clamped scaled values s, stored to cell[0..7] and low[0..7] (32-byte
// aligned). kFinite: no lane is NaN (the block's absmax is finite), so no offset reaches the NaN cell.
template <bool kFinite>
inline void grid_cells8(__m256 s, const GridVectors& g, int32_t* cell, int32_t* low) {
  const __m256i u = _mm256_castps_si256(s);
  const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(static_cast<int32_t>(kAbsBits)));
  const __m256i t = _mm256_max_epi32(_mm256_sub_epi32(a, _mm256_set1_epi32(static_cast<int32_t>(kGridLowBits))),
                                     _mm256_setzero_si256());
  __m256i offset = _mm256_srl_epi32(t, g.shift);
  if (!kFinite) offset = _mm256_min_epu32(offset, g.cap);
  const __m256i negative = _mm256_srai_epi32(u, 31);
  _mm256_store_si256(reinterpret_cast<__m256i*>(cell), _mm256_add_epi32(g.cells, _mm256_xor_si256(offset, negative)));
  _mm256_store_si256(reinterpret_cast<__m256i*>(low), _mm256_and_si256(_mm256_xor_si256(t, negative), g.low_mask));
}

// The sorted positions of 8 stored cells: their entries read by scalar loads (the cells come back from
// memory two per 64-bit load) merged by vpinsrd.
inline __m256i cell_positions8(const GridVectors& g, const int32_t* cell, const int32_t* low) {
  uint64_t c01, c23, c45, c67;
  std::memcpy(&c01, cell, sizeof c01);
  std::memcpy(&c23, cell + 2, sizeof c23);
  std::memcpy(&c45, cell + 4, sizeof c45);
  std::memcpy(&c67, cell + 6, sizeof c67);
  const int* e = g.entry;
  __m128i lo = _mm_cvtsi32_si128(e[static_cast<uint32_t>(c01)]), hi = _mm_cvtsi32_si128(e[static_cast<uint32_t>(c45)]);
  lo = _mm_insert_epi32(lo, e[c01 >> 32], 1);
  hi = _mm_insert_epi32(hi, e[c45 >> 32], 1);
  lo = _mm_insert_epi32(lo, e[static_cast<uint32_t>(c23)], 2);
  hi = _mm_insert_epi32(hi, e[static_cast<uint32_t>(c67)], 2);
  lo = _mm_insert_epi32(lo, e[c23 >> 32], 3);
  hi = _mm_insert_epi32(hi, e[c67 >> 32], 3);
  const __m256i entries = _mm256_set_m128i(hi, lo);
  const __m256i passed = _mm256_cmpgt_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(low)),
                                            _mm256_and_si256(entries, g.low_mask));
  return _mm256_sub_epi32(_mm256_srli_epi32(entries, kGridBaseShift), passed);
}

// codes[0..15] = the 16 positions of i0 (first 8) and i1, as bytes.
inline void store_codes16(uint8_t* codes, __m256i i0, __m256i i1) {
  const __m256i w = _mm256_packus_epi32(i0, i1);  // i0[0..3] i1[0..3] | i0[4..7] i1[4..7]
  const __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(codes), _mm_shuffle_epi32(b, _MM_SHUFFLE(3, 1, 2, 0)));
}

// codes[0..7] = the 8 positions of i, as bytes.
inline void store_codes8(uint8_t* codes, __m256i i) {
  const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(codes), _mm_packus_epi16(words, words));
}
#endif

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
