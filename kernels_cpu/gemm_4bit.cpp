// gemm_4bit.cpp — kbit::gemm_4bit: out[M, N] = A[M, K] @ W[N, K].T (+ bias), W 4-bit, for small M.
//
// Like the reference, the weights are dequantized to A's dtype (code[q] * absmax rounded to f16/bf16
// for half activations) and accumulated in float32. Nested absmax is de-nested once per call
// (absmax_code[q] * absmax2[i / 256] + offset, float32, as dequantize_blockwise + add). Threads split
// N into tiles of kTileRows weight rows; each tile is dequantized once into a per-thread buffer and
// reused by every row of A.
// avx512: K % 32 == 0. M <= 3: every 32-weight chunk is looked up once into registers and used by
//   all rows (FMA, activations de-interleaved per chunk as in gemv_4bit). Larger M: tiles of 4 rows
//   are dequantized into a per-thread buffer and multiplied by a register-blocked micro-kernel. With
//   AVX512-BF16 and bf16 activations: tiles of 8 rows x up to 16384 columns of bf16 pairs (with VBMI
//   vpmultishiftqb + vpermw per 32 weights, else two vpermd), 3 x 8 vdpbf16ps blocks on A's own bf16
//   data, the 8 sums of a row reduced together (partial sums kept between column chunks for longer
//   rows); otherwise tiles of 4 full rows in float32 and 6 x 4 FMA blocks. On Zen 4 (one thread,
//   M = 32) the vdpbf16ps loop runs at ~0.97 of its one-per-cycle peak and takes ~80% of the time,
//   the tile dequantization ~14%. Where 512-bit operations are split (see the entry point) the other
//   paths run in their avx2 form.
// avx2: K % 32 == 0. M <= 4: as the avx512 small-M path, 8 lanes (16-entry lookups by two vpermps +
//   blend). Larger M: tiles of 4 rows in float32 and 3 x 4 FMA blocks.
// other ISAs / other K: each weight row is dequantized once and dotted with every activation row.
#include <cmath>

#include "convert.h"
#include "dispatch.h"
#include "kbit_cpu.h"
#include "parallel.h"

