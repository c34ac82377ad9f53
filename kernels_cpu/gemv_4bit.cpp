// gemv_4bit.cpp — kbit::gemv_4bit: out[N] = A[K] @ W[N, K].T with W = code[q] * absmax, fused.
// Plain or nested absmax (the one-row gemm_4bit of kbit-cpu comes here with nested statistics: each
// block's absmax is de-nested where the kernel reads it, with no pass over them beforehand).
//
// The activations are converted to float32 once per call; each weight is looked up in its block's
// scaled 16-entry table (the same float32 value the reference dequantizes to) and accumulated in
// float32. Rows are split across threads. With K % 32 == 0 every 32-element chunk of a row lies in
// one block (blocksizes are powers of two >= 32), so the vector paths step 16 packed bytes at a time:
// the activations are stored de-interleaved per chunk (16 even, then 16 odd elements) so that the
// high and low nibbles of the 16 bytes each index one full vector, with no shuffle back to element
// order. avx512: vpmovzxbd + vpermps + FMA. avx2: 8-lane halves, two vpermps + blend per lookup.
// neon: vqtbl4q lookups. Any other K (or the scalar ISA) takes the portable per-element loop.
// avx2 with f16/bf16 activations, K % 64 == 0 and blocksize >= 64: the int16 path (below), which is
// not exact to float32 but stays at the output dtype's rounding.
#include <cmath>

#include "convert.h"
#include "dispatch.h"
#include "kbit_cpu.h"
#include "parallel.h"

namespace kbit_cpu {

struct Gemv4bitArgs {
  const void* A;
  int32_t dtype;
  const uint8_t* B;
  const float* absmax;        // per block, or the second-level scales (per 256 blocks) when absmax_q is set
  const uint8_t* absmax_q;    // nested statistics: the 8-bit codes of the absmax, or nullptr
  const float* absmax_code;   // 256 floats (nested)
  float absmax_offset;        // nested
  const float* code;  // 16 floats
  int64_t M;          // rows of A (and of out), each K (N) contiguous elements
  int64_t N, K, blocksize;
  void* out;
  float* act;  // scratch: M * act_stride(K) floats, 64-byte aligned
  int32_t threads;
};

namespace KBIT_NS {

// Scratch floats per row of A (a multiple of 16: every row's scratch stays 64-byte aligned).
inline int64_t act_stride(int64_t K) { return (K + 32 + 15) & ~int64_t{15}; }

namespace {

// The float32 absmax of block b; nested: absmax_code[q] * scale, then + offset, in the reference's
// order (no contraction: -ffp-contract=off), once per block of weights.
inline float block_scale(const Gemv4bitArgs& a, int64_t b) {
  return a.absmax_q == nullptr ? a.absmax[b]
                               : a.absmax_code[a.absmax_q[b]] * a.absmax[b / KBIT_NESTED_BLOCKSIZE] + a.absmax_offset;
}

constexpr int64_t kChunk = 32;
constexpr int64_t kMinWeightsPerThread = 1 << 16;

inline uint8_t nibble(const uint8_t* packed, int64_t i) {
  const uint8_t byte = packed[i >> 1];
  return (i & 1) ? (byte & 0x0F) : (byte >> 4);
}

// Any K: activations in element order, blocks found per segment of the row.
void rows_portable(const Gemv4bitArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t row = r * a.K;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t pos = row, b = row / a.blocksize; pos < row + a.K; ++b) {  // b: block of pos
      const int64_t seg_end = (b + 1) * a.blocksize < row + a.K ? (b + 1) * a.blocksize : row + a.K;
      float lut[16];
      const float s = block_scale(a, b);
      for (int j = 0; j < 16; ++j) lut[j] = a.code[j] * s;
      for (int64_t i = pos; i < seg_end; ++i) acc[i & 3] += a.act[i - row] * lut[nibble(a.B, i)];
      pos = seg_end;
    }
    store_scalar(a.out, a.dtype, r, (acc[0] + acc[1]) + (acc[2] + acc[3]));
  }
}

#if defined(KBIT_ISA_AVX512)
constexpr bool kVectorPath = true;

void fill_activations(const Gemv4bitArgs& a) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t c = 0; c < a.K; c += kChunk) {
    const __m512 v0 = load16(a.A, a.dtype, c), v1 = load16(a.A, a.dtype, c + 16);
    _mm512_store_ps(a.act + c, _mm512_permutex2var_ps(v0, even, v1));
    _mm512_store_ps(a.act + c + 16, _mm512_permutex2var_ps(v0, odd, v1));
  }
}

