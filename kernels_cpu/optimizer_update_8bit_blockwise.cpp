// optimizer_update_8bit_blockwise.cpp — kbit::optimizer_update_8bit_blockwise: one step with blockwise 8-bit states.
//
// As kbit.reference.optimizer_update_8bit_blockwise, block by block (256 elements, threads split the
// blocks): dequantize the states (qmap[code] * absmax), apply the rule of optimizer_rules.h in
// float32 (no trust scale), decoupled decay after the step for two-state rules and before it for
// lion; NaN/Inf gradients zero their states and keep p, skip_zeros keeps p and the states; then
// requantize: absmax = max|s| (NaN propagates), nearest code of the sorted map (ties to the lower
// code), and for the signed map (state1) the sign rule moves an index of the wrong sign one step.
// avx512: the avx2 forms below for the fused Adam / LAMB blocks and for requantization by grid (on
// Zen 4 with AVX-512, 4M params, 2 threads: the Adam step 10.6 ms with the 16-lane forms, 5.5 ms with
// these); state lookups, and the nearest-code search and sign rule of maps without a grid, in 16-lane
// vectors (nearest_code.h: Lut256, Search256); the rule itself is portable code vectorized by the
// compiler for each ISA.
// avx2: state lookups by lookup8, nearest codes by Grid256 (sorted maps it fits: the dynamic maps;
// others take the portable loop), and Adam / LAMB blocks fused into one pass plus the coding pass
// (adam_block). Every path gives the same bits as the portable one.
//
// avx2 Adam, measured on the 2-core AMD EPYC (Zen 4) VM (4M fp32 params, dynamic maps, one thread,
// cycles per element at 2.7 GHz, minimum of 21 in one process): 6.5, was 8.0-8.3 (1.25-1.3x). Where
// it goes: the fused pass 3.2 (the two state lookups 1.1; the divisions and sqrt 0.8 — the rule's
// m / c1 and sqrt(v) / c2 stay IEEE divisions, as in the portable path: multiplying by reciprocals
// would save ~0.2 but change bits; the rest is mostly streaming g and p), the coding pass 3.3 for the
// two states (1.8 of it the grid entry reads, 8 random 32-bit reads per 8 values however they are done:
// vpgatherdd, scalar reads from extracted indices, or from indices stored first — the last is the
// fastest, code_grid). Gains: the coding pass in two loops without vpgatherdd (-0.6), adam_block
// specialized for dtype / skip_zeros / decay (-0.5), 64-bit code loads for the lookups (-0.2). With
// 2 threads, against torch.optim.Adam (foreach) on the same 4M fp32 params in the same process with
// its temporaries from the heap (5.7-10 ms a step; 18-25 ms when they are fresh mmaps): 1.1-1.35x
// (medians / minima of rounds), was 0.75-0.95x; the two threads give 1.5-1.9x one.
// Tried and not faster: coding block k inside block k + 1's pass (software pipelining), one of the
// lookups by vgatherdps, codes and entries by vpgatherdd, self-scheduled 64-block chunks (~5% with 2
// threads, within the noise).
#include <cmath>

#include "convert.h"
#include "dispatch.h"
#include "kbit_cpu.h"
#include "nearest_code.h"
#include "optimizer_rules.h"
#include "parallel.h"