namespace kbit_cpu {

struct Gemm4bitArgs {
  const void* A;
  int32_t dtype;
  int64_t M;
  const uint8_t* B;
  int64_t N, K, blocksize;
  const float* absmax;  // de-nested
  const float* code;    // 16 floats
  const void* bias;     // dtype, or nullptr
  void* out;
  float* act;           // scratch: M * K + 16 floats, 64-byte aligned
  float* tiles;         // scratch: threads * part_floats floats, 64-byte aligned
  int64_t part_floats;  // scratch_floats_per_part(M, K)
  int32_t threads;
};

// float32 tiles: kTileRows rows x K. bf16 tiles: kBf16TileRows rows x up to kBf16Kc columns of bf16
// (row stride bf16_stride(K) halves), plus the partial sums of every activation row against them (one
// vector per row and tile row) when K is longer.
constexpr int64_t kTileRows = 4;
constexpr int64_t kBf16TileRows = 8;
constexpr int64_t kBf16Kc = 16384;

static inline int64_t bf16_stride(int64_t K) { return (K < kBf16Kc ? K : kBf16Kc) + 32; }

// Rows up to which the avx512 build multiplies straight from the lookup (rows_direct), and whether its
// bf16 dot-product tiles serve a call (the entry point's choice of build depends on it).
constexpr int64_t kAvx512DirectMaxM = 3;
static inline bool bf16_tiles(int32_t dtype, int64_t M, int64_t K) {
  return dtype == KBIT_CPU_BF16 && M > kAvx512DirectMaxM && K % 32 == 0 && has_avx512_bf16();
}

static inline int64_t scratch_floats_per_part(int64_t M, int64_t K) {
  const int64_t f32_tile = kTileRows * (K + 16);
  const int64_t bf16_tile = kBf16TileRows * bf16_stride(K) / 2 + M * kBf16TileRows * 16;
  return (f32_tile > bf16_tile ? f32_tile : bf16_tile) + 16;
}

namespace KBIT_NS {
namespace {

constexpr int64_t kChunk = 32;
constexpr int64_t kMinMacsPerThread = 1 << 18;

inline uint8_t nibble(const uint8_t* packed, int64_t i) {
  const uint8_t byte = packed[i >> 1];
  return (i & 1) ? (byte & 0x0F) : (byte >> 4);
}

// The value a float32 weight has once stored in the activation dtype (the reference dequantizes to it).
inline float as_dtype(float v, int32_t dtype) {
  if (dtype == KBIT_CPU_BF16) return bf16_to_f32(f32_to_bf16(v));
  if (dtype == KBIT_CPU_F16) return f16_to_f32(f32_to_f16(v));
  return v;
}

inline float bias_of(const Gemm4bitArgs& a, int64_t n) {
  return a.bias != nullptr ? load_scalar(a.bias, a.dtype, n) : 0.0f;
}

// Weight row r in element order (any K), rounded to the activation dtype.
void dequantize_row(const Gemm4bitArgs& a, int64_t r, float* w) {
  const int64_t row = r * a.K;
  for (int64_t pos = row, b = row / a.blocksize; pos < row + a.K; ++b) {  // b: block of pos
    const int64_t seg_end = (b + 1) * a.blocksize < row + a.K ? (b + 1) * a.blocksize : row + a.K;
    float lut[16];
    for (int j = 0; j < 16; ++j) lut[j] = as_dtype(a.code[j] * a.absmax[b], a.dtype);
    for (int64_t i = pos; i < seg_end; ++i) w[i - row] = lut[nibble(a.B, i)];
    pos = seg_end;
  }
}

void rows_portable(const Gemm4bitArgs& a, int64_t r0, int64_t r1, int slot) {
  float* w = a.tiles + slot * a.part_floats;
  for (int64_t r = r0; r < r1; ++r) {
    dequantize_row(a, r, w);
    const float bias = bias_of(a, r);
    for (int64_t m = 0; m < a.M; ++m) {
      const float* x = a.act + m * a.K;
      float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
      int64_t k = 0;
      for (; k + 8 <= a.K; k += 8) {
        for (int j = 0; j < 8; ++j) acc[j] += x[k + j] * w[k + j];
      }
      for (; k < a.K; ++k) acc[k & 7] += x[k] * w[k];
      const float dot = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      store_scalar(a.out, a.dtype, m * a.N + r, dot + bias);
    }
  }
}

#if defined(KBIT_ISA_AVX512)
constexpr int kMaxMr = 6;
// Up to this many activation rows (at most 48 KiB of float32 activations for K = 4096, L1-resident),
// weights go straight from the lookup into FMAs (rows_direct); more rows re-read them from L2.
constexpr int64_t kDirectMaxM = kAvx512DirectMaxM;

// Activation rows de-interleaved per chunk (16 even, 16 odd elements), float32.
void fill_activations(const Gemm4bitArgs& a) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t m = 0; m < a.M; ++m) {
    for (int64_t c = 0; c < a.K; c += kChunk) {
      const __m512 v0 = load16(a.A, a.dtype, m * a.K + c), v1 = load16(a.A, a.dtype, m * a.K + c + 16);
      _mm512_store_ps(a.act + m * a.K + c, _mm512_permutex2var_ps(v0, even, v1));
      _mm512_store_ps(a.act + m * a.K + c + 16, _mm512_permutex2var_ps(v0, odd, v1));
    }
  }
}

inline __m512 round_lut(__m512 lut, int32_t dtype) {
  if (dtype == KBIT_CPU_BF16) return bf16x16_to_f32(f32x16_to_bf16(lut));
  if (dtype == KBIT_CPU_F16) return _mm512_cvtph_ps(_mm512_cvtps_ph(lut, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  return lut;
}

// Tile of `rows` weight rows starting at r0, de-interleaved float32 (row stride K + 16).
void dequantize_tile_f32(const Gemm4bitArgs& a, int64_t r0, int64_t rows, float* tile) {
  const __m512 code = _mm512_loadu_ps(a.code);
  for (int64_t t = 0; t < rows; ++t) {
    const int64_t row = (r0 + t) * a.K;
    float* w = tile + t * (a.K + 16);
    for (int64_t pos = row, b = row / a.blocksize; pos < row + a.K; ++b) {  // b: block of pos
      const int64_t seg_end = (b + 1) * a.blocksize < row + a.K ? (b + 1) * a.blocksize : row + a.K;
      const __m512 lut = round_lut(_mm512_mul_ps(code, _mm512_set1_ps(a.absmax[b])), a.dtype);
      for (int64_t i = pos; i < seg_end; i += kChunk) {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.B + (i >> 1))));
        _mm512_store_ps(w + (i - row), _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut));
        _mm512_store_ps(w + (i - row) + 16, _mm512_permutexvar_ps(v, lut));
      }
      pos = seg_end;
    }
  }
}