struct Acc {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
};

// `chunks` chunks of one block: weights at p (16 bytes each), activations at x (32 floats each).
inline void dot_block(Acc& acc, __m512 lut, const uint8_t* p, const float* x, int64_t chunks) {
  int64_t c = 0;
  for (; c + 2 <= chunks; c += 2) {
    const __m512i v0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * c)));
    const __m512i v1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * c + 16)));
    acc.s0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v0, 4), lut), _mm512_load_ps(x + 32 * c), acc.s0);
    acc.s1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(v0, lut), _mm512_load_ps(x + 32 * c + 16), acc.s1);
    acc.s2 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v1, 4), lut), _mm512_load_ps(x + 32 * c + 32), acc.s2);
    acc.s3 = _mm512_fmadd_ps(_mm512_permutexvar_ps(v1, lut), _mm512_load_ps(x + 32 * c + 48), acc.s3);
  }
  if (c < chunks) {
    const __m512i v0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * c)));
    acc.s0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v0, 4), lut), _mm512_load_ps(x + 32 * c), acc.s0);
    acc.s1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(v0, lut), _mm512_load_ps(x + 32 * c + 16), acc.s1);
  }
}

void rows_vector(const Gemv4bitArgs& a, int64_t r0, int64_t r1) {
  const __m512 code = _mm512_loadu_ps(a.code);
  const int64_t B = a.blocksize;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t row = r * a.K;
    Acc acc;
    if (a.K % B == 0) {  // whole blocks per row: no division in the loop
      const int64_t per_row = a.K / B, b0 = row / B;
      for (int64_t j = 0; j < per_row; ++j) {
        const __m512 lut = _mm512_mul_ps(code, _mm512_set1_ps(block_scale(a, b0 + j)));
        dot_block(acc, lut, a.B + ((row + j * B) >> 1), a.act + j * B, B / kChunk);
      }
    } else {
      for (int64_t pos = row, b = row / B; pos < row + a.K; ++b) {  // b: block of pos
        const int64_t seg_end = (b + 1) * B < row + a.K ? (b + 1) * B : row + a.K;
        const __m512 lut = _mm512_mul_ps(code, _mm512_set1_ps(block_scale(a, b)));
        dot_block(acc, lut, a.B + (pos >> 1), a.act + (pos - row), (seg_end - pos) / kChunk);
        pos = seg_end;
      }
    }
    const __m512 sum = _mm512_add_ps(_mm512_add_ps(acc.s0, acc.s1), _mm512_add_ps(acc.s2, acc.s3));
    store_scalar(a.out, a.dtype, r, _mm512_reduce_add_ps(sum));
  }
}
#elif defined(KBIT_ISA_AVX2)
constexpr bool kVectorPath = true;

// Per chunk: for bytes 0..7 their 8 even then 8 odd elements, then the same for bytes 8..15.
void fill_activations(const Gemv4bitArgs& a) {
  const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  for (int64_t c = 0; c < a.K; c += 16) {
    const __m256 v0 = _mm256_permutevar8x32_ps(load8(a.A, a.dtype, c), even);      // e0 e2 e4 e6 | e1 e3 e5 e7
    const __m256 v1 = _mm256_permutevar8x32_ps(load8(a.A, a.dtype, c + 8), even);  // e8 .. e14 | e9 .. e15
    _mm256_store_ps(a.act + c, _mm256_permute2f128_ps(v0, v1, 0x20));
    _mm256_store_ps(a.act + c + 8, _mm256_permute2f128_ps(v0, v1, 0x31));
  }
}