namespace kbit_cpu {

struct OptimizerUpdate8bitArgs {
  int32_t dtype;
  const void* g;
  void* p;
  uint8_t* state1;  // n bytes (2n for ademamix)
  uint8_t* state2;  // n bytes or nullptr
  int64_t n, nb;
  const float* qmap1;
  const float* qmap2;
  float* absmax1;   // nb floats (2nb for ademamix)
  float* absmax2;   // nb floats or nullptr
  bool skip_zeros;
  int32_t threads;
};

namespace KBIT_NS {
namespace {

constexpr int64_t kBlock = KBIT_OPTIMIZER_BLOCKSIZE;
constexpr int64_t kMinBlocksPerThread = 16;
constexpr float kFloatMax = 3.4028234663852886e38f;

struct Maps {
  SortedCode<256> signed_map, unsigned_map;
#if defined(KBIT_ISA_AVX2) || defined(KBIT_ISA_AVX512)
  // Grids of the two maps (built by the calling thread, read by all): null where a map does not fit
  // one or is not sorted (then its requantization takes the portable loop).
  const Grid256* grid1;
  const Grid256* grid2;
#endif
};

// Whether the sign rule can move an index of a sorted signed map (codes < 0 below neg_end, > 0 from
// pos_begin; bounds[k] the boundary above code k): a negative code for some s > 0 or a positive one
// for some s < 0.
inline bool sign_rule_can_fire(const float* bounds, int32_t neg_end, int32_t pos_begin) {
  const bool up = neg_end == kPositions || (neg_end > 0 && bounds[neg_end - 1] > 0.0f);
  const bool down = pos_begin == 0 || (pos_begin < kPositions && bounds[pos_begin - 1] < 0.0f);
  return up || down;
}

// Per-thread lookup machinery for one call: the sorted maps and, on AVX-512, their vector forms.
struct Tables {
  const Maps& maps;
  const float* qmap1;
  const float* qmap2;
#if defined(KBIT_ISA_AVX512)
  Search256 search1, search2;
  Lut256 lut1, lut2;
  // Sign rule without a lookup when qmap1 is sorted: qmap1[i] < 0 iff i < neg_end, > 0 iff i >= pos_begin.
  // sign_rule: whether it can fire at all (for code_grid of the fused Adam blocks, as on avx2 below).
  bool sorted1;
  int32_t neg_end, pos_begin;
  bool sign_rule;
  Tables(const Maps& m, const float* q1, const float* q2)
      : maps(m), qmap1(q1), qmap2(q2 != nullptr ? q2 : q1), search1(m.signed_map),
        search2(q2 != nullptr ? m.unsigned_map : m.signed_map), lut1(q1), lut2(q2 != nullptr ? q2 : q1),
        sorted1(search1.sorted), neg_end(0), pos_begin(256) {
    for (int i = 0; i < 256; ++i) {
      if (i > 0 && !(q1[i - 1] <= q1[i])) sorted1 = false;
      if (q1[i] < 0.0f) neg_end = i + 1;
      if (q1[i] > 0.0f && pos_begin == 256) pos_begin = i;
    }
    sign_rule = sign_rule_can_fire(m.signed_map.bounds, neg_end, pos_begin);
  }
#elif defined(KBIT_ISA_AVX2)
  // Sign rule on the index alone (qmap1 sorted, as its grid requires): qmap1[i] < 0 iff i < neg_end,
  // > 0 iff i >= pos_begin. sign_rule: whether it can fire at all — a negative code for some s > 0
  // (bounds[neg_end - 1] > 0: the boundary above the last negative code) or a positive one for some
  // s < 0 (bounds[pos_begin - 1] < 0). Never for the signed dynamic map, whose boundaries next to
  // its zero code straddle 0.
  int32_t neg_end, pos_begin;
  bool sign_rule;
  Tables(const Maps& m, const float* q1, const float* q2)
      : maps(m), qmap1(q1), qmap2(q2 != nullptr ? q2 : q1), neg_end(0), pos_begin(kPositions) {
    for (int i = 0; i < kPositions; ++i) {
      if (q1[i] < 0.0f) neg_end = i + 1;
      if (q1[i] > 0.0f && pos_begin == kPositions) pos_begin = i;
    }
    sign_rule = sign_rule_can_fire(m.signed_map.bounds, neg_end, pos_begin);
  }
#else
  Tables(const Maps& m, const float* q1, const float* q2) : maps(m), qmap1(q1), qmap2(q2 != nullptr ? q2 : q1) {}
#endif
};

// Row stride of the block buffers: one cache line more than a block, so that the buffers' elements
// at the same index do not sit at the same address modulo 4 KiB (false store-to-load dependencies).
constexpr int64_t kRow = kBlock + 16;

struct Block {
  alignas(64) float graw[kRow], g[kRow], p[kRow], s1[kRow], s1b[kRow], s2[kRow];
  float u[kRow], n1[kRow], n1b[kRow], n2[kRow];
  int32_t frozen[kRow], bad[kRow];  // 32-bit flags keep the loops over them vectorizable
};

// out = qmap[codes] * absmax for one block of one state.
inline void dequantize(const uint8_t* codes, const Tables& t, bool first_map, float absmax, int64_t len, float* out) {
#if defined(KBIT_ISA_AVX512)
  const Lut256& lut = first_map ? t.lut1 : t.lut2;
  const __m512 s = _mm512_set1_ps(absmax);
  int64_t j = 0;
  for (; j + 16 <= len; j += 16) {  // unmasked: masked loads are slow on some CPUs
    const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + j)));
    _mm512_storeu_ps(out + j, _mm512_mul_ps(lut.lookup(q), s));
  }
  if (j < len) {
    const __mmask16 m = tail_mask16(len - j);
    const __m512i q = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, codes + j));
    _mm512_mask_storeu_ps(out + j, m, _mm512_mul_ps(lut.lookup(q), s));
  }
