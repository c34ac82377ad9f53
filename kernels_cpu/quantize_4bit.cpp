// quantize_4bit.cpp — kbit::quantize_4bit: blockwise absmax, nearest NF4/FP4 code, two codes per byte.
//
// Bit-identical to kbit.reference.quantize_4bit: absmax = max|x| (NaN propagates), scaled =
// clamp(x * (1 / max(absmax, 1e-38)), -1, 1) in float32, sorted position by binary search over the
// float32 midpoints (ties to the lower code, NaN to the last), element 2i in the high nibble of byte i.
// avx512: 32 elements per step; the sorted position comes from a grid of 32 cells (see CellSearch),
// each 32 elements are split into even / odd vectors (bf16 and f16 pairs by a shift) whose codes
// combine into bytes with one shift + or + vpmovdb. avx2: 64 (or 32) elements per step in 8-lane
// vectors split the same way; the sorted position comes from a four-step branch-free binary search
// (see Search16) and the bytes from two pack steps and one vpshufb. avx2 with bfloat16 input skips the
// float32 arithmetic: the same binary search on the input's own 16-bit keys, 16 per vector, against
// per-block thresholds read from a table by the absmax's mantissa and shifted by its exponent (see
// Bf16Thresholds); absmax of 16 blocks at a time. Other ISAs: the portable loop, compiled per ISA.
// Measured (2-core AMD EPYC Zen 4 VM without AVX-512, NF4, blocksize 64, bf16 input; a shared host, so
// quiet moments only): 1 thread, 2^17 elements (L2): 0.30 ns/element with Search16, 0.18 with the bf16
// search (float32 input 0.35 either way). 2 threads, 2^24 elements (DRAM): 0.17 -> 0.115 ns/element.
// torch.ops.kbit.quantize_4bit, 2 threads, bytes moved (input + packed + absmax) per second over a
// 64 MiB float32 copy's 2 * bytes per second (30-33 GB/s): 4096x4096 0.44 -> 0.72 (3.1 -> 2.0 ms),
// 11008x4096 0.48 -> 0.67, 4096x11008 0.44 -> 0.70.
#include "convert.h"
#include "dispatch.h"
#include "kbit_cpu.h"
#include "nearest_code.h"
#include "parallel.h"

namespace kbit_cpu {

struct Quantize4bitArgs {
  const void* A;
  int32_t dtype;
  int64_t n;
  int64_t blocksize;
  int32_t quant_type;
  uint8_t* packed;
  float* absmax;
  int32_t threads;
};

namespace KBIT_NS {
namespace {

constexpr int64_t kMinElementsPerThread = 1 << 15;

// Codes of [begin, end) (block-local scale inv) into packed bytes; begin is even.
void quantize_span_scalar(const Quantize4bitArgs& a, const SortedCode<16>& sc, float inv, int64_t begin, int64_t end) {
  const uint8_t zero = a.quant_type == KBIT_CPU_NF4 ? KBIT_NF4_ZERO_CODE : KBIT_FP4_ZERO_CODE;
  for (int64_t i = begin; i < end; i += 2) {
    const float x0 = scale_clamp(load_scalar(a.A, a.dtype, i), inv);
    const uint8_t c0 = sc.order[sorted_position<16>(sc.bounds, x0)];
    uint8_t c1 = zero;
    if (i + 1 < end) c1 = sc.order[sorted_position<16>(sc.bounds, scale_clamp(load_scalar(a.A, a.dtype, i + 1), inv))];
    a.packed[i >> 1] = static_cast<uint8_t>((c0 << 4) | c1);
  }
}

float block_absmax_scalar(const Quantize4bitArgs& a, int64_t begin, int64_t end) {
  float m = 0.0f;
  bool nan = false;
  for (int64_t i = begin; i < end; ++i) {
    const float x = load_scalar(a.A, a.dtype, i);
    const float ax = x < 0.0f ? -x : x;
    nan |= ax != ax;
    m = ax > m ? ax : m;
  }
  return nan ? __builtin_nanf("") : m;
}

// Blocks [b0, b1) element by element: the scalar ISA, and code tables the vector searches do not take.
void quantize_blocks_portable(const Quantize4bitArgs& a, const SortedCode<16>& sc, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * a.blocksize;
    const int64_t end = begin + a.blocksize < a.n ? begin + a.blocksize : a.n;
    const float amax = block_absmax_scalar(a, begin, end);
    a.absmax[b] = amax;
    quantize_span_scalar(a, sc, inverse_scale(amax), begin, end);
  }
}

#if defined(KBIT_ISA_AVX512)
// Sorted position by grid cells: the scaled range [-1, 1] is cut into 32 cells of 1/16; a cell's
// position starts at base[cell] (boundaries below the cell) and adds one for each of its at most
// kMaxCandidates boundaries that the value passes — two vpermt2 lookups and one compare per candidate,
// no dependency chain. The cell of x is computed in float32 with an error far below kCellMargin, and
// every boundary within kCellMargin of a cell's edges is one of its candidates, so the result equals
// the binary search's for every x. NaN lands in the last cell and is clamped to the last position.
constexpr int kCells = 32;
// Blocks whose absmax is computed ahead of their codes (at most 4096 elements: L1-resident input).
constexpr int64_t kChunkBlocks = 16;
constexpr int kMaxCandidates = 3;
constexpr float kCellMargin = 1e-6f;

struct CellSearch {
  __m512i base_lo, base_hi, order;
  __m512 cand_lo[kMaxCandidates], cand_hi[kMaxCandidates];
  int candidates;  // most boundaries in one cell; > kMaxCandidates: the code does not fit the grid
  bool sorted;     // NF4: the code order is the sorted order
  explicit CellSearch(const SortedCode<16>& sc) : candidates(0), sorted(true) {
    alignas(64) int32_t base[kCells], o[16];
    alignas(64) float cand[kMaxCandidates][kCells];
    for (int j = 0; j < kCells; ++j) {
      const float lo = -1.0f + static_cast<float>(j) / 16.0f, hi = lo + 1.0f / 16.0f;
      int below = 0, c = 0;
      for (int k = 0; k < 15; ++k) {
        if (sc.bounds[k] < lo - kCellMargin) {
          ++below;
        } else if (sc.bounds[k] <= hi + kCellMargin) {
          if (c < kMaxCandidates) cand[c][j] = sc.bounds[k];
          ++c;
        }
      }
      for (int q = c; q < kMaxCandidates; ++q) cand[q][j] = __builtin_inff();  // never passed (NaN aside)
      base[j] = below;
      candidates = c > candidates ? c : candidates;
    }
    // The unclamped grid lookup (quantize_blocks_t) needs every boundary strictly inside (-1, 1).
    if (!(sc.bounds[0] > -1.0f && sc.bounds[14] < 1.0f)) candidates = kMaxCandidates + 1;
    for (int j = 0; j < 16; ++j) {
      o[j] = sc.order[j];
      sorted &= sc.order[j] == j;
    }
    base_lo = _mm512_load_si512(base);
    base_hi = _mm512_load_si512(base + 16);
    order = _mm512_load_si512(o);
    for (int q = 0; q < kMaxCandidates; ++q) {
      cand_lo[q] = _mm512_load_ps(cand[q]);
      cand_hi[q] = _mm512_load_ps(cand[q] + 16);
    }
  }
  // Code of each lane of the scaled values s (NC >= candidates).
  template <int NC>
  __m512i codes(__m512 s) const {
    const __m512 sixteen = _mm512_set1_ps(16.0f);
    const __m512i cell = _mm512_min_epu32(_mm512_cvttps_epi32(_mm512_fmadd_ps(s, sixteen, sixteen)),
                                          _mm512_set1_epi32(kCells - 1));
    __m512i p = _mm512_permutex2var_epi32(base_lo, cell, base_hi);
    for (int q = 0; q < NC; ++q) {
      const __m512 b = _mm512_permutex2var_ps(cand_lo[q], cell, cand_hi[q]);
      p = _mm512_mask_add_epi32(p, _mm512_cmp_ps_mask(b, s, _CMP_NGE_UQ), p, _mm512_set1_epi32(1));
    }
    p = _mm512_min_epi32(p, _mm512_set1_epi32(15));
    return sorted ? p : _mm512_permutexvar_epi32(p, order);
  }
};


// Codes of the 16 even and the 16 odd elements of 32 -> 16 bytes, element 2i in the high nibble.
inline __m128i pack32(__m512i even, __m512i odd) {
  return _mm512_cvtepi32_epi8(_mm512_or_si512(_mm512_slli_epi32(even, 4), odd));
}

// Elements i, i+2, ..., i+30 (even) and i+1, ..., i+31 (odd) as float32: a bf16 / f16 pair is one
// 32-bit lane, so the split is a shift or a narrowing move; float32 takes two vpermt2ps.
template <int32_t DT>
inline void load32_split(const void* A, int64_t i, __m512& even, __m512& odd) {
  if (DT == KBIT_CPU_BF16) {
    const __m512i v = _mm512_loadu_si512(static_cast<const uint16_t*>(A) + i);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u))));
  } else if (DT == KBIT_CPU_F16) {
    const __m512i v = _mm512_loadu_si512(static_cast<const uint16_t*>(A) + i);
    even = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v));
    odd = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16)));
  } else {
    const float* x = static_cast<const float*>(A) + i;
    const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
    const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    even = _mm512_permutex2var_ps(v0, idx, v1);
    odd = _mm512_permutex2var_ps(v0, _mm512_add_epi32(idx, _mm512_set1_epi32(1)), v1);
  }
}