template <int MR, int NR>
void micro_f32(const Gemm4bitArgs& a, const float* tile, int64_t m0, int64_t r0) {
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
  const int64_t stride = a.K + 16;
  for (int64_t k = 0; k < a.K; k += 16) {
    __m512 w[NR];
    for (int r = 0; r < NR; ++r) w[r] = _mm512_load_ps(tile + r * stride + k);
    for (int m = 0; m < MR; ++m) {
      const __m512 x = _mm512_load_ps(a.act + (m0 + m) * a.K + k);
      for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_fmadd_ps(x, w[r], acc[m][r]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r)
      store_scalar(a.out, a.dtype, (m0 + m) * a.N + r0 + r, _mm512_reduce_add_ps(acc[m][r]) + bias_of(a, r0 + r));
}

// The spans of columns [k0, k1) of weight row r that lie in one absmax block each, in order, as
// positions in the packed data: next(b, begin, end) gives block b's span [begin, end).
struct BlockSpans {
  int64_t pos, stop, blocksize, block;
  BlockSpans(const Gemm4bitArgs& a, int64_t r, int64_t k0, int64_t k1)
      : pos(r * a.K + k0), stop(r * a.K + k1), blocksize(a.blocksize), block(pos / a.blocksize) {}
  bool next(int64_t& b, int64_t& begin, int64_t& end) {
    if (pos >= stop) return false;
    b = block++;
    begin = pos;
    end = block * blocksize < stop ? block * blocksize : stop;
    pos = end;
    return true;
  }
};

// The 16 weights of one block as bf16 words: code[j] * absmax rounded to nearest even. vcvtneps2bf16
// rounds the same way but reads denormal inputs as zero, so blocks whose products can be denormal
// (|absmax| under 2^-100: every nonzero NF4 / FP4 code is above 2^-8) take the bit-level rounding.
KBIT_TARGET_AVX512_BF16 inline __m256i bf16_lut(__m512 code, float absmax) {
  const __m512 w = _mm512_mul_ps(code, _mm512_set1_ps(absmax));
  if (!(std::fabs(absmax) < 0x1p-100f)) return (__m256i)_mm512_cvtneps_pbh(w);
  return f32x16_to_bf16(w);
}

// bf16 weights as pairs: lane i = bf16(w[2i]) | bf16(w[2i+1]) << 16, columns [k0, k1) of `rows` rows
// from r0 (row stride bf16_stride(K) halves). Per 32 weights: two vpermd of the nibbles (bits 3:0 of
// each byte's lane) and a shift + or to pair them.
KBIT_TARGET_AVX512_BF16 void dequantize_tile_bf16(const Gemm4bitArgs& a, int64_t r0, int64_t rows, int64_t k0, int64_t k1,
                                                  uint16_t* tile) {
  const __m512 code = _mm512_loadu_ps(a.code);
  for (int64_t t = 0; t < rows; ++t) {
    uint16_t* w = tile + t * bf16_stride(a.K);
    const int64_t first = (r0 + t) * a.K + k0;  // w[i - first]: weight i of the packed data
    BlockSpans spans(a, r0 + t, k0, k1);
    for (int64_t b, begin, end; spans.next(b, begin, end);) {
      const __m512i lut = _mm512_cvtepu16_epi32(bf16_lut(code, a.absmax[b]));
      for (int64_t i = begin; i < end; i += kChunk) {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.B + (i >> 1))));
        const __m512i even = _mm512_permutexvar_epi32(_mm512_srli_epi32(v, 4), lut);
        const __m512i odd = _mm512_slli_epi32(_mm512_permutexvar_epi32(v, lut), 16);
        _mm512_store_si512(w + (i - first), _mm512_or_si512(even, odd));
      }
    }
  }
}

// As dequantize_tile_bf16 with VBMI: per 32 weights, the 16 packed bytes zero-extended two per
// quadword (vpmovzxwq), each weight's nibble moved into the low bits of its word (vpmultishiftqb at
// bit offsets 4, 0, 12, 8 of the quadword; the bit above the nibble is left as it comes) and looked up
// by vpermw in the block's 16 words repeated twice (so that bit does not matter): the pairs come out
// in place.
KBIT_TARGET_AVX512_BF16 KBIT_TARGET_AVX512_VBMI void dequantize_tile_bf16_vbmi(const Gemm4bitArgs& a, int64_t r0, int64_t rows,
                                                                               int64_t k0, int64_t k1, uint16_t* tile) {
  const __m512 code = _mm512_loadu_ps(a.code);
  const __m512i nibbles = _mm512_set1_epi64(0x0008000C00000004);
  for (int64_t t = 0; t < rows; ++t) {
    uint16_t* w = tile + t * bf16_stride(a.K);
    const int64_t first = (r0 + t) * a.K + k0;  // w[i - first]: weight i of the packed data
    BlockSpans spans(a, r0 + t, k0, k1);
    for (int64_t b, begin, end; spans.next(b, begin, end);) {
      const __m512i lut = _mm512_broadcast_i64x4(bf16_lut(code, a.absmax[b]));
      for (int64_t i = begin; i < end; i += kChunk) {
        const __m512i v = _mm512_cvtepu16_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.B + (i >> 1))));
        _mm512_store_si512(w + (i - first), _mm512_permutexvar_epi16(_mm512_multishift_epi64_epi8(nibbles, v), lut));
      }
    }
  }
}