// --- Half-precision activations: the int16 path ---------------------------------------------------
// The two vpermps + blend per 8 float lookups above bound the float path at ~0.4 cycles per weight (one
// thread: 1.86 ms for 4096x4096 against 1.82 ms for torch's dense bf16 matvec). For f16/bf16
// activations the dot product is taken in integers instead:
//   - the 16 code values become int16 round(code * 16383 / max|code|), split into a low-byte and a
//     high-byte vpshufb table, so 32 lookups cost one vpshufb per byte plane plus one unpack;
//   - the activations are quantized once per call to int16 with one scale per 64 elements,
//     round(x * 32767 / max|x|), stored in the order the unpacks produce (no shuffle in the loop);
//   - vpmaddwd sums weight x activation pairs exactly in int32, two of them are added (4 products,
//     < 2^31) and converted, and each 64-element chunk is scaled by absmax[block] * xscale[chunk].
// Per 64 weights: 4 vpshufb + 4 unpacks + 4 vpmaddwd; measured 7.3 cycles per 64 weights on one Zen 4
// core (4096x4096 bf16: 0.69 ms one thread, 0.43 ms two; the float path takes 1.95 ms). Weights keep 15
// bits (relative to max|code|) and activations 16 (relative to their chunk's max), above bf16's 8 and
// f16's 11 significant bits. Against the exact product, the mean error is the output rounding's for
// bf16 (1.02x) and 1.2x it for f16 (1.4x with activation outliers 50x the rest in every chunk); no
// output is off by more than half an ulp of the largest output (tests/test_cpu_gemv_half.py).
// Float32 activations keep the float path (their tolerance is float32's), as do chunks with a
// non-finite or vanishing max, and shapes where a 64-element chunk could straddle a block.
constexpr int64_t kIntChunk = 64;
constexpr float kActLevels = 32767.0f;
constexpr double kCodeLevels = 16383.0;

// Position w of a chunk's int16 activations holds element kIntOrder[w]: vpunpcklbw / vpunpckhbw of
// the high-nibble lookups (elements 2j) then of the low-nibble ones (2j + 1), per 128-bit lane.
struct IntOrder {
  uint8_t at[kIntChunk];
  constexpr IntOrder() : at() {
    for (int w = 0; w < kIntChunk; ++w) {
      const int group = w / 16, ww = w % 16;
      const int byte = (ww < 8 ? ww : ww + 8) + ((group & 1) ? 8 : 0);
      at[w] = static_cast<uint8_t>(2 * byte + (group >= 2 ? 1 : 0));
    }
  }
};
constexpr IntOrder kIntOrder{};

// Quantizes A into xi (K int16 in kIntOrder per chunk) and sc (per chunk: xscale * code step).
// False where a chunk's max is not finite or too small to invert; the caller then takes the float path.
bool fill_int16(const Gemv4bitArgs& a, int16_t* xi, float* sc, double code_step) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  alignas(32) int32_t q[kIntChunk];
  for (int64_t c = 0; c < a.K; c += kIntChunk) {
    __m256 v[8];
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < 8; ++j) {
      v[j] = load8(a.A, a.dtype, c + 8 * j);
      m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[j]));  // max_ps drops NaN: checked below
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    const float mx = _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)));
    __m256 nan = _mm256_setzero_ps();
    for (int j = 0; j < 8; ++j) nan = _mm256_or_ps(nan, _mm256_cmp_ps(v[j], v[j], _CMP_UNORD_Q));
    if (_mm256_movemask_ps(nan) != 0 || !(mx <= 3.0e38f) || (mx != 0.0f && mx < 1.0e-30f)) return false;
    const __m256 inv = _mm256_set1_ps(mx > 0.0f ? kActLevels / mx : 0.0f);
    for (int j = 0; j < 8; ++j) _mm256_store_si256(reinterpret_cast<__m256i*>(q + 8 * j), _mm256_cvtps_epi32(_mm256_mul_ps(v[j], inv)));
    for (int w = 0; w < kIntChunk; ++w) xi[c + w] = static_cast<int16_t>(q[kIntOrder.at[w]]);
    sc[c / kIntChunk] = static_cast<float>(static_cast<double>(mx) / kActLevels * code_step);
  }
  return true;
}

// Sums of one 64-weight chunk (32 packed bytes at p) against its int16 activations x, in float32
// (exact: each lane adds two int32 sums of 4 products, |sum| <= 4 x 16383 x 32767 < 2^31, and converts).
// The chunk's 64 weights as int16 code values, in kIntOrder (two vpshufb per byte plane, four unpacks).
struct ChunkWeights {
  __m256i w0, w1, w2, w3;
};