// max|x| of [begin, end) on the raw bits: with the sign cleared, unsigned integer order is float order
// and every NaN is above infinity, so an integer max propagates NaN the way torch's amax does.
// bf16 and f16 need no conversion: 32 halves per 64-byte load. DT: the input dtype tag.
template <int32_t DT>
float block_absmax(const Quantize4bitArgs& a, int64_t begin, int64_t end) {
  if (DT == KBIT_CPU_F32) {
    const float* x = static_cast<const float*>(a.A);
    const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
    __m512i m = _mm512_setzero_si512();
    int64_t i = begin;
    for (; i + 16 <= end; i += 16) m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_loadu_si512(x + i), abs_mask));
    if (i < end) m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_maskz_loadu_epi32(tail_mask16(end - i), x + i), abs_mask));
    return bits_f32(_mm512_reduce_max_epu32(m));  // NaN bits stay NaN
  }
  const uint16_t* x = static_cast<const uint16_t*>(a.A);
  const __m512i abs_mask = _mm512_set1_epi16(0x7FFF);
  __m512i m = _mm512_setzero_si512();
  int64_t i = begin;
  for (; i + 32 <= end; i += 32) m = _mm512_max_epu16(m, _mm512_and_si512(_mm512_loadu_si512(x + i), abs_mask));
  if (i < end) {
    const __mmask32 t = end - i >= 32 ? ~__mmask32{0} : ((__mmask32{1} << (end - i)) - 1);
    m = _mm512_max_epu16(m, _mm512_and_si512(_mm512_maskz_loadu_epi16(t, x + i), abs_mask));
  }
  // Fold 32 halves to one: the high and low half of every 32-bit lane, then across lanes.
  const __m512i lanes = _mm512_max_epu16(m, _mm512_srli_epi32(m, 16));
  const uint16_t top = static_cast<uint16_t>(_mm512_reduce_max_epu32(_mm512_and_si512(lanes, _mm512_set1_epi32(0xFFFF))));
  return DT == KBIT_CPU_BF16 ? bf16_to_f32(top) : f16_to_f32(top);
}

