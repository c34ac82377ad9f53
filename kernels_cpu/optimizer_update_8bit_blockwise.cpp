// optimizer_update_8bit_blockwise.cpp — kbit::optimizer_update_8bit_blockwise: one step with blockwise 8-bit states.
//
// As kbit.reference.optimizer_update_8bit_blockwise, block by block (256 elements, threads split the
// blocks): dequantize the states (qmap[code] * absmax), apply the rule of optimizer_rules.h in
// float32 (no trust scale), decoupled decay after the step for two-state rules and before it for
// lion; NaN/Inf gradients zero their states and keep p, skip_zeros keeps p and the states; then
// requantize: absmax = max|s| (NaN propagates), nearest code of the sorted map (ties to the lower
// code), and for the signed map (state1) the sign rule moves an index of the wrong sign one step.
// avx512: state lookups, absmax, nearest-code search and sign rule in 16-lane vectors (nearest_code.h:
// Lut256, Search256); the rule itself is portable code vectorized by the compiler for each ISA.
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
};

// Per-thread lookup machinery for one call: the sorted maps and, on AVX-512, their vector forms.
struct Tables {
  const Maps& maps;
  const float* qmap1;
  const float* qmap2;
#if defined(KBIT_ISA_AVX512)
  Search256 search1, search2;
  Lut256 lut1, lut2;
  // Sign rule without a lookup when qmap1 is sorted: qmap1[i] < 0 iff i < neg_end, > 0 iff i >= pos_begin.
  bool sorted1;
  int32_t neg_end, pos_begin;
  Tables(const Maps& m, const float* q1, const float* q2)
      : maps(m), qmap1(q1), qmap2(q2 != nullptr ? q2 : q1), search1(m.signed_map),
        search2(q2 != nullptr ? m.unsigned_map : m.signed_map), lut1(q1), lut2(q2 != nullptr ? q2 : q1),
        sorted1(search1.sorted), neg_end(0), pos_begin(256) {
    for (int i = 0; i < 256; ++i) {
      if (i > 0 && !(q1[i - 1] <= q1[i])) sorted1 = false;
      if (q1[i] < 0.0f) neg_end = i + 1;
      if (q1[i] > 0.0f && pos_begin == 256) pos_begin = i;
    }
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
  for (int64_t j = 0; j < len; ++j) out[j] = qmap[codes[j]] * absmax;
#endif
}

// Requantizes len values of one block into codes (the sign rule for the signed map) and returns the
// new absmax.
float requantize(const float* x, int64_t len, const Tables& t, bool signed_map, uint8_t* codes) {
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

void update_blocks(const OptimizerUpdate8bitArgs& a, const RuleConstants& c, const Maps& maps, int64_t b0, int64_t b1) {
  Block b;
  const Tables t(maps, a.qmap1, c.two_state ? a.qmap2 : nullptr);
  const bool ademamix = c.rule == Rule::ademamix;
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t i = blk * kBlock;
    const int64_t len = a.n - i < kBlock ? a.n - i : kBlock;
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
    KBIT_DISPATCH(optimizer_update_8bit_blockwise(args, c));
  });
}
#endif