// Rows m0.. m0+MR of A against the NR tile rows over columns [k0, k1): partial sums carried in `acc`
// (one vector per activation row and tile row, stride kBf16TileRows) between column chunks; the last
// chunk reduces them into out.
template <int MR, int NR>
KBIT_TARGET_AVX512_BF16 void micro_bf16(const Gemm4bitArgs& a, const uint16_t* tile, int64_t m0, int64_t r0, int64_t k0,
                                        int64_t k1, float* acc_buf) {
  const uint16_t* A = static_cast<const uint16_t*>(a.A);
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r)
      acc[m][r] = k0 == 0 ? _mm512_setzero_ps() : _mm512_load_ps(acc_buf + ((m0 + m) * kBf16TileRows + r) * 16);
  const int64_t stride = bf16_stride(a.K);
  for (int64_t k = k0; k < k1; k += 32) {
    // MR activation vectors stay in registers; weight vectors are loaded one at a time (MR * NR
    // accumulators + MR + 1 registers: 28 of 32 for 3 x 8).
    __m512bh x[MR];
    for (int m = 0; m < MR; ++m) x[m] = (__m512bh)_mm512_loadu_si512(A + (m0 + m) * a.K + k);
    for (int r = 0; r < NR; ++r) {
      const __m512bh w = (__m512bh)_mm512_load_si512(tile + r * stride + (k - k0));
      for (int m = 0; m < MR; ++m) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], x[m], w);
    }
  }
  if (k1 < a.K) {
    for (int m = 0; m < MR; ++m)
      for (int r = 0; r < NR; ++r) _mm512_store_ps(acc_buf + ((m0 + m) * kBf16TileRows + r) * 16, acc[m][r]);
    return;
  }
  if constexpr (NR == 8) {
    const __m256 bias = a.bias != nullptr ? load8(a.bias, a.dtype, r0) : _mm256_setzero_ps();
    for (int m = 0; m < MR; ++m) {
      const __m256 sums = reduce_add_8x16(acc[m][0], acc[m][1], acc[m][2], acc[m][3], acc[m][4], acc[m][5], acc[m][6], acc[m][7]);
      store8(a.out, a.dtype, (m0 + m) * a.N + r0, _mm256_add_ps(sums, bias));
    }
  } else {
    for (int m = 0; m < MR; ++m)
      for (int r = 0; r < NR; ++r)
        store_scalar(a.out, a.dtype, (m0 + m) * a.N + r0 + r, _mm512_reduce_add_ps(acc[m][r]) + bias_of(a, r0 + r));
  }
}

constexpr int kBf16Mr = 3;

template <int NR>
void tile_rows_bf16(const Gemm4bitArgs& a, const uint16_t* tile, int64_t r0, int64_t k0, int64_t k1, float* acc) {
  int64_t m = 0;
  for (; m + kBf16Mr <= a.M; m += kBf16Mr) micro_bf16<kBf16Mr, NR>(a, tile, m, r0, k0, k1, acc);
  if (a.M - m == 2) micro_bf16<2, NR>(a, tile, m, r0, k0, k1, acc);
  if (a.M - m == 1) micro_bf16<1, NR>(a, tile, m, r0, k0, k1, acc);
}

// Tiles of kBf16TileRows weight rows, whole rows up to kBf16Kc columns (then kBf16Kc columns at a time).
// The tile of 8 rows of 4096 columns (64 KiB) sits in L2 and every activation row reads it there:
// measured on Zen 4 (one thread, M = 32, 4096x4096), chunks of 1024 columns that stay in L1 spent 17%
// of the multiply in per-chunk work (partial sums out and back, the call around the k loop) and whole
// rows are 1.15x faster; M = 128 runs the same either way.
void rows_bf16(const Gemm4bitArgs& a, int64_t r0, int64_t r1, int slot) {
  float* scratch = a.tiles + slot * a.part_floats;
  uint16_t* tile = reinterpret_cast<uint16_t*>(scratch);
  float* acc = scratch + kBf16TileRows * bf16_stride(a.K) / 2;
  const bool vbmi = has_avx512_vbmi();
  for (int64_t r = r0; r < r1; r += kBf16TileRows) {
    const int64_t rows = r1 - r < kBf16TileRows ? r1 - r : kBf16TileRows;
    for (int64_t k0 = 0; k0 < a.K; k0 += kBf16Kc) {
      const int64_t k1 = k0 + kBf16Kc < a.K ? k0 + kBf16Kc : a.K;
      if (vbmi) {
        dequantize_tile_bf16_vbmi(a, r, rows, k0, k1, tile);
      } else {
        dequantize_tile_bf16(a, r, rows, k0, k1, tile);
      }
      // The next chunk's packed weights (the next tile's first chunk after the last one) are fetched
      // while this chunk is multiplied: one line per 128 weights of each of its rows.
      const int64_t nr = k1 < a.K ? r : r + kBf16TileRows, nk0 = k1 < a.K ? k1 : 0;
      const int64_t nk1 = nk0 + kBf16Kc < a.K ? nk0 + kBf16Kc : a.K;
      // Their scales too (a line per 16 blocks): a miss on one stalls the dequantization of its row.
      for (int64_t t = nr; t < nr + kBf16TileRows && t < r1; ++t) {
        for (int64_t k = nk0; k < nk1; k += 128) _mm_prefetch(reinterpret_cast<const char*>(a.B + ((t * a.K + k) >> 1)), _MM_HINT_T0);
        for (int64_t k = nk0; k < nk1; k += 16 * a.blocksize)
          _mm_prefetch(reinterpret_cast<const char*>(a.absmax + (t * a.K + k) / a.blocksize), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(a.absmax + (t * a.K + nk1 - 1) / a.blocksize), _MM_HINT_T0);
      }
      switch (rows) {
        case 8: tile_rows_bf16<8>(a, tile, r, k0, k1, acc); break;
        case 7: tile_rows_bf16<7>(a, tile, r, k0, k1, acc); break;
        case 6: tile_rows_bf16<6>(a, tile, r, k0, k1, acc); break;
        case 5: tile_rows_bf16<5>(a, tile, r, k0, k1, acc); break;
        case 4: tile_rows_bf16<4>(a, tile, r, k0, k1, acc); break;
        case 3: tile_rows_bf16<3>(a, tile, r, k0, k1, acc); break;
        case 2: tile_rows_bf16<2>(a, tile, r, k0, k1, acc); break;
        default: tile_rows_bf16<1>(a, tile, r, k0, k1, acc); break;
      }
    }
  }
}