#else
  const float* qmap = first_map ? t.qmap1 : t.qmap2;
  int64_t j = 0;
#if defined(KBIT_ISA_AVX2)
  const __m256 s = _mm256_set1_ps(absmax);
  for (; j + 8 <= len; j += 8) _mm256_storeu_ps(out + j, _mm256_mul_ps(lookup8(qmap, codes + j), s));
#endif
  for (; j < len; ++j) out[j] = qmap[codes[j]] * absmax;
#endif
}

#if defined(KBIT_ISA_AVX2) || defined(KBIT_ISA_AVX512)
// max|x| over 8 lanes of raw bits (sign cleared: unsigned order is float order and NaN is above
// infinity, so the integer max propagates NaN like torch's amax).
inline uint32_t reduce_max_bits(__m256i m) {
  __m128i h = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
  h = _mm_max_epu32(h, _mm_srli_si128(h, 8));
  h = _mm_max_epu32(h, _mm_srli_si128(h, 4));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(h));
}

float absmax_bits(const float* x, int64_t len) {
  const __m256i abs_mask = _mm256_set1_epi32(static_cast<int32_t>(kAbsBits));
  __m256i mv = _mm256_setzero_si256();
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) mv = _mm256_max_epu32(mv, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j)), abs_mask));
  uint32_t top = reduce_max_bits(mv);
  for (; j < len; ++j) {
    const uint32_t u = f32_bits(x[j]) & kAbsBits;
    top = u > top ? u : top;
  }
  return bits_f32(top);  // NaN bits stay NaN
}

// The codes of len values of one block whose absmax is known, for a sorted map with a grid: 8 lanes,
// positions from the grid (= code indices), the sign rule by index ranges, 8 codes per store.
// The codes of 8 values x[0..7] of a block with scale inv (= inverse_scale(absmax)) into codes[0..7].
inline void code8(const float* x, __m256 inv, const Tables& t, const Grid256& grid, bool sign_rule, uint8_t* codes) {
  // clamp(x * inv, -1, 1); min / max pass NaN through as torch.clamp does
  const __m256 s = _mm256_max_ps(_mm256_set1_ps(-1.0f), _mm256_min_ps(_mm256_set1_ps(1.0f), _mm256_mul_ps(_mm256_loadu_ps(x), inv)));
  __m256i idx = grid_positions8(grid, s);
  if (sign_rule) {
    // A negative code (idx < neg_end) for s > 0 moves up one, a positive one (idx >= pos_begin) for
    // s < 0 moves down one (the masks are -1 where true), then the clamp to [0, 255].
    const __m256 zero = _mm256_setzero_ps();
    const __m256i negative = _mm256_cmpgt_epi32(_mm256_set1_epi32(t.neg_end), idx);
    const __m256i positive = _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(t.pos_begin - 1));
    const __m256i up = _mm256_and_si256(negative, _mm256_castps_si256(_mm256_cmp_ps(s, zero, _CMP_GT_OQ)));
    const __m256i down = _mm256_and_si256(positive, _mm256_castps_si256(_mm256_cmp_ps(s, zero, _CMP_LT_OQ)));
    idx = _mm256_add_epi32(_mm256_sub_epi32(idx, up), down);
    idx = _mm256_min_epi32(_mm256_max_epi32(idx, _mm256_setzero_si256()), _mm256_set1_epi32(kPositions - 1));
  }
  const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(idx), _mm256_extracti128_si256(idx, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(codes), _mm_packus_epi16(words, words));
}