template <int32_t DT, int NC>
void quantize_blocks_t(const Quantize4bitArgs& a, const SortedCode<16>& sc, const CellSearch& shared, int64_t b0,
                       int64_t b1) {
  // Locals, so that the byte stores below (which may alias anything) do not force reloads.
  const CellSearch search = shared;
  const void* A = a.A;
  uint8_t* packed = a.packed;
  const int64_t n = a.n, bs = a.blocksize;
  // Absmax of a chunk of blocks first, then its codes: the reductions and divisions of one block do
  // not stall the coding of the next.
  for (int64_t c0 = b0; c0 < b1; c0 += kChunkBlocks) {
    const int64_t c1 = c0 + kChunkBlocks < b1 ? c0 + kChunkBlocks : b1;
    for (int64_t b = c0; b < c1; ++b) {
      const int64_t begin = b * bs;
      a.absmax[b] = block_absmax<DT>(a, begin, begin + bs < n ? begin + bs : n);
    }
    for (int64_t b = c0; b < c1; ++b) {
      const int64_t begin = b * bs;
      const int64_t end = begin + bs < n ? begin + bs : n;
      const float inv_s = inverse_scale(a.absmax[b]);
      const __m512 inv = _mm512_set1_ps(inv_s);
      int64_t i = begin;
      for (; i + 32 <= end; i += 32) {
        __m512 e, o;
        load32_split<DT>(A, i, e, o);
        // No clamp to [-1, 1] needed: |x * inv| <= 1 + 1 ulp within a block (NaN aside), and the grid
        // maps 1 + ulp to the last position and -1 - ulp to the first, as the clamped values.
        const __m512i ce = search.codes<NC>(_mm512_mul_ps(e, inv)), co = search.codes<NC>(_mm512_mul_ps(o, inv));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(packed + (i >> 1)), pack32(ce, co));
      }
      if (i < end) quantize_span_scalar(a, sc, inv_s, i, end);
    }
  }
}

template <int32_t DT>
void quantize_blocks_dt(const Quantize4bitArgs& a, const SortedCode<16>& sc, const CellSearch& search, int64_t b0,
                        int64_t b1) {
  if (search.candidates <= 1) {
    quantize_blocks_t<DT, 1>(a, sc, search, b0, b1);
  } else if (search.candidates == 2) {
    quantize_blocks_t<DT, 2>(a, sc, search, b0, b1);
  } else {
    quantize_blocks_t<DT, kMaxCandidates>(a, sc, search, b0, b1);
  }
}

void quantize_blocks(const Quantize4bitArgs& a, const SortedCode<16>& sc, int64_t b0, int64_t b1) {
  const CellSearch search(sc);
  if (search.candidates > kMaxCandidates) {  // not for NF4 / FP4; kept exact for any table
    quantize_blocks_portable(a, sc, b0, b1);
    return;
  }
  switch (a.dtype) {
    case KBIT_CPU_F16: quantize_blocks_dt<KBIT_CPU_F16>(a, sc, search, b0, b1); break;
    case KBIT_CPU_BF16: quantize_blocks_dt<KBIT_CPU_BF16>(a, sc, search, b0, b1); break;
    default: quantize_blocks_dt<KBIT_CPU_F32>(a, sc, search, b0, b1); break;
  }
}
#elif defined(KBIT_ISA_AVX2)
// Blocks whose absmax and scale are computed ahead of their codes (as in the avx512 path), and the
// most elements such a chunk holds (its input stays in L1 between the two passes).
constexpr int64_t kChunkBlocks = 16;
constexpr int64_t kChunkElements = 2048;
// Elements coded per step: one 32-element chunk never straddles a block (blocksizes are powers of two >= 32);
// blocks of 64 and more take 64 per step (one 32-byte store).
constexpr int64_t kStep = 32;
constexpr int64_t kWideStep = 64;

// Branch-free binary search for the sorted position of 8 scaled values over the 15 sorted boundaries:
// four steps of "go right iff !(bound >= s)" (NaN goes right, as in sorted_position), each an
// all-ones / zero lane mask m. The first step compares with the middle boundary (broadcast), the
// second picks bounds[3] or bounds[11] with one blend on that mask. The masks are folded into
// r = 2 r + m, i.e. r = -(position bits so far); vpermps reads only an index's low 3 bits, so r
// itself indexes the 8-entry tables of the last two steps (t2 at (-(2 b8 + b4)) & 7 holds
// bounds[8 b8 + 4 b4 + 1], t1 at (-h) & 7 holds bounds[2 h]). The result is -position (0..-15);
// the byte stage negates it for free inside its table lookup. 13 operations per 8 values: cheaper
// on AVX2 than a 32-cell grid (16- and 32-entry lookups cost two to four vpermps + blends each) and
// than counting all 15 boundaries (30 compares and adds).
struct Search16 {
  __m256 b7, b3, b11, t2, t1;
  // vpshufb table (both 128-bit lanes) from -position & 15 to the code: position 0 at index 0,
  // position p > 0 at index 16 - p.
  __m256i code_of_neg;
  bool inside;  // every boundary strictly inside (-1, 1): the clamp to [-1, 1] changes no position
  explicit Search16(const SortedCode<16>& sc) {
    alignas(32) float w2[8], w1[8];
    alignas(32) uint8_t o[32];
    for (int h = 0; h < 4; ++h) w2[(8 - h) & 7] = sc.bounds[4 * h + 1];  // h = 2 b8 + b4
    for (int h = 4; h < 8; ++h) w2[(8 - h) & 7] = 0.0f;                    // never read
    for (int h = 0; h < 8; ++h) w1[(8 - h) & 7] = sc.bounds[2 * h];
    for (int p = 0; p < 16; ++p) o[(16 - p) & 15] = o[16 + ((16 - p) & 15)] = sc.order[p];
    inside = sc.bounds[0] > -1.0f && sc.bounds[14] < 1.0f;
    b7 = _mm256_set1_ps(sc.bounds[7]);
    b3 = _mm256_set1_ps(sc.bounds[3]);
    b11 = _mm256_set1_ps(sc.bounds[11]);
    t2 = _mm256_load_ps(w2);
    t1 = _mm256_load_ps(w1);
    code_of_neg = _mm256_load_si256(reinterpret_cast<const __m256i*>(o));
  }
  // !(bound >= s) as an all-ones / zero lane mask.
  static __m256i right(__m256 bound, __m256 s) { return _mm256_castps_si256(_mm256_cmp_ps(bound, s, _CMP_NGE_UQ)); }
  static __m256i twice_plus(__m256i r, __m256i m) { return _mm256_add_epi32(_mm256_add_epi32(r, r), m); }
  // -(sorted position) of each lane of N vectors, in [-15, 0]. The N searches advance step by step
  // side by side: each is a chain of ~25 cycles, and the independent steps of the others written
  // next to it keep the scheduler fed (8% faster than one search after the other).
  template <int N>
  void neg_positions(const __m256 (&s)[N], __m256i (&out)[N]) const {
    __m256i m[N];
    for (int q = 0; q < N; ++q) m[q] = right(b7, s[q]);
    for (int q = 0; q < N; ++q) out[q] = twice_plus(m[q], right(_mm256_blendv_ps(b3, b11, _mm256_castsi256_ps(m[q])), s[q]));
    for (int q = 0; q < N; ++q) out[q] = twice_plus(out[q], right(_mm256_permutevar8x32_ps(t2, out[q]), s[q]));
    for (int q = 0; q < N; ++q) out[q] = twice_plus(out[q], right(_mm256_permutevar8x32_ps(t1, out[q]), s[q]));
  }
};