template <int NR>
void tile_rows(const Gemm4bitArgs& a, const float* tile, int64_t r0) {
  int64_t m = 0;
  for (; m + kMaxMr <= a.M; m += kMaxMr) micro_f32<kMaxMr, NR>(a, tile, m, r0);
  switch (a.M - m) {
    case 5: micro_f32<5, NR>(a, tile, m, r0); break;
    case 4: micro_f32<4, NR>(a, tile, m, r0); break;
    case 3: micro_f32<3, NR>(a, tile, m, r0); break;
    case 2: micro_f32<2, NR>(a, tile, m, r0); break;
    case 1: micro_f32<1, NR>(a, tile, m, r0); break;
    default: break;
  }
}

// Small M: each 32-weight chunk is looked up once into two registers and multiplied into every
// activation row straight away (no tile in memory); 2 * MR accumulators.
template <int MR>
void rows_direct(const Gemm4bitArgs& a, int64_t r0, int64_t r1) {
  const __m512 code = _mm512_loadu_ps(a.code);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t row = r * a.K;
    __m512 even[MR], odd[MR];
    for (int m = 0; m < MR; ++m) even[m] = odd[m] = _mm512_setzero_ps();
    for (int64_t pos = row, b = row / a.blocksize; pos < row + a.K; ++b) {  // b: block of pos
      const int64_t seg_end = (b + 1) * a.blocksize < row + a.K ? (b + 1) * a.blocksize : row + a.K;
      const __m512 lut = round_lut(_mm512_mul_ps(code, _mm512_set1_ps(a.absmax[b])), a.dtype);
      for (int64_t i = pos; i < seg_end; i += kChunk) {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.B + (i >> 1))));
        const __m512 we = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut), wo = _mm512_permutexvar_ps(v, lut);
        const float* x = a.act + (i - row);
        for (int m = 0; m < MR; ++m) {
          even[m] = _mm512_fmadd_ps(we, _mm512_load_ps(x + m * a.K), even[m]);
          odd[m] = _mm512_fmadd_ps(wo, _mm512_load_ps(x + m * a.K + 16), odd[m]);
        }
      }
      pos = seg_end;
    }
    const float bias = bias_of(a, r);
    for (int m = 0; m < MR; ++m)
      store_scalar(a.out, a.dtype, m * a.N + r, _mm512_reduce_add_ps(_mm512_add_ps(even[m], odd[m])) + bias);
  }
}

void rows_f32(const Gemm4bitArgs& a, int64_t r0, int64_t r1, int slot) {
  float* tile = a.tiles + slot * a.part_floats;
  for (int64_t r = r0; r < r1; r += kTileRows) {
    const int64_t rows = r1 - r < kTileRows ? r1 - r : kTileRows;
    dequantize_tile_f32(a, r, rows, tile);
    switch (rows) {
      case 4: tile_rows<4>(a, tile, r); break;
      case 3: tile_rows<3>(a, tile, r); break;
      case 2: tile_rows<2>(a, tile, r); break;
      default: tile_rows<1>(a, tile, r); break;
    }
  }
}
#elif defined(KBIT_ISA_AVX2)
// K % 32 == 0 (every 32-element chunk lies in one block). Activations are converted to float32 once,
// each 16 elements stored as their 8 even then 8 odd elements, the order in which the high and low
// nibbles of 8 packed bytes come out of vpmovzxbd: weights need no shuffle back to element order.
// Weights are looked up in the block's 16-entry table (rounded to A's dtype), two vpermps + blend on
// bit 3. M <= kDirectMaxM: every chunk is looked up into registers and used by all rows at once.
// Larger M: tiles of kTileRows weight rows are dequantized into a per-thread float32 buffer and
// multiplied by a 3 x 4 register-blocked FMA kernel (12 accumulators of 8 partial dot products).
constexpr int64_t kDirectMaxM = 4;
constexpr int kMr = 3;

