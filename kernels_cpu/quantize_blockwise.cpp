// quantize_blockwise.cpp — kbit::quantize_blockwise: blockwise absmax + nearest of a 256-entry code, 1 byte each.
//
// Bit-identical to kbit.reference.quantize_blockwise for any blocksize > 0 and any code order: the
// code is stable-sorted once per call, the sorted position found by binary search over the float32
// midpoints (ties to the lower code, NaN to the last) and mapped back to the code index.
// avx512: 16 lanes; the first four search steps read a 16-entry table of every 16th boundary with
// vpermps, the last four gather from the full boundary table; the order gather is skipped when the
// code is already sorted (the dynamic maps are). avx2: the sorted position from a grid over the float
// bits (nearest_code.h: Grid256, cached per thread) when the code fits it: for sorted codes in two
// loops per span of 256 values without gathers (cells, then entries by scalar loads: 1.5x the one-gather
// loop on the 2-core AMD EPYC Zen 4 VM), for unsorted ones 8 lanes with two gathers. other ISAs (and
// codes the grid does not fit): the portable loop.
#include "convert.h"
#include "dispatch.h"
#include "kbit_cpu.h"
#include "nearest_code.h"
#include "parallel.h"

namespace kbit_cpu {

struct QuantizeBlockwiseArgs {
  const void* A;
  int32_t dtype;
  int64_t n;
  const float* code;  // 256 floats
  int64_t blocksize;
  uint8_t* out;
  float* absmax;
  int32_t threads;
};

namespace KBIT_NS {
namespace {

constexpr int64_t kMinElementsPerThread = 1 << 15;

float span_absmax(const QuantizeBlockwiseArgs& a, int64_t begin, int64_t end) {
  float m = 0.0f;
  bool nan = false;
  int64_t i = begin;
#if defined(KBIT_ISA_AVX512)
  const __m512 sign = _mm512_set1_ps(-0.0f);
  __m512 mv = _mm512_setzero_ps();
  __mmask16 nanv = 0;
  for (; i < end; i += 16) {
    const __mmask16 t = tail_mask16(end - i);
    const __m512 ax = _mm512_andnot_ps(sign, load16_masked(a.A, a.dtype, i, t));
    nanv |= _mm512_cmp_ps_mask(ax, ax, _CMP_UNORD_Q);
    mv = _mm512_max_ps(ax, mv);
  }
  m = _mm512_reduce_max_ps(mv);
  nan = nanv != 0;
#elif defined(KBIT_ISA_AVX2)
  // On the bits: with the sign cleared, unsigned order is float order and NaN is above infinity.
  const __m256i abs_mask = _mm256_set1_epi32(static_cast<int32_t>(kAbsBits));
  __m256i mv = _mm256_setzero_si256();
  for (; i + 8 <= end; i += 8) mv = _mm256_max_epu32(mv, _mm256_and_si256(_mm256_castps_si256(load8(a.A, a.dtype, i)), abs_mask));
  __m128i h = _mm_max_epu32(_mm256_castsi256_si128(mv), _mm256_extracti128_si256(mv, 1));
  h = _mm_max_epu32(h, _mm_srli_si128(h, 8));
  h = _mm_max_epu32(h, _mm_srli_si128(h, 4));
  m = bits_f32(static_cast<uint32_t>(_mm_cvtsi128_si32(h)));  // NaN bits stay NaN
  nan = m != m;
#endif
  for (; i < end; ++i) {
    const float x = load_scalar(a.A, a.dtype, i);
    const float ax = x < 0.0f ? -x : x;
    nan |= ax != ax;
    m = ax > m ? ax : m;
  }
  return nan ? __builtin_nanf("") : m;
}

// Block b of the input: its element range, absmax (stored to a.absmax[b]) and scale inverse_scale(absmax).
struct BlockSpan {
  int64_t begin, end;
  float absmax, inv;
};

inline BlockSpan block_span(const QuantizeBlockwiseArgs& a, int64_t b) {
  const int64_t begin = b * a.blocksize;
  const int64_t end = begin + a.blocksize < a.n ? begin + a.blocksize : a.n;
  const float amax = span_absmax(a, begin, end);
  a.absmax[b] = amax;
  return {begin, end, amax, inverse_scale(amax)};
}

#if defined(KBIT_ISA_AVX2)
// Sorted positions from the grid of nearest_code.h; the portable loop when the grid does not apply
// to the code or the call is too small to pay for building it.
constexpr int64_t kMinGridElements = 1 << 10;
// Values per pass of the two-loop search (cells, then entries): their cells and low bits stay in L1.
constexpr int64_t kSpan = 256;

// Sorted codes (the dynamic maps): per span of a block, the cells of all its values first, then their
// entries by scalar loads (grid_cells8 / cell_positions8: no gathers).
template <bool kFinite>
void code_span_sorted(const QuantizeBlockwiseArgs& a, const GridVectors& g, const Grid256& grid, __m256 inv, float inv_s,
                      int64_t i, int64_t len, int32_t* cell, int32_t* low) {
  const __m256 one = _mm256_set1_ps(1.0f), minus_one = _mm256_set1_ps(-1.0f);
  const int64_t vec = len & ~int64_t{7};
  for (int64_t k = 0; k < vec; k += 8) {
    // clamp(x * inv, -1, 1); min / max pass NaN through as torch.clamp does
    const __m256 s = _mm256_max_ps(minus_one, _mm256_min_ps(one, _mm256_mul_ps(load8(a.A, a.dtype, i + k), inv)));
    grid_cells8<kFinite>(s, g, cell + k, low + k);
  }
  int64_t k = 0;
  for (; k + 16 <= vec; k += 16)
    store_codes16(a.out + i + k, cell_positions8(g, cell + k, low + k), cell_positions8(g, cell + k + 8, low + k + 8));
  if (k < vec) store_codes8(a.out + i + k, cell_positions8(g, cell + k, low + k));
  for (k = vec; k < len; ++k)
    a.out[i + k] = static_cast<uint8_t>(grid_position(grid, scale_clamp(load_scalar(a.A, a.dtype, i + k), inv_s)));
}

void quantize_blocks_sorted(const QuantizeBlockwiseArgs& a, const Grid256& grid, int64_t b0, int64_t b1) {
  const GridVectors g(grid);
  alignas(32) int32_t cell[kSpan], low[kSpan];
  for (int64_t b = b0; b < b1; ++b) {
    const BlockSpan blk = block_span(a, b);
    const __m256 inv = _mm256_set1_ps(blk.inv);
    const bool finite = (f32_bits(blk.absmax) & kAbsBits) < 0x7F800000u;  // then no scaled value is NaN
    for (int64_t i = blk.begin; i < blk.end; i += kSpan) {
      const int64_t len = blk.end - i < kSpan ? blk.end - i : kSpan;
      if (finite) {
        code_span_sorted<true>(a, g, grid, inv, blk.inv, i, len, cell, low);
      } else {
        code_span_sorted<false>(a, g, grid, inv, blk.inv, i, len, cell, low);
      }
    }
  }
}

// Unsorted codes: 8 lanes, the positions by grid_positions8 (one gather) and the code indices by a
// second gather.
void quantize_blocks_grid(const QuantizeBlockwiseArgs& a, const SortedCode<256>& sc, const Grid256& grid,
                          const int32_t* order, int64_t b0, int64_t b1) {
  const __m256 one = _mm256_set1_ps(1.0f), minus_one = _mm256_set1_ps(-1.0f);
  for (int64_t b = b0; b < b1; ++b) {
    const BlockSpan blk = block_span(a, b);
    const __m256 inv = _mm256_set1_ps(blk.inv);
    int64_t i = blk.begin;
    for (; i + 8 <= blk.end; i += 8) {
      const __m256 s = _mm256_max_ps(minus_one, _mm256_min_ps(one, _mm256_mul_ps(load8(a.A, a.dtype, i), inv)));
      store_codes8(a.out + i, _mm256_i32gather_epi32(order, grid_positions8(grid, s), 4));
    }
    for (; i < blk.end; ++i) a.out[i] = sc.order[grid_position(grid, scale_clamp(load_scalar(a.A, a.dtype, i), blk.inv))];
  }
}
#endif

#if defined(KBIT_ISA_AVX512)
void quantize_blocks(const QuantizeBlockwiseArgs& a, const SortedCode<256>& sc, int64_t b0, int64_t b1) {
  const Search256 search(sc);
  for (int64_t b = b0; b < b1; ++b) {
    const BlockSpan blk = block_span(a, b);
    const __m512 inv = _mm512_set1_ps(blk.inv);
    const __m512 one = _mm512_set1_ps(1.0f), minus_one = _mm512_set1_ps(-1.0f);
    for (int64_t i = blk.begin; i < blk.end; i += 16) {
      const __mmask16 t = tail_mask16(blk.end - i);
      const __m512 s = _mm512_max_ps(minus_one, _mm512_min_ps(one, _mm512_mul_ps(load16_masked(a.A, a.dtype, i, t), inv)));
      _mm_mask_storeu_epi8(a.out + i, t, _mm512_cvtepi32_epi8(search.codes(s)));
    }
  }
}
#else
void quantize_span_scalar(const QuantizeBlockwiseArgs& a, const SortedCode<256>& sc, float inv, int64_t begin,
                          int64_t end) {
  for (int64_t i = begin; i < end; ++i)
    a.out[i] = sc.order[sorted_position<256>(sc.bounds, scale_clamp(load_scalar(a.A, a.dtype, i), inv))];
}

void quantize_blocks(const QuantizeBlockwiseArgs& a, const SortedCode<256>& sc, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    const BlockSpan blk = block_span(a, b);
    quantize_span_scalar(a, sc, blk.inv, blk.begin, blk.end);
  }
}
#endif

}  // namespace

void quantize_blockwise(const QuantizeBlockwiseArgs& a) {
  SortedCode<256> sc;
  sort_code<256>(a.code, sc);
  const int64_t nb = (a.n + a.blocksize - 1) / a.blocksize;
  const int64_t min_blocks = kMinElementsPerThread / a.blocksize + 1;
#if defined(KBIT_ISA_AVX2)
  const Grid256* grid = a.n >= kMinGridElements ? &cached_grid(a.code, sc) : nullptr;
  if (grid != nullptr && grid->ok) {
    alignas(32) int32_t order[kPositions];
    bool sorted = true;
    for (int j = 0; j < kPositions; ++j) {
      order[j] = sc.order[j];
      sorted &= sc.order[j] == j;
    }
    if (sorted) {
      parallel_for(nb, 1, min_blocks, a.threads,
                   [&](int64_t b0, int64_t b1, int, int) { quantize_blocks_sorted(a, *grid, b0, b1); });
    } else {
      parallel_for(nb, 1, min_blocks, a.threads,
                   [&](int64_t b0, int64_t b1, int, int) { quantize_blocks_grid(a, sc, *grid, order, b0, b1); });
    }
    return;
  }
#endif
  parallel_for(nb, 1, min_blocks, a.threads, [&](int64_t b0, int64_t b1, int, int) { quantize_blocks(a, sc, b0, b1); });
}

}  // namespace KBIT_NS
}  // namespace kbit_cpu

#if defined(KBIT_ISA_SCALAR)
#include "status.h"

KBIT_DECLARE_ISAS(void quantize_blockwise(const QuantizeBlockwiseArgs& a))

extern "C" int32_t kbit_cpu_quantize_blockwise(const void* A, int32_t dtype, int64_t n, const float* code,
                                               int64_t blocksize, uint8_t* out, float* absmax, int32_t num_threads) {
  using namespace kbit_cpu;
  return guarded("quantize_blockwise", [&] {
    require_dtype(dtype, "A");
    require_threads(num_threads);
    require(n >= 0, "n must be >= 0");
    require(blocksize > 0, "blocksize must be > 0");
    if (n == 0) return;
    require(A != nullptr && code != nullptr && out != nullptr && absmax != nullptr,
            "A, code, out and absmax must not be NULL");
    const QuantizeBlockwiseArgs args{A, dtype, n, code, blocksize, out, absmax, num_threads};
    KBIT_DISPATCH_SPLIT512(quantize_blockwise(args));
  });
}
#endif