// Elements i, i+2, ..., i+14 (even) and i+1, ..., i+15 (odd) as float32, pairs in order: a bf16 pair
// is one 32-bit lane, so the split is a shift and a mask; f16 and f32 convert 8 elements in order and
// regroup them with two lane swaps and two shuffles.
template <int32_t DT>
inline void load16_split(const void* A, int64_t i, __m256& even, __m256& odd) {
  if (DT == KBIT_CPU_BF16) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(A) + i));
    even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int32_t>(0xFFFF0000u))));
  } else {
    const __m256 v0 = load8(A, DT, i), v1 = load8(A, DT, i + 8);
    const __m256 lo = _mm256_permute2f128_ps(v0, v1, 0x20), hi = _mm256_permute2f128_ps(v0, v1, 0x31);
    even = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    odd = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
  }
}

// max|x| of bf16 / f16 [begin, end) as bits, on the raw bits (sign cleared: unsigned order is float order
// and NaN is above infinity, so an integer max propagates NaN like torch's amax): 16 halves per load, no
// conversion; the last fold is vphminposuw on the complemented halves (min of ~x = ~max of x).
inline uint16_t absmax_bits16(const uint16_t* x, int64_t begin, int64_t end) {
  int64_t i = begin;
  const __m256i abs_mask = _mm256_set1_epi16(0x7FFF);
  __m256i m = _mm256_setzero_si256();
  for (; i + 16 <= end; i += 16)
    m = _mm256_max_epu16(m, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), abs_mask));
  const __m128i h = _mm_max_epu16(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
  uint16_t top = static_cast<uint16_t>(~_mm_cvtsi128_si32(_mm_minpos_epu16(_mm_xor_si128(h, _mm_set1_epi32(-1)))));
  for (; i < end; ++i) {
    const uint16_t u = x[i] & 0x7FFF;
    top = u > top ? u : top;
  }
  return top;
}

// The same for 16 consecutive blocks of 16 * VPB halves each, block b's bits in 16-bit lane b: each block
// folds to one vector, then pairs of vectors fold by unpack + max over 16-, 32- and 64-bit units and the
// two 128-bit lanes last (~3 operations per block instead of a horizontal reduction per block).
template <int VPB>
inline __m256i absmax_bits16_x16(const uint16_t* x) {
  const __m256i abs_mask = _mm256_set1_epi16(0x7FFF);
  auto block = [&](int b) {
    __m256i m = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 16 * VPB * b)), abs_mask);
    for (int j = 1; j < VPB; ++j)
      m = _mm256_max_epu16(m, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 16 * (VPB * b + j))), abs_mask));
    return m;
  };
  __m256i w[8], y[4];
  for (int i = 0; i < 8; ++i) {
    const __m256i u = block(2 * i), v = block(2 * i + 1);
    w[i] = _mm256_max_epu16(_mm256_unpacklo_epi16(u, v), _mm256_unpackhi_epi16(u, v));
  }
  for (int i = 0; i < 4; ++i)
    y[i] = _mm256_max_epu16(_mm256_unpacklo_epi32(w[2 * i], w[2 * i + 1]), _mm256_unpackhi_epi32(w[2 * i], w[2 * i + 1]));
  const __m256i z0 = _mm256_max_epu16(_mm256_unpacklo_epi64(y[0], y[1]), _mm256_unpackhi_epi64(y[0], y[1]));
  const __m256i z1 = _mm256_max_epu16(_mm256_unpacklo_epi64(y[2], y[3]), _mm256_unpackhi_epi64(y[2], y[3]));
  return _mm256_max_epu16(_mm256_permute2x128_si256(z0, z1, 0x20), _mm256_permute2x128_si256(z0, z1, 0x31));
}

// max|x| of [begin, end) as float32, on the raw bits as above.
template <int32_t DT>
float block_absmax(const Quantize4bitArgs& a, int64_t begin, int64_t end) {
  int64_t i = begin;
  if (DT == KBIT_CPU_F32) {
    const float* x = static_cast<const float*>(a.A);
    const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
    __m256i m = _mm256_setzero_si256();
    for (; i + 8 <= end; i += 8)
      m = _mm256_max_epu32(m, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), abs_mask));
    __m128i h = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    h = _mm_max_epu32(h, _mm_srli_si128(h, 8));
    h = _mm_max_epu32(h, _mm_srli_si128(h, 4));
    uint32_t top = static_cast<uint32_t>(_mm_cvtsi128_si32(h));
    for (; i < end; ++i) {
      const uint32_t u = f32_bits(x[i]) & 0x7FFFFFFFu;
      top = u > top ? u : top;
    }
    return bits_f32(top);
  }
  const uint16_t top = absmax_bits16(static_cast<const uint16_t*>(a.A), begin, end);
  return DT == KBIT_CPU_BF16 ? bf16_to_f32(top) : f16_to_f32(top);
}