// Per 16 elements: 8 even, then 8 odd (see above).
void fill_activations(const Gemm4bitArgs& a) {
  const __m256i even_first = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  for (int64_t m = 0; m < a.M; ++m) {
    for (int64_t c = 0; c < a.K; c += 16) {
      const int64_t at = m * a.K + c;
      const __m256 v0 = _mm256_permutevar8x32_ps(load8(a.A, a.dtype, at), even_first);      // e0..e6 | e1..e7
      const __m256 v1 = _mm256_permutevar8x32_ps(load8(a.A, a.dtype, at + 8), even_first);  // e8..e14 | e9..e15
      _mm256_store_ps(a.act + at, _mm256_permute2f128_ps(v0, v1, 0x20));
      _mm256_store_ps(a.act + at + 8, _mm256_permute2f128_ps(v0, v1, 0x31));
    }
  }
}

// The 16-entry weight table of one block, rounded to A's dtype: entries 0..7 and 8..15.
struct Lut16 {
  __m256 lo, hi;
  Lut16(__m256 code_lo, __m256 code_hi, float scale, int32_t dtype) {
    const __m256 s = _mm256_set1_ps(scale);
    lo = round8(_mm256_mul_ps(code_lo, s), dtype);
    hi = round8(_mm256_mul_ps(code_hi, s), dtype);
  }
  static __m256 round8(__m256 v, int32_t dtype) {
    if (dtype == KBIT_CPU_BF16) return bf16x8_to_f32(f32x8_to_bf16(v));
    if (dtype == KBIT_CPU_F16) return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return v;
  }
  // vpermps reads bits 2:0 of an index; bit 3 (moved to the sign bit) picks the upper half.
  __m256 operator()(__m256i idx) const {
    const __m256 upper = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), upper);
  }
};

// The 32 weights of packed bytes p[0..15] as four vectors in activation order: w[0] even and w[1] odd
// elements of bytes 0..7, w[2] and w[3] those of bytes 8..15.
inline void decode32(const uint8_t* p, const Lut16& lut, __m256 w[4]) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i v0 = _mm256_cvtepu8_epi32(bytes), v1 = _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8));
  const __m256i low4 = _mm256_set1_epi32(0x0F);
  w[0] = lut(_mm256_srli_epi32(v0, 4));
  w[1] = lut(_mm256_and_si256(v0, low4));
  w[2] = lut(_mm256_srli_epi32(v1, 4));
  w[3] = lut(_mm256_and_si256(v1, low4));
}

inline float reduce8(__m256 v) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1)));
}

// Small M: each chunk's weights go from the lookup straight into the FMAs of all MR rows (two
// accumulators per row, so that no row waits on one FMA chain).
template <int MR>
void rows_direct(const Gemm4bitArgs& a, int64_t r0, int64_t r1) {
  const __m256 code_lo = _mm256_loadu_ps(a.code), code_hi = _mm256_loadu_ps(a.code + 8);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t row = r * a.K;
    __m256 acc0[MR], acc1[MR];
    for (int m = 0; m < MR; ++m) acc0[m] = acc1[m] = _mm256_setzero_ps();
    for (int64_t pos = row, b = row / a.blocksize; pos < row + a.K; ++b) {  // b: block of pos
      const int64_t seg_end = (b + 1) * a.blocksize < row + a.K ? (b + 1) * a.blocksize : row + a.K;
      const Lut16 lut(code_lo, code_hi, a.absmax[b], a.dtype);
      for (int64_t i = pos; i < seg_end; i += kChunk) {
        __m256 w[4];
        decode32(a.B + (i >> 1), lut, w);
        const float* x = a.act + (i - row);
        for (int m = 0; m < MR; ++m) {
          acc0[m] = _mm256_fmadd_ps(w[0], _mm256_load_ps(x + m * a.K), acc0[m]);
          acc1[m] = _mm256_fmadd_ps(w[1], _mm256_load_ps(x + m * a.K + 8), acc1[m]);
          acc0[m] = _mm256_fmadd_ps(w[2], _mm256_load_ps(x + m * a.K + 16), acc0[m]);
          acc1[m] = _mm256_fmadd_ps(w[3], _mm256_load_ps(x + m * a.K + 24), acc1[m]);
        }
      }
      pos = seg_end;
    }
    const float bias = bias_of(a, r);
    for (int m = 0; m < MR; ++m) store_scalar(a.out, a.dtype, m * a.N + r, reduce8(_mm256_add_ps(acc0[m], acc1[m])) + bias);
  }
}