// First half of the grid search for a full block: the cells and compared low bits of every scaled
// value x * inv (clamped to [-1, 1]), stored. kFinite: the block's absmax is finite.
template <bool kFinite>
inline void grid_cells(const float* x, __m256 inv, const GridVectors& g, int32_t* cell, int32_t* low) {
  const __m256 one = _mm256_set1_ps(1.0f), minus_one = _mm256_set1_ps(-1.0f);
  for (int64_t k = 0; k < kBlock; k += 8)
    grid_cells8<kFinite>(_mm256_max_ps(minus_one, _mm256_min_ps(one, _mm256_mul_ps(_mm256_loadu_ps(x + k), inv))), g,
                         cell + k, low + k);
}

void code_grid(const float* x, int64_t len, float absmax, const Tables& t, const Grid256& grid, bool signed_map,
               uint8_t* codes) {
  const bool sign_rule = signed_map && t.sign_rule;
  const float inv_s = inverse_scale(absmax);
  const __m256 inv = _mm256_set1_ps(inv_s);
  if (len == kBlock && !sign_rule) {
    // Full blocks in two loops: cells, then entries; faster than code8's vpgatherdd (which is slow on
    // the AVX2-only CPUs measured) and than extracting the cells to general registers in one loop.
    alignas(32) int32_t cell[kBlock], low[kBlock];
    const GridVectors g(grid);
    if ((f32_bits(absmax) & kAbsBits) < 0x7F800000u) {
      grid_cells<true>(x, inv, g, cell, low);
    } else {
      grid_cells<false>(x, inv, g, cell, low);
    }
    for (int64_t j = 0; j < kBlock; j += 16)
      store_codes16(codes + j, cell_positions8(g, cell + j, low + j), cell_positions8(g, cell + j + 8, low + j + 8));
    return;
  }
  const int64_t vector_end = len & ~int64_t{7};
  for (int64_t j = 0; j < vector_end; j += 8) code8(x + j, inv, t, grid, sign_rule, codes + j);
  for (int64_t j = vector_end; j < len; ++j) {
    const float s = scale_clamp(x[j], inv_s);
    int idx = grid_position(grid, s);
    if (sign_rule) {
      if (idx < t.neg_end && s > 0.0f) idx += 1;
      if (idx >= t.pos_begin && s < 0.0f) idx -= 1;
      idx = idx < 0 ? 0 : (idx > kPositions - 1 ? kPositions - 1 : idx);
    }
    codes[j] = static_cast<uint8_t>(idx);
  }
}
#endif