template <int32_t DT>
void quantize_blocks_t(const Quantize4bitArgs& a, const SortedCode<16>& sc, const Search16& shared, int64_t b0, int64_t b1) {
  // Locals, so that the byte stores below (which may alias anything) do not force reloads.
  const Search16 search = shared;
  const void* A = a.A;
  uint8_t* packed = a.packed;
  const int64_t n = a.n, bs = a.blocksize;
  float inv[kChunkBlocks];
  // Blocks per chunk: up to kChunkBlocks, at most kChunkElements elements (one block if larger).
  const int64_t chunk = bs >= kChunkElements ? 1 : (kChunkElements / bs < kChunkBlocks ? kChunkElements / bs : kChunkBlocks);
  for (int64_t c0 = b0; c0 < b1; c0 += chunk) {
    const int64_t c1 = c0 + chunk < b1 ? c0 + chunk : b1;
    // Absmax and scale of a chunk of blocks first, then its codes: the reductions and divisions of
    // one block do not stall the coding of the next.
    for (int64_t b = c0; b < c1; ++b) {
      const int64_t begin = b * bs;
      a.absmax[b] = block_absmax<DT>(a, begin, begin + bs < n ? begin + bs : n);
    }
    for (int64_t b = c0; b < c1; ++b) inv[b - c0] = inverse_scale(a.absmax[b]);
    for (int64_t b = c0; b < c1; ++b) {
      const int64_t begin = b * bs;
      const int64_t end = begin + bs < n ? begin + bs : n;
      const __m256 scale = _mm256_set1_ps(inv[b - c0]);
      int64_t i = begin;
      // No clamp to [-1, 1] below (search.inside): |x * inv| <= 1 + 1 ulp within a block (NaN aside),
      // and every boundary lies inside (-1, 1), so 1 + ulp takes the last position as 1 does.
      for (; i + kWideStep <= end; i += kWideStep) {
        // 64 elements: four groups of 8 pairs, each as an even and an odd vector.
        __m256 scaled[8];
        for (int q = 0; q < 4; ++q) {
          __m256 e, o;
          load16_split<DT>(A, i + 16 * q, e, o);
          scaled[q] = _mm256_mul_ps(e, scale);
          scaled[4 + q] = _mm256_mul_ps(o, scale);
        }
        __m256i p[8];
        for (int h = 0; h < 2; ++h) {  // two sets of 4 searches side by side (8 spill out of the 16 registers)
          const __m256 part[4] = {scaled[h], scaled[h + 2], scaled[h + 4], scaled[h + 6]};
          __m256i r[4];
          search.neg_positions<4>(part, r);
          p[h] = r[0];
          p[h + 2] = r[1];
          p[h + 4] = r[2];
          p[h + 6] = r[3];
        }
        // To bytes: per 128-bit lane the 16 even values in 4-pair groups 0 2 4 6 | 1 3 5 7 (group g:
        // pairs 4g..4g+3), the odd ones likewise; -position & 15 -> code with one vpshufb (NF4 and
        // FP4 alike); even << 4 | odd (a 16-bit shift by 4 moves no bit across a byte, the codes
        // being < 16); one vpermd puts the groups in order.
        const __m256i low4 = _mm256_set1_epi8(0x0F);
        const __m256i even = _mm256_packs_epi16(_mm256_packs_epi32(p[0], p[1]), _mm256_packs_epi32(p[2], p[3]));
        const __m256i odd = _mm256_packs_epi16(_mm256_packs_epi32(p[4], p[5]), _mm256_packs_epi32(p[6], p[7]));
        const __m256i ce = _mm256_shuffle_epi8(search.code_of_neg, _mm256_and_si256(even, low4));
        const __m256i co = _mm256_shuffle_epi8(search.code_of_neg, _mm256_and_si256(odd, low4));
        const __m256i pairs = _mm256_or_si256(_mm256_slli_epi16(ce, 4), co);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(packed + (i >> 1)),
                            _mm256_permutevar8x32_epi32(pairs, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
      }
      for (; i + kStep <= end; i += kStep) {
        __m256 e0, o0, e1, o1;
        load16_split<DT>(A, i, e0, o0);
        load16_split<DT>(A, i + 16, e1, o1);
        const __m256 scaled[4] = {_mm256_mul_ps(e0, scale), _mm256_mul_ps(o0, scale), _mm256_mul_ps(e1, scale),
                                  _mm256_mul_ps(o1, scale)};
        __m256i p[4];
        search.neg_positions<4>(scaled, p);
        const __m256i pe0 = p[0], po0 = p[1], pe1 = p[2], po1 = p[3];
        // 32 elements (blocks of 32): as above with half the groups; per 128-bit lane 8 even values
        // (4 of pairs 0..7, 4 of pairs 8..15), then the 8 odd ones of the same pairs.
        const __m256i neg = _mm256_packs_epi16(_mm256_packs_epi32(pe0, pe1), _mm256_packs_epi32(po0, po1));
        const __m256i codes = _mm256_shuffle_epi8(search.code_of_neg, _mm256_and_si256(neg, _mm256_set1_epi8(0x0F)));
        // even << 4 | odd in the low 8 bytes of each lane, then the four 4-byte groups in pair order.
        const __m256i pairs = _mm256_or_si256(_mm256_slli_epi16(codes, 4), _mm256_srli_si256(codes, 8));
        const __m128i out = _mm_unpacklo_epi32(_mm256_castsi256_si128(pairs), _mm256_extracti128_si256(pairs, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(packed + (i >> 1)), out);
      }
      if (i < end) quantize_span_scalar(a, sc, inv[b - c0], i, end);
    }
  }
}

// ---- bfloat16: the search on the input's own bits, 16 elements per vector -------------------------
//
// x -> fl(x * inv) is monotonic, so within a block "x passes bounds[k]" (!(bounds[k] >= scaled x)) holds
// exactly for the x above a threshold, and the sorted position is a binary search of x itself over 15
// per-block thresholds: no conversion, no multiply, 16 lanes instead of 8. x is compared as a 16-bit
// integer key = |x|'s bits with x's sign (vpsignw; +0 and -0 both 0), which orders bf16 values like
// their values. The thresholds depend on the block's absmax only through its mantissa and its exponent:
// scaling absmax by 2^d scales inv by 2^-d exactly, so fl(x 2^d * inv 2^-d) = fl(x * inv), and in key
// space every threshold moves by d * 128 away from zero (while the values next to it are normal bf16
// numbers). Bf16Thresholds holds them, found by bisection with the reference's arithmetic, for the 128
// mantissas at exponents 126 and 127; a block of exponent e takes the row of its parity and adds
// (e - 126) / 2 to the high byte of each (nonzero) threshold: d is even, d * 128 a multiple of 256.
// Blocks outside [exp_min, kBf16ExpMax] (zero, tiny, huge, Inf or NaN absmax) take the float32 path
// (quantize_blocks_t). Exact for every bf16 value under every bf16 absmax (checked exhaustively;
// tests/test_cpu_quantize_4bit.py sweeps every mantissa at the exponents around the range's edges).
//
// Each vector runs four steps on 16 keys: m = key > threshold (vpcmpgtw), r = 2 r - m on bytes, and the
// next threshold read by vpshufb from a 16-byte table with r as index: r's low byte addresses the
// threshold's low byte and its high byte the high byte (r starts at (1, 14) per 16-bit lane; the tables
// place step j's entry h where 2^(j-1) * (1, 14) + h lands mod 16, see Bf16Thresholds). The fourth r is
// 16 * (1, 14) + position: one more vpshufb gives the code in the low byte and 0 in the high byte (index
// >= 128). 17 operations per 16 elements against ~30 for Search16 (split, multiply, two searches of 8),
// then per 64 elements vpackuswb to bytes, vpmaddubsw (16, 1) to 16 * even + odd, vpackuswb, vpermd.
constexpr int kBf16BaseExp = 126;  // rows for exponents 126 (even) and 127 (odd)
constexpr int kBf16ExpMax = 142;   // absmax < 2^16: inv > 2^-16 keeps fl(x * inv) > 0 for every x > 0
constexpr int kBf16ShiftBias = 64;  // shift table index: (e - kBf16BaseExp) >> 1 + bias, for e in [0, kBf16ExpMax]
constexpr int kBf16Shifts = ((kBf16ExpMax - kBf16BaseExp) >> 1) + kBf16ShiftBias + 1;

struct Bf16Thresholds {
  bool ok;       // every threshold has one sign for all rows (else blocks take the float32 path)
  int exp_min;   // smallest block exponent whose shifted thresholds are still normal bf16 values
  // Per row (parity << 7 | mantissa): table A (steps 2 and 3, and step 1's threshold) and table 4 (step 4).
  alignas(32) uint8_t rows[256][32];
  // Per shift s = (e - kBf16BaseExp) >> 1: what a block of exponent e adds to table A and table 4
  // (each twice, for both 128-bit lanes): s or -s at the high byte of a positive or negative threshold.
  alignas(32) int8_t shift[kBf16Shifts][64];
  alignas(16) uint8_t code[16];  // sorted position -> code
  explicit Bf16Thresholds(const SortedCode<16>& sc) : ok(true), exp_min(kBf16ExpMax + 1) {
    int min_mag[2] = {0x7FFF, 0x7FFF};
    int sgn[15] = {};
    for (int row = 0; row < 256; ++row) {
      const int q = row >> 7;
      const uint16_t amax = static_cast<uint16_t>((kBf16BaseExp + q) << 7 | (row & 127));
      const float inv = inverse_scale(bf16_to_f32(amax));
      int16_t t[15];
      for (int k = 0; k < 15; ++k) {
        // Smallest key in [-amax, amax + 1] passing bounds[k] (amax + 1: none does); the threshold is one less.
        int lo = -amax, hi = amax + 1;
        while (lo < hi) {
          const int mid = lo + ((hi - lo) >> 1);
          const float x = mid >= 0 ? bf16_to_f32(static_cast<uint16_t>(mid)) : -bf16_to_f32(static_cast<uint16_t>(-mid));
          if (!(sc.bounds[k] >= scale_clamp(x, inv))) {
            hi = mid;
          } else {
            lo = mid + 1;
          }
        }
        t[k] = static_cast<int16_t>(lo - 1);
        const int s = t[k] > 0 ? 1 : (t[k] < 0 ? -1 : 0);
        if (row == 0) sgn[k] = s;
        ok &= s == sgn[k];
        if (s != 0) {
          const int mag = t[k] < 0 ? -t[k] : t[k];
          min_mag[q] = mag < min_mag[q] ? mag : min_mag[q];
        }
      }
      uint8_t* ta = rows[row];
      uint8_t* t4 = rows[row] + 16;
      auto put = [](uint8_t* tab, int lo_pos, int hi_pos, int16_t v) {
        tab[lo_pos & 15] = static_cast<uint8_t>(v & 0xFF);
        tab[hi_pos & 15] = static_cast<uint8_t>((v >> 8) & 0xFF);
      };
      // Entry h of step j: low byte at 2^(j-1) + h, high byte at 14 * 2^(j-1) + h (mod 16); the positions
      // of steps 1 to 3 (one table) are distinct, as are those of step 4.
      ta[0] = ta[15] = 0;
      put(ta, 1, 14, t[7]);                                              // step 1 (read once per block)
      for (int h = 0; h < 2; ++h) put(ta, 2 + h, 28 + h, t[8 * h + 3]);  // step 2
      for (int h = 0; h < 4; ++h) put(ta, 4 + h, 56 + h, t[4 * h + 1]);  // step 3
      for (int h = 0; h < 8; ++h) put(t4, 8 + h, 112 + h, t[2 * h]);      // step 4
    }
    int sign[32] = {};  // per table byte: the sign of the threshold whose high byte it is, else 0
    sign[14] = sgn[7];
    for (int h = 0; h < 2; ++h) sign[(28 + h) & 15] = sgn[8 * h + 3];
    for (int h = 0; h < 4; ++h) sign[(56 + h) & 15] = sgn[4 * h + 1];
    for (int h = 0; h < 8; ++h) sign[16 + ((112 + h) & 15)] = sgn[2 * h];
    for (int i = 0; i < kBf16Shifts; ++i) {
      for (int j = 0; j < 64; ++j) shift[i][j] = static_cast<int8_t>(sign[(j >> 5) * 16 + (j & 15)] * (i - kBf16ShiftBias));
    }
    for (int p = 0; p < 16; ++p) code[p] = sc.order[p];
    // A nonzero threshold must keep |key| >= 256 after the shift: its neighbours stay normal numbers
    // (scaled exactly) and its high byte nonzero. Zero thresholds (FP4's boundary between -0 and +0)
    // stay 0 for every exponent up to kBf16ExpMax.
    for (int e = kBf16ExpMax; e >= 1; --e) {
      const int q = e & 1;
      if (min_mag[q] + 128 * (e - kBf16BaseExp - q) < 256) break;
      exp_min = e;
    }
  }
};

const Bf16Thresholds& bf16_thresholds(int32_t quant_type, const SortedCode<16>& sc) {
  if (quant_type == KBIT_CPU_NF4) {
    static const Bf16Thresholds nf4(sc);
    return nf4;
  }
  static const Bf16Thresholds fp4(sc);
  return fp4;
}

// Per-block state of the bf16 search: the two tables shifted to the block's exponent, step 1's threshold.
struct Bf16Block {
  __m256i tab_a, tab_4, t7;
};

// Codes of 16 bf16 elements, one per 16-bit lane (high byte 0).
inline __m256i bf16_codes(__m256i v, const Bf16Block& blk, __m256i code) {
  const __m256i key = _mm256_sign_epi16(_mm256_and_si256(v, _mm256_set1_epi16(0x7FFF)), v);
  __m256i m = _mm256_cmpgt_epi16(key, blk.t7);
  __m256i r = _mm256_sub_epi8(_mm256_set1_epi16(0x1C02), m);  // 2 * 0x0E01 - m
  m = _mm256_cmpgt_epi16(key, _mm256_shuffle_epi8(blk.tab_a, r));
  r = _mm256_sub_epi8(_mm256_add_epi8(r, r), m);
  m = _mm256_cmpgt_epi16(key, _mm256_shuffle_epi8(blk.tab_a, r));
  r = _mm256_sub_epi8(_mm256_add_epi8(r, r), m);
  m = _mm256_cmpgt_epi16(key, _mm256_shuffle_epi8(blk.tab_4, r));
  r = _mm256_sub_epi8(_mm256_add_epi8(r, r), m);
  return _mm256_shuffle_epi8(code, r);
}

// The tables of a block whose absmax has the bits amax (exponent in [exp_min, kBf16ExpMax]).
inline Bf16Block bf16_block(const Bf16Thresholds& th, uint16_t amax) {
  const int e = amax >> 7;
  const uint8_t* row = th.rows[(e & 1) << 7 | (amax & 127)];
  const int8_t* shift = th.shift[((e - kBf16BaseExp) >> 1) + kBf16ShiftBias];
  Bf16Block blk;
  blk.tab_a = _mm256_add_epi8(_mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(row))),
                              _mm256_load_si256(reinterpret_cast<const __m256i*>(shift)));
  blk.tab_4 = _mm256_add_epi8(_mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(row + 16))),
                              _mm256_load_si256(reinterpret_cast<const __m256i*>(shift + 32)));
  blk.t7 = _mm256_shuffle_epi8(blk.tab_a, _mm256_set1_epi16(0x0E01));
  return blk;
}