// Tile of `rows` weight rows from r0, float32 in activation order (row stride K + 16).
void dequantize_tile(const Gemm4bitArgs& a, int64_t r0, int64_t rows, float* tile) {
  const __m256 code_lo = _mm256_loadu_ps(a.code), code_hi = _mm256_loadu_ps(a.code + 8);
  for (int64_t t = 0; t < rows; ++t) {
    const int64_t row = (r0 + t) * a.K;
    float* w = tile + t * (a.K + 16);
    for (int64_t pos = row, b = row / a.blocksize; pos < row + a.K; ++b) {  // b: block of pos
      const int64_t seg_end = (b + 1) * a.blocksize < row + a.K ? (b + 1) * a.blocksize : row + a.K;
      const Lut16 lut(code_lo, code_hi, a.absmax[b], a.dtype);
      for (int64_t i = pos; i < seg_end; i += kChunk) {
        __m256 v[4];
        decode32(a.B + (i >> 1), lut, v);
        for (int q = 0; q < 4; ++q) _mm256_store_ps(w + (i - row) + 8 * q, v[q]);
      }
      pos = seg_end;
    }
  }
}

// Activation rows m0.. m0 + MR against tile rows 0.. NR (from weight row r0): MR x NR accumulators;
// the MR activation vectors of a step stay in registers and each weight vector is loaded once.
template <int MR, int NR>
void micro_f32(const Gemm4bitArgs& a, const float* tile, int64_t m0, int64_t r0) {
  __m256 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm256_setzero_ps();
  const int64_t stride = a.K + 16;
  const float* x = a.act + m0 * a.K;
  for (int64_t k = 0; k < a.K; k += 8) {
    __m256 xv[MR];
    for (int m = 0; m < MR; ++m) xv[m] = _mm256_load_ps(x + m * a.K + k);
    for (int r = 0; r < NR; ++r) {
      const __m256 w = _mm256_load_ps(tile + r * stride + k);
      for (int m = 0; m < MR; ++m) acc[m][r] = _mm256_fmadd_ps(xv[m], w, acc[m][r]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r)
      store_scalar(a.out, a.dtype, (m0 + m) * a.N + r0 + r, reduce8(acc[m][r]) + bias_of(a, r0 + r));
}

template <int NR>
void tile_rows(const Gemm4bitArgs& a, const float* tile, int64_t r0) {
  int64_t m = 0;
  for (; m + kMr <= a.M; m += kMr) micro_f32<kMr, NR>(a, tile, m, r0);
  if (a.M - m == 2) micro_f32<2, NR>(a, tile, m, r0);
  if (a.M - m == 1) micro_f32<1, NR>(a, tile, m, r0);
}

void rows_tiled(const Gemm4bitArgs& a, int64_t r0, int64_t r1, int slot) {
  float* tile = a.tiles + slot * a.part_floats;
  for (int64_t r = r0; r < r1; r += kTileRows) {
    const int64_t rows = r1 - r < kTileRows ? r1 - r : kTileRows;
    dequantize_tile(a, r, rows, tile);
    switch (rows) {
      case 4: tile_rows<4>(a, tile, r); break;
      case 3: tile_rows<3>(a, tile, r); break;
      case 2: tile_rows<2>(a, tile, r); break;
      default: tile_rows<1>(a, tile, r); break;
    }
  }
}
#endif

}  // namespace

void gemm_4bit(const Gemm4bitArgs& a) {
  const int64_t min_rows = kMinMacsPerThread / (a.K * a.M > 0 ? a.K * a.M : 1) + 1;
#if defined(KBIT_ISA_AVX512)
  if (a.K % kChunk == 0 && a.M <= kDirectMaxM) {
    fill_activations(a);
    parallel_for(a.N, 1, min_rows, a.threads, [&](int64_t r0, int64_t r1, int, int) {
      switch (a.M) {
        case 1: rows_direct<1>(a, r0, r1); break;
        case 2: rows_direct<2>(a, r0, r1); break;
        case 3: rows_direct<3>(a, r0, r1); break;
        case 4: rows_direct<4>(a, r0, r1); break;
        case 5: rows_direct<5>(a, r0, r1); break;
        case 6: rows_direct<6>(a, r0, r1); break;
        case 7: rows_direct<7>(a, r0, r1); break;
        default: rows_direct<8>(a, r0, r1); break;
      }
    });
    return;
  }
  if (bf16_tiles(a.dtype, a.M, a.K)) {
    parallel_for(a.N, kBf16TileRows, min_rows, a.threads, [&](int64_t r0, int64_t r1, int, int slot) { rows_bf16(a, r0, r1, slot); });
    return;
  }
  if (a.K % kChunk == 0) {
    fill_activations(a);
    parallel_for(a.N, kTileRows, min_rows, a.threads, [&](int64_t r0, int64_t r1, int, int slot) { rows_f32(a, r0, r1, slot); });
    return;
  }
#elif defined(KBIT_ISA_AVX2)
  if (a.K % kChunk == 0) {
    fill_activations(a);
    if (a.M <= kDirectMaxM) {
      parallel_for(a.N, 1, min_rows, a.threads, [&](int64_t r0, int64_t r1, int, int) {
        switch (a.M) {
          case 1: rows_direct<1>(a, r0, r1); break;
          case 2: rows_direct<2>(a, r0, r1); break;
          case 3: rows_direct<3>(a, r0, r1); break;
          default: rows_direct<4>(a, r0, r1); break;
        }
      });
    } else {
      parallel_for(a.N, kTileRows, min_rows, a.threads,
                   [&](int64_t r0, int64_t r1, int, int slot) { rows_tiled(a, r0, r1, slot); });
    }
    return;
  }
#endif
  for (int64_t m = 0; m < a.M; ++m) to_f32(a.A, a.dtype, m * a.K, a.K, a.act + m * a.K);
  parallel_for(a.N, 1, min_rows, a.threads, [&](int64_t r0, int64_t r1, int, int slot) { rows_portable(a, r0, r1, slot); });
}

}  // namespace KBIT_NS
}  // namespace kbit_cpu