inline ChunkWeights chunk_weights(const uint8_t* p, __m256i tl, __m256i th, __m256i low4) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i ih = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4), il = _mm256_and_si256(v, low4);
  const __m256i hl = _mm256_shuffle_epi8(tl, ih), hh = _mm256_shuffle_epi8(th, ih);
  const __m256i ll = _mm256_shuffle_epi8(tl, il), lh = _mm256_shuffle_epi8(th, il);
  return {_mm256_unpacklo_epi8(hl, hh), _mm256_unpackhi_epi8(hl, hh), _mm256_unpacklo_epi8(ll, lh), _mm256_unpackhi_epi8(ll, lh)};
}

inline __m256 chunk_dot(const ChunkWeights& w, const int16_t* x) {
  const __m256i* X = reinterpret_cast<const __m256i*>(x);
  const __m256i s0 = _mm256_madd_epi16(w.w0, _mm256_load_si256(X));
  const __m256i s1 = _mm256_madd_epi16(w.w1, _mm256_load_si256(X + 1));
  const __m256i s2 = _mm256_madd_epi16(w.w2, _mm256_load_si256(X + 2));
  const __m256i s3 = _mm256_madd_epi16(w.w3, _mm256_load_si256(X + 3));
  return _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), _mm256_cvtepi32_ps(_mm256_add_epi32(s2, s3)));
}

inline float hsum8(__m256 s) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1)));
}

// Where the int16 path keeps a row's activations (K int16) and chunk scales (K / 64 floats): its scratch.
inline int16_t* int16_act(const Gemv4bitArgs& a) { return reinterpret_cast<int16_t*>(a.act); }
inline float* int16_scales(const Gemv4bitArgs& a) { return a.act + a.K / 2; }

// The vpshufb tables of wcode's low and high bytes, and a row's chunk geometry.
struct Int16Setup {
  __m256i tl, th, low4;
  int64_t chunks;  // per row
  int shift;       // chunks per block = 1 << shift
  Int16Setup(const Gemv4bitArgs& a, const int16_t* wcode) : low4(_mm256_set1_epi8(0x0F)), chunks(a.K / kIntChunk), shift(0) {
    alignas(16) uint8_t lo[16], hi[16];
    for (int j = 0; j < 16; ++j) {
      lo[j] = static_cast<uint8_t>(static_cast<uint16_t>(wcode[j]) & 0xFF);
      hi[j] = static_cast<uint8_t>(static_cast<uint16_t>(wcode[j]) >> 8);
    }
    tl = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(lo)));
    th = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(hi)));
    while ((kIntChunk << shift) < a.blocksize) ++shift;
  }
};

// R rows of A (sharing B, absmax and wcode, their int16 activations and chunk scales prepared by
// prepare_int16) over weight rows [r0, r1). Each chunk's weights are decoded once for the R rows; every
// output gets the same operations in the same order whatever R is.
// kNested: a.absmax_q is set (a plain absmax is broadcast straight from memory).
template <int R, bool kNested>
void rows_int16(const Gemv4bitArgs* const (&rows)[R], const int16_t* wcode, int64_t r0, int64_t r1) {
  const Gemv4bitArgs& a = *rows[0];
  const Int16Setup t(a, wcode);
  const int16_t* x[R];
  const float* sc[R];
  for (int i = 0; i < R; ++i) {
    x[i] = int16_act(*rows[i]);
    sc[i] = int16_scales(*rows[i]);
  }
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* p = a.B + r * (a.K / 2);
    const int64_t g = r * t.chunks;  // global chunk index of the row's first chunk
    __m256 acc[R][2];  // two chains per row: the FMA latency
    for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    // acc += chunk c's sums * absmax[its block] * its activation scale
    const auto step = [&](int64_t c, int chain) {
      const ChunkWeights w = chunk_weights(p + 32 * c, t.tl, t.th, t.low4);
      const int64_t b = (g + c) >> t.shift;
      const __m256 s = kNested ? _mm256_set1_ps(block_scale(a, b)) : _mm256_broadcast_ss(a.absmax + b);
      for (int i = 0; i < R; ++i)
        acc[i][chain] = _mm256_fmadd_ps(_mm256_mul_ps(chunk_dot(w, x[i] + kIntChunk * c), s), _mm256_broadcast_ss(sc[i] + c),
                                        acc[i][chain]);
    };
    int64_t c = 0;
    for (; c + 2 <= t.chunks; c += 2) {
      step(c, 0);
      step(c + 1, 1);
    }
    if (c < t.chunks) step(c, 0);
    for (int i = 0; i < R; ++i) store_scalar(rows[i]->out, a.dtype, r, hsum8(_mm256_add_ps(acc[i][0], acc[i][1])));
  }
}