// Requantizes len values of one block into codes (the sign rule for the signed map) and returns the
// new absmax.
float requantize(const float* x, int64_t len, const Tables& t, bool signed_map, uint8_t* codes) {
#if defined(KBIT_ISA_AVX2) || defined(KBIT_ISA_AVX512)
  const Grid256* grid = signed_map ? t.maps.grid1 : t.maps.grid2;
  if (grid != nullptr) {
    const float absmax = absmax_bits(x, len);
    code_grid(x, len, absmax, t, *grid, signed_map, codes);
    return absmax;
  }
#endif
#if defined(KBIT_ISA_AVX512)
  // max|x| on the bits: with the sign cleared, unsigned order is float order and NaN is above infinity.
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  __m512i mv = _mm512_setzero_si512();
  for (int64_t j = 0; j < len; j += 16) {
    const __m512i v = j + 16 <= len ? _mm512_loadu_si512(x + j) : _mm512_maskz_loadu_epi32(tail_mask16(len - j), x + j);
    mv = _mm512_max_epu32(mv, _mm512_and_si512(v, abs_mask));
  }
  const float absmax = bits_f32(_mm512_reduce_max_epu32(mv));
  const __m512 inv = _mm512_set1_ps(inverse_scale(absmax));
  const Search256& search = signed_map ? t.search1 : t.search2;
  const __m512 one = _mm512_set1_ps(1.0f), minus_one = _mm512_set1_ps(-1.0f), zero = _mm512_setzero_ps();
  for (int64_t j = 0; j < len; j += 16) {
    const __mmask16 m = tail_mask16(len - j);
    const __m512 xv = m == 0xFFFF ? _mm512_loadu_ps(x + j) : _mm512_maskz_loadu_ps(m, x + j);
    // clamp(x * inv, -1, 1); min/max pass NaN through as torch.clamp does
    const __m512 s = _mm512_max_ps(minus_one, _mm512_min_ps(one, _mm512_mul_ps(xv, inv)));
    __m512i idx = search.codes(s);
    if (signed_map) {
      __mmask16 negative, positive;  // sign of the chosen code value
      if (t.sorted1) {
        negative = _mm512_cmplt_epi32_mask(idx, _mm512_set1_epi32(t.neg_end));
        positive = _mm512_cmpge_epi32_mask(idx, _mm512_set1_epi32(t.pos_begin));
      } else {
        const __m512 chosen = t.lut1.lookup(idx);
        negative = _mm512_cmp_ps_mask(chosen, zero, _CMP_LT_OQ);
        positive = _mm512_cmp_ps_mask(chosen, zero, _CMP_GT_OQ);
      }
      const __mmask16 up = negative & _mm512_cmp_ps_mask(s, zero, _CMP_GT_OQ);
      const __mmask16 down = positive & _mm512_cmp_ps_mask(s, zero, _CMP_LT_OQ);
      idx = _mm512_mask_add_epi32(idx, up, idx, _mm512_set1_epi32(1));
      idx = _mm512_mask_sub_epi32(idx, down, idx, _mm512_set1_epi32(1));
      idx = _mm512_min_epi32(_mm512_max_epi32(idx, _mm512_setzero_si512()), _mm512_set1_epi32(255));
    }
    if (m == 0xFFFF) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + j), _mm512_cvtepi32_epi8(idx));
    } else {
      _mm_mask_storeu_epi8(codes + j, m, _mm512_cvtepi32_epi8(idx));
    }
  }
  return absmax;
#else
  const SortedCode<256>& sc = signed_map ? t.maps.signed_map : t.maps.unsigned_map;
  const float* qmap = signed_map ? t.qmap1 : t.qmap2;
  float m = 0.0f;
  bool nan = false;
  for (int64_t j = 0; j < len; ++j) {
    const float ax = std::fabs(x[j]);
    nan |= ax != ax;
    m = ax > m ? ax : m;
  }
  const float absmax = nan ? __builtin_nanf("") : m;
  const float inv = inverse_scale(absmax);
  for (int64_t j = 0; j < len; ++j) {
    const float s = scale_clamp(x[j], inv);
    int idx = sc.order[sorted_position<256>(sc.bounds, s)];
    if (signed_map) {
      const float chosen = qmap[idx];
      if (chosen < 0.0f && s > 0.0f) idx += 1;
      if (chosen > 0.0f && s < 0.0f) idx -= 1;
      idx = idx < 0 ? 0 : (idx > 255 ? 255 : idx);
    }
    codes[j] = static_cast<uint8_t>(idx);
  }
  return absmax;
#endif
}

// State values after the masks: old where frozen by skip_zeros, 0 where the gradient is not finite.
inline void freeze(float* fresh, const float* old, const Block& b, int64_t len) {
  for (int64_t j = 0; j < len; ++j) {
    const float v = b.frozen[j] != 0 ? old[j] : fresh[j];
    fresh[j] = b.bad[j] != 0 ? 0.0f : v;
  }
}