#if defined(KBIT_ISA_SCALAR)
#include <memory>

#include "status.h"

KBIT_DECLARE_ISAS(void gemm_4bit(const Gemm4bitArgs& a))

namespace {
float* aligned64(std::unique_ptr<float[]>& storage, int64_t count) {
  storage.reset(new float[count + 16]);
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(storage.get()) + 63) & ~uintptr_t{63});
}
}  // namespace

extern "C" int32_t kbit_cpu_gemm_4bit(const void* A, int32_t dtype, int64_t M, const uint8_t* B, int64_t N, int64_t K,
                                      const float* absmax, int32_t blocksize, int32_t quant_type, const void* bias,
                                      const uint8_t* absmax_8bit, const float* absmax_code, float absmax_offset,
                                      void* out, int32_t num_threads) {
  using namespace kbit_cpu;
  return guarded("gemm_4bit", [&] {
    static const float kNf4[16] = KBIT_NF4_CODE_INIT;
    static const float kFp4[16] = KBIT_FP4_CODE_INIT;
    require_dtype(dtype, "A");
    require_threads(num_threads);
    require(M >= 0 && N >= 0 && K >= 0, "M, N and K must be >= 0");
    require(blocksize >= KBIT_FOURBIT_MIN_BLOCKSIZE && blocksize <= KBIT_FOURBIT_MAX_BLOCKSIZE &&
                (blocksize & (blocksize - 1)) == 0,
            "blocksize must be a power of two in [32, 4096]");
    require(quant_type == KBIT_CPU_NF4 || quant_type == KBIT_CPU_FP4, "quant_type must be KBIT_CPU_NF4 or KBIT_CPU_FP4");
    if (M == 0 || N == 0) return;
    require(A != nullptr && out != nullptr, "A and out must not be NULL");
    if (K == 0) {
      for (int64_t i = 0; i < M * N; ++i)
        isa_scalar::store_scalar(out, dtype, i, bias != nullptr ? isa_scalar::load_scalar(bias, dtype, i % N) : 0.0f);
      return;
    }
    require(B != nullptr && absmax != nullptr, "B and absmax must not be NULL");
    const int64_t nb = (N * K + blocksize - 1) / blocksize;
    std::unique_ptr<float[]> denested_storage, act_storage, tile_storage;
    const float* scales = absmax;
    if (absmax_8bit != nullptr) {
      require(absmax_code != nullptr, "absmax_code must not be NULL with absmax_8bit");
      float* d = aligned64(denested_storage, nb);
      for (int64_t i = 0; i < nb; ++i) d[i] = absmax_code[absmax_8bit[i]] * absmax[i / KBIT_NESTED_BLOCKSIZE] + absmax_offset;
      scales = d;
    }
    float* act = aligned64(act_storage, M * K);
    const int32_t threads = num_threads > 0 ? num_threads : 1;
    const int64_t part_floats = scratch_floats_per_part(M, K);
    float* tiles = aligned64(tile_storage, threads * part_floats);
    const Gemm4bitArgs args{A, dtype, M, B, N, K, blocksize, scales, quant_type == KBIT_CPU_NF4 ? kNf4 : kFp4,
                            bias, out, act, tiles, part_floats, threads};
    // Where 512-bit operations run as two halves (prefer_avx2_kernels), only the bf16 dot-product
    // tiles are faster in the avx512 build; the float32 forms are faster in the avx2 build (Zen 4,
    // 4096x4096: M = 1 0.30 against 0.48 ms, M = 3 0.75 against 1.46 ms; M = 32 bf16: 2.9 against
    // 6.8 ms the other way).
    if (bf16_tiles(dtype, M, K)) {
      KBIT_DISPATCH(gemm_4bit(args));
    } else {
      KBIT_DISPATCH_SPLIT512(gemm_4bit(args));
    }
  });
}
#endif