// rows_int16 for the absmax form of the rows.
template <int R>
void rows_int16_any(const Gemv4bitArgs* const (&rows)[R], const int16_t* wcode, int64_t r0, int64_t r1) {
  if (rows[0]->absmax_q != nullptr) {
    rows_int16<R, true>(rows, wcode, r0, r1);
  } else {
    rows_int16<R, false>(rows, wcode, r0, r1);
  }
}

// Fills wcode and the row's int16 activations and chunk scales (its scratch) where the int16 path
// applies (see above); false where it does not.
bool prepare_int16(const Gemv4bitArgs& a, int16_t* wcode) {
  if (a.dtype == KBIT_CPU_F32 || a.K % kIntChunk != 0 || a.blocksize < kIntChunk) return false;
  double cmax = 0.0;
  for (int j = 0; j < 16; ++j) {
    const double m = a.code[j] < 0 ? -static_cast<double>(a.code[j]) : static_cast<double>(a.code[j]);
    if (!(m <= 3.0e38)) return false;  // NaN or Inf in the table
    cmax = m > cmax ? m : cmax;
  }
  if (cmax == 0.0) return false;
  for (int j = 0; j < 16; ++j) wcode[j] = static_cast<int16_t>(std::nearbyint(a.code[j] * kCodeLevels / cmax));
  return fill_int16(a, int16_act(a), int16_scales(a), cmax / kCodeLevels);
}

inline __m256 lookup8(__m256i idx, __m256 lo, __m256 hi) {
  const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));  // bit 3 -> sign bit
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), sel);
}

void rows_vector(const Gemv4bitArgs& a, int64_t r0, int64_t r1) {
  const __m256 code_lo = _mm256_loadu_ps(a.code), code_hi = _mm256_loadu_ps(a.code + 8);
  const __m256i low4 = _mm256_set1_epi32(0x0F);
  const int64_t B = a.blocksize;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t row = r * a.K;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    for (int64_t pos = row, b = row / B; pos < row + a.K; ++b) {  // b: block of pos
      const int64_t seg_end = (b + 1) * B < row + a.K ? (b + 1) * B : row + a.K;
      const __m256 scale = _mm256_set1_ps(block_scale(a, b));
      const __m256 lo = _mm256_mul_ps(code_lo, scale), hi = _mm256_mul_ps(code_hi, scale);
      for (int64_t i = pos; i < seg_end; i += kChunk) {
        const uint8_t* p = a.B + (i >> 1);
        const float* x = a.act + (i - row);
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        const __m256i v0 = _mm256_cvtepu8_epi32(bytes);
        const __m256i v1 = _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8));
        s0 = _mm256_fmadd_ps(lookup8(_mm256_srli_epi32(v0, 4), lo, hi), _mm256_load_ps(x), s0);
        s1 = _mm256_fmadd_ps(lookup8(_mm256_and_si256(v0, low4), lo, hi), _mm256_load_ps(x + 8), s1);
        s2 = _mm256_fmadd_ps(lookup8(_mm256_srli_epi32(v1, 4), lo, hi), _mm256_load_ps(x + 16), s2);
        s3 = _mm256_fmadd_ps(lookup8(_mm256_and_si256(v1, low4), lo, hi), _mm256_load_ps(x + 24), s3);
      }
      pos = seg_end;
    }
    store_scalar(a.out, a.dtype, r, hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3))));
  }
}
#elif defined(KBIT_ISA_NEON)
constexpr bool kVectorPath = true;

// Per chunk: the 16 even elements, then the 16 odd ones.
void fill_activations(const Gemv4bitArgs& a) {
  for (int64_t c = 0; c < a.K; c += kChunk) {
    for (int64_t j = 0; j < 16; ++j) {
      a.act[c + j] = load_scalar(a.A, a.dtype, c + 2 * j);
      a.act[c + 16 + j] = load_scalar(a.A, a.dtype, c + 2 * j + 1);
    }
  }
}