#if defined(KBIT_ISA_AVX2) || defined(KBIT_ISA_AVX512)
// Adam / LAMB on a full block with both maps on grids, fused: one pass of 8 lanes reads g, p and the
// codes, applies the rule, the decay and the masks, stores p and the new states (float32, with their
// absmax on the bits); a second pass codes the states. The float32 operations and their order are
// those of the generic path below (direction(), the p update, freeze(), requantize()), so the results
// are identical; what goes is its ten passes over the block buffers. (Coding block k's states inside
// block k + 1's pass, to run the gathers beside the divisions, measured 7% slower; with the gather-free
// coding of code_grid, no faster.) Instantiated per dtype, skip_zeros and decay (adam_block_for).
template <int32_t kDtype, bool kSkipZeros, bool kDecay>
void adam_block(const OptimizerUpdate8bitArgs& a, const RuleConstants& c, const Tables& t, Block& b, int64_t blk) {
  const int64_t i = blk * kBlock;
  const __m256 gnorm = _mm256_set1_ps(c.gnorm_scale), float_max = _mm256_set1_ps(kFloatMax);
  const __m256 beta1 = _mm256_set1_ps(c.beta1), one_minus_beta1 = _mm256_set1_ps(c.one_minus_beta1);
  const __m256 beta2 = _mm256_set1_ps(c.beta2), one_minus_beta2 = _mm256_set1_ps(c.one_minus_beta2);
  const __m256 c1 = _mm256_set1_ps(c.c1), c2 = _mm256_set1_ps(c.c2), eps = _mm256_set1_ps(c.eps);
  const __m256 lr = _mm256_set1_ps(c.lr), decay = _mm256_set1_ps(c.decay), zero = _mm256_setzero_ps();
  const __m256 scale1 = _mm256_set1_ps(a.absmax1[blk]), scale2 = _mm256_set1_ps(a.absmax2[blk]);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int32_t>(kAbsBits)));
  const uint8_t* codes1 = a.state1 + i;
  const uint8_t* codes2 = a.state2 + i;
  __m256i max1 = _mm256_setzero_si256(), max2 = _mm256_setzero_si256();
  for (int64_t j = 0; j < kBlock; j += 8) {
    const __m256 graw = load8(a.g, kDtype, i + j), p = load8(a.p, kDtype, i + j);
    const __m256 g = _mm256_mul_ps(graw, gnorm);
    // bad: |g| > FLT_MAX or NaN; frozen (skip_zeros): g == 0 and not bad
    const __m256 bad = _mm256_cmp_ps(_mm256_and_ps(g, abs_mask), float_max, _CMP_NLE_UQ);
    const __m256 s1 = _mm256_mul_ps(lookup8(t.qmap1, codes1 + j), scale1);
    const __m256 s2 = _mm256_mul_ps(lookup8(t.qmap2, codes2 + j), scale2);
    const __m256 m = _mm256_add_ps(_mm256_mul_ps(s1, beta1), _mm256_mul_ps(g, one_minus_beta1));
    const __m256 v = _mm256_add_ps(_mm256_mul_ps(s2, beta2), _mm256_mul_ps(_mm256_mul_ps(g, g), one_minus_beta2));
    const __m256 u = _mm256_div_ps(_mm256_div_ps(m, c1), _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(v), c2), eps));
    __m256 stepped = _mm256_sub_ps(p, _mm256_mul_ps(u, lr));
    if (kDecay) stepped = _mm256_mul_ps(stepped, decay);
    __m256 n1, n2;
    if (kSkipZeros) {
      const __m256 frozen = _mm256_andnot_ps(bad, _mm256_cmp_ps(graw, zero, _CMP_EQ_OQ));
      store8(a.p, kDtype, i + j, _mm256_blendv_ps(stepped, p, _mm256_or_ps(frozen, bad)));
      n1 = _mm256_andnot_ps(bad, _mm256_blendv_ps(m, s1, frozen));  // bad -> +0.0
      n2 = _mm256_andnot_ps(bad, _mm256_blendv_ps(v, s2, frozen));
    } else {
      store8(a.p, kDtype, i + j, _mm256_blendv_ps(stepped, p, bad));
      n1 = _mm256_andnot_ps(bad, m);
      n2 = _mm256_andnot_ps(bad, v);
    }
    _mm256_store_ps(b.n1 + j, n1);
    _mm256_store_ps(b.n2 + j, n2);
    max1 = _mm256_max_epu32(max1, _mm256_castps_si256(_mm256_and_ps(n1, abs_mask)));
    max2 = _mm256_max_epu32(max2, _mm256_castps_si256(_mm256_and_ps(n2, abs_mask)));
  }
  const float absmax1 = bits_f32(reduce_max_bits(max1)), absmax2 = bits_f32(reduce_max_bits(max2));
  code_grid(b.n1, kBlock, absmax1, t, *t.maps.grid1, true, a.state1 + i);
  code_grid(b.n2, kBlock, absmax2, t, *t.maps.grid2, false, a.state2 + i);
  a.absmax1[blk] = absmax1;
  a.absmax2[blk] = absmax2;
}