// Packed bytes of 64 elements at x (one block's tables).
inline void code64_bf16(const uint16_t* x, uint8_t* out, const Bf16Block& blk, __m256i code) {
  __m256i c[4];
  for (int q = 0; q < 4; ++q) c[q] = bf16_codes(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 16 * q)), blk, code);
  // Codes to bytes (vpackuswb), pairs to 16-bit 16 * even + odd (vpmaddubsw), to bytes again: the
  // lane-wise packs leave the 4-byte groups in the order 0 2 4 6 | 1 3 5 7; one vpermd sorts them.
  const __m256i pair = _mm256_set1_epi16(0x0110);
  const __m256i w01 = _mm256_maddubs_epi16(_mm256_packus_epi16(c[0], c[1]), pair);
  const __m256i w23 = _mm256_maddubs_epi16(_mm256_packus_epi16(c[2], c[3]), pair);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                      _mm256_permutevar8x32_epi32(_mm256_packus_epi16(w01, w23), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

// Codes of [begin, end) of one bf16 block (end - begin a multiple of 32) whose absmax has the bits amax.
inline void code_block_bf16(const uint16_t* x, uint8_t* packed, const Bf16Thresholds& th, __m256i code,
                            uint16_t amax, int64_t begin, int64_t end) {
  const Bf16Block blk = bf16_block(th, amax);
  int64_t i = begin;
  for (; i + 64 <= end; i += 64) code64_bf16(x + i, packed + (i >> 1), blk, code);
  if (i < end) {  // 32 elements
    const __m256i c0 = bf16_codes(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), blk, code);
    const __m256i c1 = bf16_codes(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 16)), blk, code);
    const __m256i w = _mm256_maddubs_epi16(_mm256_packus_epi16(c0, c1), _mm256_set1_epi16(0x0110));  // pairs 0-3 8-11 | 4-7 12-15
    const __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(packed + (i >> 1)), _mm_shuffle_epi32(b, _MM_SHUFFLE(3, 1, 2, 0)));
  }
}