void rows_vector(const Gemv4bitArgs& a, int64_t r0, int64_t r1) {
  const float32x4_t c0 = vld1q_f32(a.code), c1 = vld1q_f32(a.code + 4), c2 = vld1q_f32(a.code + 8),
                    c3 = vld1q_f32(a.code + 12);
  const uint8x16_t byte_of = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};
  const uint8x16_t rep[4] = {{0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3},
                             {4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7},
                             {8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11},
                             {12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15}};
  const int64_t B = a.blocksize;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t row = r * a.K;
    float32x4_t s[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    for (int64_t pos = row, b = row / B; pos < row + a.K; ++b) {  // b: block of pos
      const int64_t seg_end = (b + 1) * B < row + a.K ? (b + 1) * B : row + a.K;
      const float scale = block_scale(a, b);
      uint8x16x4_t lut;
      lut.val[0] = vreinterpretq_u8_f32(vmulq_n_f32(c0, scale));
      lut.val[1] = vreinterpretq_u8_f32(vmulq_n_f32(c1, scale));
      lut.val[2] = vreinterpretq_u8_f32(vmulq_n_f32(c2, scale));
      lut.val[3] = vreinterpretq_u8_f32(vmulq_n_f32(c3, scale));
      for (int64_t i = pos; i < seg_end; i += kChunk) {
        const uint8x16_t bytes = vld1q_u8(a.B + (i >> 1));
        const uint8x16_t hi = vshrq_n_u8(bytes, 4), lo = vandq_u8(bytes, vdupq_n_u8(0x0F));
        const float* x = a.act + (i - row);
        for (int q = 0; q < 4; ++q) {
          const uint8x16_t ie = vaddq_u8(vshlq_n_u8(vqtbl1q_u8(hi, rep[q]), 2), byte_of);
          const uint8x16_t io = vaddq_u8(vshlq_n_u8(vqtbl1q_u8(lo, rep[q]), 2), byte_of);
          s[q] = vfmaq_f32(s[q], vreinterpretq_f32_u8(vqtbl4q_u8(lut, ie)), vld1q_f32(x + 4 * q));
          s[q] = vfmaq_f32(s[q], vreinterpretq_f32_u8(vqtbl4q_u8(lut, io)), vld1q_f32(x + 16 + 4 * q));
        }
      }
      pos = seg_end;
    }
    store_scalar(a.out, a.dtype, r, vaddvq_f32(vaddq_f32(vaddq_f32(s[0], s[1]), vaddq_f32(s[2], s[3]))));
  }
}
#else
constexpr bool kVectorPath = false;
#endif

}  // namespace

// Rows of A go through the same kernels one after another, inside one parallel region per group of up to
// kGroupRows rows: each thread takes a range of weight rows and, tile by tile (~64 KiB of packed
// weights, held in L2), runs every row of the group over it, so that the weights come from memory once
// for the group. On the int16 path two rows at a time also share the decoding of each weight chunk
// (rows_int16 with R = 2; 4096x4096 bf16 on the 2-core AVX2 VM: 1.4-1.5x the row-by-row time at
// M = 2..4), with the same results as one row at a time. Fixed-size arrays, no STL containers (see
// dispatch.h).
enum class RowPath : uint8_t { int16, vector, portable };
constexpr int64_t kTileBytes = 1 << 16;
constexpr int64_t kGroupRows = 8;