// adam_block for the call's dtype, skip_zeros and decay (constants in the loop: no dtype switch and no
// masks that cannot fire).
using AdamBlockFn = void (*)(const OptimizerUpdate8bitArgs&, const RuleConstants&, const Tables&, Block&, int64_t);

template <int32_t kDtype>
AdamBlockFn adam_block_for(bool skip_zeros, bool decay) {
  if (skip_zeros) return decay ? adam_block<kDtype, true, true> : adam_block<kDtype, true, false>;
  return decay ? adam_block<kDtype, false, true> : adam_block<kDtype, false, false>;
}

AdamBlockFn adam_block_for(int32_t dtype, bool skip_zeros, bool decay) {
  switch (dtype) {
    case KBIT_CPU_F16: return adam_block_for<KBIT_CPU_F16>(skip_zeros, decay);
    case KBIT_CPU_BF16: return adam_block_for<KBIT_CPU_BF16>(skip_zeros, decay);
    default: return adam_block_for<KBIT_CPU_F32>(skip_zeros, decay);
  }
}
#endif

void update_blocks(const OptimizerUpdate8bitArgs& a, const RuleConstants& c, const Maps& maps, int64_t b0, int64_t b1) {
  Block b;
  const Tables t(maps, a.qmap1, c.two_state ? a.qmap2 : nullptr);
  const bool ademamix = c.rule == Rule::ademamix;
#if defined(KBIT_ISA_AVX2) || defined(KBIT_ISA_AVX512)
  const bool fused = c.rule == Rule::adam && maps.grid1 != nullptr && maps.grid2 != nullptr;
  const AdamBlockFn adam_block = adam_block_for(a.dtype, a.skip_zeros, c.decoupled_decay);
#endif
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t i = blk * kBlock;
    const int64_t len = a.n - i < kBlock ? a.n - i : kBlock;
#if defined(KBIT_ISA_AVX2) || defined(KBIT_ISA_AVX512)
    if (fused && len == kBlock) {  // a short tail block takes the generic path
      adam_block(a, c, t, b, blk);
      continue;
    }
#endif
    to_f32(a.g, a.dtype, i, len, b.graw);
    to_f32(a.p, a.dtype, i, len, b.p);
    for (int64_t j = 0; j < len; ++j) b.g[j] = b.graw[j] * c.gnorm_scale;
    const int32_t skip = a.skip_zeros ? 1 : 0;
    for (int64_t j = 0; j < len; ++j) {
      b.bad[j] = std::fabs(b.g[j]) <= kFloatMax ? 0 : 1;
      b.frozen[j] = (b.graw[j] == 0.0f ? skip : 0) & (1 - b.bad[j]);  // skip_zeros; a zero gradient is finite
    }
    dequantize(a.state1 + i, t, true, a.absmax1[blk], len, b.s1);
    if (ademamix) dequantize(a.state1 + a.n + i, t, true, a.absmax1[a.nb + blk], len, b.s1b);
    if (c.two_state) dequantize(a.state2 + i, t, false, a.absmax2[blk], len, b.s2);
    direction(c, len, b.g, b.p, b.s1, b.s1b, b.s2, b.u, b.n1, b.n1b, b.n2);
    float* pn = b.g;  // the scaled gradient is not needed any more
    for (int64_t j = 0; j < len; ++j) {
      float v;
      if (!c.decoupled_decay) {
        v = b.p[j] - b.u[j] * c.lr;
      } else if (c.two_state) {
        v = (b.p[j] - b.u[j] * c.lr) * c.decay;
      } else {
        v = b.p[j] * c.decay - b.u[j] * c.lr;
      }
      pn[j] = (b.frozen[j] | b.bad[j]) != 0 ? b.p[j] : v;
    }
    from_f32(pn, len, a.p, a.dtype, i);
    freeze(b.n1, b.s1, b, len);
    a.absmax1[blk] = requantize(b.n1, len, t, true, a.state1 + i);
    if (ademamix) {
      freeze(b.n1b, b.s1b, b, len);
      a.absmax1[a.nb + blk] = requantize(b.n1b, len, t, true, a.state1 + a.n + i);
    }
    if (c.two_state) {
      freeze(b.n2, b.s2, b, len);
      a.absmax2[blk] = requantize(b.n2, len, t, false, a.state2 + i);
    }
  }
}

}  // namespace