// bf16 blocks [b0, b1) by the threshold search (th.ok); blocks it does not take go through quantize_blocks_t.
void quantize_blocks_bf16(const Quantize4bitArgs& a, const SortedCode<16>& sc, const Search16& search,
                          const Bf16Thresholds& th, int64_t b0, int64_t b1) {
  const uint16_t* x = static_cast<const uint16_t*>(a.A);
  uint8_t* packed = a.packed;
  const int64_t n = a.n, bs = a.blocksize;
  const int exp_min = th.exp_min;
  const __m256i code = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(th.code)));
  alignas(32) uint16_t bits[kChunkBlocks];
  // Blocks per chunk: up to kChunkBlocks, at most kChunkElements elements (one block if larger).
  const int64_t chunk = bs >= kChunkElements ? 1 : (kChunkElements / bs < kChunkBlocks ? kChunkElements / bs : kChunkBlocks);
  for (int64_t c0 = b0; c0 < b1; c0 += chunk) {
    const int64_t c1 = c0 + chunk < b1 ? c0 + chunk : b1;
    // Absmax of a chunk of blocks first (16 blocks of up to 128 at once), then its codes.
    const bool whole = bs <= 128 && c1 - c0 == kChunkBlocks && c1 * bs <= n;
    if (whole) {
      const uint16_t* xc = x + c0 * bs;
      // The next chunk's input on its way (a hint: past the end of the input it does nothing). ~5% faster
      // from DRAM, one or two threads, than the hardware prefetchers alone.
      const uintptr_t next = reinterpret_cast<uintptr_t>(xc + kChunkBlocks * bs);  // may be one past the end
      for (int64_t q = 0; q < kChunkBlocks * bs * 2; q += 64) _mm_prefetch(reinterpret_cast<const char*>(next + q), _MM_HINT_T0);
      const __m256i m = bs == 32 ? absmax_bits16_x16<2>(xc) : (bs == 64 ? absmax_bits16_x16<4>(xc) : absmax_bits16_x16<8>(xc));
      _mm256_store_si256(reinterpret_cast<__m256i*>(bits), m);
      // To float32: the bits to the high half (lanes 0-3, 8-11 | 4-7, 12-15 before the lane swap).
      const __m256i lo = _mm256_unpacklo_epi16(_mm256_setzero_si256(), m), hi = _mm256_unpackhi_epi16(_mm256_setzero_si256(), m);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.absmax + c0), _mm256_permute2x128_si256(lo, hi, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.absmax + c0 + 8), _mm256_permute2x128_si256(lo, hi, 0x31));
    } else {
      for (int64_t b = c0; b < c1; ++b) {
        const int64_t begin = b * bs;
        bits[b - c0] = absmax_bits16(x, begin, begin + bs < n ? begin + bs : n);
        a.absmax[b] = bf16_to_f32(bits[b - c0]);
      }
    }
    if (whole && bs == 64) {  // the common case: one 32-byte store per block
      const uint16_t* xc = x + c0 * 64;
      uint8_t* out = packed + c0 * 32;
      for (int q = 0; q < kChunkBlocks; ++q) {
        const uint16_t amax = bits[q];
        const int e = amax >> 7;
        if (e >= exp_min && e <= kBf16ExpMax) {
          code64_bf16(xc + 64 * q, out + 32 * q, bf16_block(th, amax), code);
        } else {
          quantize_blocks_t<KBIT_CPU_BF16>(a, sc, search, c0 + q, c0 + q + 1);
        }
      }
      continue;
    }
    for (int64_t b = c0; b < c1; ++b) {
      const int64_t begin = b * bs;
      const int64_t end = begin + bs < n ? begin + bs : n;
      const uint16_t amax = bits[b - c0];
      const int e = amax >> 7;
      if (e < exp_min || e > kBf16ExpMax || ((end - begin) & 31) != 0) {
        quantize_blocks_t<KBIT_CPU_BF16>(a, sc, search, b, b + 1);  // zero, tiny, huge, Inf, NaN; a short last block
      } else {
        code_block_bf16(x, packed, th, code, amax, begin, end);
      }
    }
  }
}