void gemv_rows(const Gemv4bitArgs& a, int64_t m0, int64_t m1) {
  const int64_t count = m1 - m0;
  const int64_t min_rows = kMinWeightsPerThread / ((a.K > 0 ? a.K : 1) * count) + 1;
  const int64_t tile = a.K / 2 >= kTileBytes ? 1 : kTileBytes / (a.K / 2 > 0 ? a.K / 2 : 1);
  const size_t in_bytes = a.dtype == KBIT_CPU_F32 ? 4 : 2;
  Gemv4bitArgs rows[kGroupRows];
  RowPath path[kGroupRows];
  int16_t wcode[16];  // the same for every row (prepare_int16 rebuilds it from a.code)
  for (int64_t i = 0; i < count; ++i) {
    const int64_t m = m0 + i;
    Gemv4bitArgs& r = rows[i] = a;
    r.M = 1;
    r.A = static_cast<const char*>(a.A) + m * a.K * in_bytes;
    r.out = static_cast<char*>(a.out) + m * a.N * in_bytes;
    r.act = a.act + m * act_stride(a.K);
    path[i] = RowPath::portable;
#if defined(KBIT_ISA_AVX2)
    if (prepare_int16(r, wcode)) {
      path[i] = RowPath::int16;
      continue;
    }
#endif
#if defined(KBIT_ISA_AVX512) || defined(KBIT_ISA_AVX2) || defined(KBIT_ISA_NEON)
    if (kVectorPath && a.K % kChunk == 0) {
      fill_activations(r);
      path[i] = RowPath::vector;
      continue;
    }
#endif
    to_f32(r.A, a.dtype, 0, a.K, r.act);
  }
  (void)wcode;
  parallel_for(a.N, 1, min_rows, a.threads, [&](int64_t r0, int64_t r1, int, int) {
    for (int64_t t0 = r0; t0 < r1; t0 += tile) {
      const int64_t t1 = t0 + tile < r1 ? t0 + tile : r1;
#if defined(KBIT_ISA_AVX2)
      const Gemv4bitArgs* pending = nullptr;  // an int16 row waiting for a second one to share the decoding
#endif
      for (int64_t i = 0; i < count; ++i) {
        const Gemv4bitArgs& r = rows[i];
        switch (path[i]) {
#if defined(KBIT_ISA_AVX2)
          case RowPath::int16:
            if (pending == nullptr) {
              pending = &r;
            } else {
              const Gemv4bitArgs* const pair[2] = {pending, &r};
              rows_int16_any(pair, wcode, t0, t1);
              pending = nullptr;
            }
            break;
#endif
#if defined(KBIT_ISA_AVX512) || defined(KBIT_ISA_AVX2) || defined(KBIT_ISA_NEON)
          case RowPath::vector: rows_vector(r, t0, t1); break;
#endif
          default: rows_portable(r, t0, t1); break;
        }
      }
#if defined(KBIT_ISA_AVX2)
      if (pending != nullptr) {
        const Gemv4bitArgs* const one[1] = {pending};
        rows_int16_any(one, wcode, t0, t1);
      }
#endif
    }
  });
}

void gemv_4bit(const Gemv4bitArgs& a) {
  for (int64_t m0 = 0; m0 < a.M; m0 += kGroupRows) gemv_rows(a, m0, m0 + kGroupRows < a.M ? m0 + kGroupRows : a.M);
}

}  // namespace KBIT_NS
}  // namespace kbit_cpu

#if defined(KBIT_ISA_SCALAR)
#include <memory>

#include "status.h"

KBIT_DECLARE_ISAS(void gemv_4bit(const Gemv4bitArgs& a))

extern "C" int32_t kbit_cpu_gemv_4bit(const void* A, int32_t dtype, const uint8_t* B, const float* absmax,
                                      const uint8_t* absmax_8bit, const float* absmax_code, float absmax_offset,
                                      const float* code, int64_t M, int64_t N, int64_t K, int32_t blocksize, void* out,
                                      int32_t num_threads) {
  using namespace kbit_cpu;
  return guarded("gemv_4bit", [&] {
    require_dtype(dtype, "A");
    require_threads(num_threads);
    require(M >= 0 && N >= 0 && K >= 0, "M, N and K must be >= 0");
    require(blocksize >= KBIT_FOURBIT_MIN_BLOCKSIZE && blocksize <= KBIT_FOURBIT_MAX_BLOCKSIZE &&
                (blocksize & (blocksize - 1)) == 0,
            "blocksize must be a power of two in [32, 4096]");
    if (M == 0 || N == 0) return;
    require(out != nullptr && code != nullptr, "out and code must not be NULL");
    if (K == 0) {
      for (int64_t r = 0; r < M * N; ++r) isa_scalar::store_scalar(out, dtype, r, 0.0f);
      return;
    }
    require(A != nullptr && B != nullptr && absmax != nullptr, "A, B and absmax must not be NULL");
    require(absmax_8bit == nullptr || absmax_code != nullptr, "absmax_code must not be NULL with absmax_8bit");
    std::unique_ptr<float[]> act_storage(new float[M * isa_scalar::act_stride(K) + 16]);
    float* act = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(act_storage.get()) + 63) & ~uintptr_t{63});
    const Gemv4bitArgs args{A, dtype, B, absmax, absmax_8bit, absmax_code, absmax_offset, code, M, N, K, blocksize, out, act, num_threads};
    KBIT_DISPATCH_SPLIT512(gemv_4bit(args));
  });
}
#endif