void optimizer_update_8bit_blockwise(const OptimizerUpdate8bitArgs& a, const RuleConstants& c) {
  Maps maps;
  sort_code<256>(a.qmap1, maps.signed_map);
  if (c.two_state) sort_code<256>(a.qmap2, maps.unsigned_map);
#if defined(KBIT_ISA_AVX2) || defined(KBIT_ISA_AVX512)
  // A grid serves a map only when the map is sorted: its positions are then the code indices (and
  // the sign rule reads signs from index ranges).
  auto grid_of = [](const float* qmap, const SortedCode<256>& sc) -> const Grid256* {
    for (int i = 0; i < kPositions; ++i)
      if (sc.order[i] != i) return nullptr;
    const Grid256& g = cached_grid(qmap, sc);
    return g.ok ? &g : nullptr;
  };
  maps.grid1 = grid_of(a.qmap1, maps.signed_map);
  maps.grid2 = c.two_state ? grid_of(a.qmap2, maps.unsigned_map) : nullptr;
#endif
  parallel_for(a.nb, 1, kMinBlocksPerThread, a.threads,
               [&](int64_t b0, int64_t b1, int, int) { update_blocks(a, c, maps, b0, b1); });
}

}  // namespace KBIT_NS
}  // namespace kbit_cpu

#if defined(KBIT_ISA_SCALAR)
#include "status.h"

KBIT_DECLARE_ISAS(void optimizer_update_8bit_blockwise(const OptimizerUpdate8bitArgs& a, const RuleConstants& c))

extern "C" int32_t kbit_cpu_optimizer_update_8bit_blockwise(
    int32_t optimizer, int32_t dtype, const void* g, void* p, uint8_t* state1, uint8_t* state2, int64_t n,
    double beta1, double beta2, double beta3, double alpha, double eps, int64_t step, double lr, const float* qmap1,
    const float* qmap2, float* absmax1, float* absmax2, double weight_decay, double gnorm_scale, int32_t skip_zeros,
    int32_t num_threads) {
  using namespace kbit_cpu;
  return guarded("optimizer_update_8bit_blockwise", [&] {
    require_dtype(dtype, "p");
    require_threads(num_threads);
    require(n >= 0, "n must be >= 0");
    RuleConstants c;
    require(make_constants(optimizer, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, c),
            "unknown optimizer tag");
    require(!c.two_state || (state2 != nullptr && qmap2 != nullptr && absmax2 != nullptr),
            "this optimizer needs state2, qmap2 and absmax2");
    if (n == 0) return;
    require(g != nullptr && p != nullptr && state1 != nullptr && qmap1 != nullptr && absmax1 != nullptr,
            "g, p, state1, qmap1 and absmax1 must not be NULL");
    const int64_t nb = (n + KBIT_OPTIMIZER_BLOCKSIZE - 1) / KBIT_OPTIMIZER_BLOCKSIZE;
    const OptimizerUpdate8bitArgs args{dtype, g, p, state1, state2, n, nb, qmap1, qmap2, absmax1, absmax2,
                                       skip_zeros != 0, num_threads};
    KBIT_DISPATCH_SPLIT512(optimizer_update_8bit_blockwise(args, c));
  });
}
#endif