void quantize_blocks(const Quantize4bitArgs& a, const SortedCode<16>& sc, int64_t b0, int64_t b1) {
  const Search16 search(sc);
  if (!search.inside) {  // not for NF4 / FP4; kept exact for any table
    quantize_blocks_portable(a, sc, b0, b1);
    return;
  }
  switch (a.dtype) {
    case KBIT_CPU_F16: quantize_blocks_t<KBIT_CPU_F16>(a, sc, search, b0, b1); break;
    case KBIT_CPU_BF16: {
      const Bf16Thresholds& th = bf16_thresholds(a.quant_type, sc);
      if (th.ok) {
        quantize_blocks_bf16(a, sc, search, th, b0, b1);
      } else {
        quantize_blocks_t<KBIT_CPU_BF16>(a, sc, search, b0, b1);
      }
      break;
    }
    default: quantize_blocks_t<KBIT_CPU_F32>(a, sc, search, b0, b1); break;
  }
}
#else
void quantize_blocks(const Quantize4bitArgs& a, const SortedCode<16>& sc, int64_t b0, int64_t b1) {
  quantize_blocks_portable(a, sc, b0, b1);
}
#endif

}  // namespace

void quantize_4bit(const Quantize4bitArgs& a) {
  static const float kNf4[16] = KBIT_NF4_CODE_INIT;
  static const float kFp4[16] = KBIT_FP4_CODE_INIT;
  SortedCode<16> sc;
  sort_code<16>(a.quant_type == KBIT_CPU_NF4 ? kNf4 : kFp4, sc);
  const int64_t nb = (a.n + a.blocksize - 1) / a.blocksize;
  const int64_t min_blocks = kMinElementsPerThread / a.blocksize + 1;
  parallel_for(nb, 1, min_blocks, a.threads, [&](int64_t b0, int64_t b1, int, int) { quantize_blocks(a, sc, b0, b1); });
}

}  // namespace KBIT_NS
}  // namespace kbit_cpu

#if defined(KBIT_ISA_SCALAR)
#include "status.h"

KBIT_DECLARE_ISAS(void quantize_4bit(const Quantize4bitArgs& a))

extern "C" int32_t kbit_cpu_quantize_4bit(const void* A, int32_t dtype, int64_t n, int32_t blocksize,
                                          int32_t quant_type, uint8_t* packed, float* absmax, int32_t num_threads) {
  using namespace kbit_cpu;
  return guarded("quantize_4bit", [&] {
    require_dtype(dtype, "A");
    require_threads(num_threads);
    require(n >= 0, "n must be >= 0");
    require(blocksize >= KBIT_FOURBIT_MIN_BLOCKSIZE && blocksize <= KBIT_FOURBIT_MAX_BLOCKSIZE &&
                (blocksize & (blocksize - 1)) == 0,
            "blocksize must be a power of two in [32, 4096]");
    require(quant_type == KBIT_CPU_NF4 || quant_type == KBIT_CPU_FP4, "quant_type must be KBIT_CPU_NF4 or KBIT_CPU_FP4");
    if (n == 0) return;
    require(A != nullptr && packed != nullptr && absmax != nullptr, "A, packed and absmax must not be NULL");
    const Quantize4bitArgs args{A, dtype, n, blocksize, quant_type, packed, absmax, num_threads};
    KBIT_DISPATCH_SPLIT512(quantize_4bit(args));
  });
}
#endif
