// dequantize_4bit.cpp — kbit::dequantize_4bit: out[i] = code[q_i] * absmax[i / blocksize], rounded once.
//
// Exact: each block scales the 16-entry code table once (the same float32 products the reference
// forms), and every element is a table lookup of that block, converted to the output dtype with
// torch's rounding. avx512: 32 elements per step — nibbles are interleaved into element order at byte
// level (psrlw + punpck), widened with vpmovzxbd and looked up with vpermps. avx2: f16 / bf16 outputs
// read the rounded 16-bit values with two vpshufb (low and high byte tables) per 32 elements; float32
// 8 lanes, the 16-entry table as two vpermps + blend on bit 3. neon: vqtbl4q on the table's bytes.
// scalar: portable.
#include "convert.h"
#include "dispatch.h"
#include "kbit_cpu.h"
#include "parallel.h"

namespace kbit_cpu {

struct Dequantize4bitArgs {
  const uint8_t* packed;
  const float* absmax;
  int64_t n;
  int64_t blocksize;
  const float* code;  // 16 floats
  void* out;
  int32_t out_dtype;
  int32_t threads;
};

namespace KBIT_NS {
namespace {

constexpr int64_t kMinElementsPerThread = 1 << 16;

inline uint8_t nibble(const uint8_t* packed, int64_t i) {
  const uint8_t byte = packed[i >> 1];
  return (i & 1) ? (byte & 0x0F) : (byte >> 4);
}

void dequantize_span_scalar(const Dequantize4bitArgs& a, const float* lut, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) store_scalar(a.out, a.out_dtype, i, lut[nibble(a.packed, i)]);
}

#if defined(KBIT_ISA_AVX512)
void dequantize_blocks(const Dequantize4bitArgs& a, int64_t b0, int64_t b1) {
  const __m512 code = _mm512_loadu_ps(a.code);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * a.blocksize;
    const int64_t end = begin + a.blocksize < a.n ? begin + a.blocksize : a.n;
    const __m512 lut = _mm512_mul_ps(code, _mm512_set1_ps(a.absmax[b]));
    int64_t i = begin;
    for (; i + 32 <= end; i += 32) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.packed + (i >> 1)));
      // The low 4 bits of each byte of `hi` are the high nibbles; vpermps reads only bits 3:0 of an index.
      const __m128i hi = _mm_srli_epi16(bytes, 4);
      const __m128i e0 = _mm_unpacklo_epi8(hi, bytes);  // elements 0..15
      const __m128i e1 = _mm_unpackhi_epi8(hi, bytes);  // elements 16..31
      store16(a.out, a.out_dtype, i, _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(e0), lut));
      store16(a.out, a.out_dtype, i + 16, _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(e1), lut));
    }
    if (i < end) {
      alignas(64) float l[16];
      _mm512_store_ps(l, lut);
      dequantize_span_scalar(a, l, i, end);
    }
  }
}
#elif defined(KBIT_ISA_AVX2)
// 16-bit outputs: the block's 16 values are rounded to the output dtype once and split into a table of
// their low bytes and one of their high bytes; each 32 elements are then two vpshufb lookups of the
// 32 nibbles (brought into element order at byte level) and two byte interleaves, with no per-element
// conversion. 16 packed bytes are broadcast to both 128-bit lanes and kSplitBytes picks bytes 0..7
// (elements 0..15) for the low lane and 8..15 (elements 16..31) for the high lane, each byte twice:
// the even copy keeps the high nibble (element 2i), the odd copy the low nibble (element 2i + 1).
inline __m128i to_16bit(__m256 v, int32_t dtype) {
  return dtype == KBIT_CPU_BF16 ? f32x8_to_bf16(v) : _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

void dequantize_blocks_16bit(const Dequantize4bitArgs& a, int64_t b0, int64_t b1) {
  const __m256 code_lo = _mm256_loadu_ps(a.code), code_hi = _mm256_loadu_ps(a.code + 8);
  const __m256i split = _mm256_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7,
                                         8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
  const __m256i low4 = _mm256_set1_epi8(0x0F), low_byte = _mm256_set1_epi16(0x00FF);
  const __m256i odd_bytes = _mm256_set1_epi16(static_cast<int16_t>(0xFF00));
  uint16_t* out = static_cast<uint16_t*>(a.out);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * a.blocksize;
    const int64_t end = begin + a.blocksize < a.n ? begin + a.blocksize : a.n;
    const __m256 scale = _mm256_set1_ps(a.absmax[b]);
    const __m256i v = _mm256_set_m128i(to_16bit(_mm256_mul_ps(code_hi, scale), a.out_dtype),
                                       to_16bit(_mm256_mul_ps(code_lo, scale), a.out_dtype));  // 16 x 16 bits
    // low bytes of entries 0..15 | high bytes of entries 0..15, then each table in both lanes
    const __m256i bytes = _mm256_packus_epi16(_mm256_and_si256(v, low_byte), _mm256_srli_epi16(v, 8));
    const __m256i packed_tables = _mm256_permute4x64_epi64(bytes, _MM_SHUFFLE(3, 1, 2, 0));
    const __m256i table_lo = _mm256_permute2x128_si256(packed_tables, packed_tables, 0x00);
    const __m256i table_hi = _mm256_permute2x128_si256(packed_tables, packed_tables, 0x11);
    int64_t i = begin;
    for (; i + 32 <= end; i += 32) {
      const __m256i twice = _mm256_shuffle_epi8(
          _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.packed + (i >> 1)))), split);
      // even byte positions: high nibble; odd positions: low nibble
      const __m256i idx = _mm256_and_si256(_mm256_blendv_epi8(_mm256_srli_epi16(twice, 4), twice, odd_bytes), low4);
      const __m256i lo = _mm256_shuffle_epi8(table_lo, idx), hi = _mm256_shuffle_epi8(table_hi, idx);
      const __m256i w0 = _mm256_unpacklo_epi8(lo, hi);  // elements 0..7 | 16..23
      const __m256i w1 = _mm256_unpackhi_epi8(lo, hi);  // elements 8..15 | 24..31
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_permute2x128_si256(w0, w1, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i + 16), _mm256_permute2x128_si256(w0, w1, 0x31));
    }
    if (i < end) {
      alignas(32) float l[16];
      _mm256_store_ps(l, _mm256_mul_ps(code_lo, scale));
      _mm256_store_ps(l + 8, _mm256_mul_ps(code_hi, scale));
      dequantize_span_scalar(a, l, i, end);
    }
  }
}

void dequantize_blocks(const Dequantize4bitArgs& a, int64_t b0, int64_t b1) {
  if (a.out_dtype != KBIT_CPU_F32) {
    dequantize_blocks_16bit(a, b0, b1);
    return;
  }
  const __m256 code_lo = _mm256_loadu_ps(a.code), code_hi = _mm256_loadu_ps(a.code + 8);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * a.blocksize;
    const int64_t end = begin + a.blocksize < a.n ? begin + a.blocksize : a.n;
    const __m256 scale = _mm256_set1_ps(a.absmax[b]);
    const __m256 lut_lo = _mm256_mul_ps(code_lo, scale), lut_hi = _mm256_mul_ps(code_hi, scale);
    int64_t i = begin;
    for (; i + 32 <= end; i += 32) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.packed + (i >> 1)));
      const __m128i hi = _mm_srli_epi16(bytes, 4);
      const __m128i e[2] = {_mm_unpacklo_epi8(hi, bytes), _mm_unpackhi_epi8(hi, bytes)};
      for (int h = 0; h < 2; ++h) {
        for (int q = 0; q < 2; ++q) {
          const __m256i idx = _mm256_cvtepu8_epi32(q ? _mm_srli_si128(e[h], 8) : e[h]);
          // vpermps uses bits 2:0; bit 3 (moved to the sign bit) picks the upper half of the table.
          const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
          const __m256 v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lut_lo, idx), _mm256_permutevar8x32_ps(lut_hi, idx), sel);
          store8(a.out, a.out_dtype, i + 16 * h + 8 * q, v);
        }
      }
    }
    if (i < end) {
      alignas(32) float l[16];
      _mm256_store_ps(l, lut_lo);
      _mm256_store_ps(l + 8, lut_hi);
      dequantize_span_scalar(a, l, i, end);
    }
  }
}
#elif defined(KBIT_ISA_NEON)
void dequantize_blocks(const Dequantize4bitArgs& a, int64_t b0, int64_t b1) {
  const float32x4_t c0 = vld1q_f32(a.code), c1 = vld1q_f32(a.code + 4), c2 = vld1q_f32(a.code + 8),
                    c3 = vld1q_f32(a.code + 12);
  // Byte offsets 0..3 of a float inside the table, added to 4 * index.
  const uint8x16_t byte_of = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};
  const uint8x16_t rep[4] = {{0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3},
                             {4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7},
                             {8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11},
                             {12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15}};
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * a.blocksize;
    const int64_t end = begin + a.blocksize < a.n ? begin + a.blocksize : a.n;
    const float s = a.absmax[b];
    uint8x16x4_t lut;
    lut.val[0] = vreinterpretq_u8_f32(vmulq_n_f32(c0, s));
    lut.val[1] = vreinterpretq_u8_f32(vmulq_n_f32(c1, s));
    lut.val[2] = vreinterpretq_u8_f32(vmulq_n_f32(c2, s));
    lut.val[3] = vreinterpretq_u8_f32(vmulq_n_f32(c3, s));
    int64_t i = begin;
    for (; i + 32 <= end; i += 32) {
      const uint8x16_t bytes = vld1q_u8(a.packed + (i >> 1));
      const uint8x16x2_t e = vzipq_u8(vshrq_n_u8(bytes, 4), vandq_u8(bytes, vdupq_n_u8(0x0F)));  // element order
      for (int h = 0; h < 2; ++h) {
        for (int q = 0; q < 4; ++q) {
          // elements 4q..4q+3 of this half, each repeated 4 times -> byte offsets 4 * index + {0,1,2,3}
          const uint8x16_t idx = vaddq_u8(vshlq_n_u8(vqtbl1q_u8(e.val[h], rep[q]), 2), byte_of);
          store4(a.out, a.out_dtype, i + 16 * h + 4 * q, vreinterpretq_f32_u8(vqtbl4q_u8(lut, idx)));
        }
      }
    }
    if (i < end) {
      float l[16];
      vst1q_u8(reinterpret_cast<uint8_t*>(l), lut.val[0]);
      vst1q_u8(reinterpret_cast<uint8_t*>(l + 4), lut.val[1]);
      vst1q_u8(reinterpret_cast<uint8_t*>(l + 8), lut.val[2]);
      vst1q_u8(reinterpret_cast<uint8_t*>(l + 12), lut.val[3]);
      dequantize_span_scalar(a, l, i, end);
    }
  }
}
#else
void dequantize_blocks(const Dequantize4bitArgs& a, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * a.blocksize;
    const int64_t end = begin + a.blocksize < a.n ? begin + a.blocksize : a.n;
    float lut[16];
    for (int j = 0; j < 16; ++j) lut[j] = a.code[j] * a.absmax[b];
    dequantize_span_scalar(a, lut, begin, end);
  }
}
#endif

}  // namespace

void dequantize_4bit(const Dequantize4bitArgs& a) {
  const int64_t nb = (a.n + a.blocksize - 1) / a.blocksize;
  const int64_t min_blocks = kMinElementsPerThread / a.blocksize + 1;
  parallel_for(nb, 1, min_blocks, a.threads, [&](int64_t b0, int64_t b1, int, int) { dequantize_blocks(a, b0, b1); });
}

}  // namespace KBIT_NS
}  // namespace kbit_cpu

#if defined(KBIT_ISA_SCALAR)
#include "status.h"

KBIT_DECLARE_ISAS(void dequantize_4bit(const Dequantize4bitArgs& a))

extern "C" int32_t kbit_cpu_dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int32_t blocksize,
                                            int32_t quant_type, void* out, int32_t out_dtype, int32_t num_threads) {
  using namespace kbit_cpu;
  return guarded("dequantize_4bit", [&] {
    static const float kNf4[16] = KBIT_NF4_CODE_INIT;
    static const float kFp4[16] = KBIT_FP4_CODE_INIT;
    require_dtype(out_dtype, "out");
    require_threads(num_threads);
    require(n >= 0, "n must be >= 0");
    require(blocksize >= KBIT_FOURBIT_MIN_BLOCKSIZE && blocksize <= KBIT_FOURBIT_MAX_BLOCKSIZE &&
                (blocksize & (blocksize - 1)) == 0,
            "blocksize must be a power of two in [32, 4096]");
    require(quant_type == KBIT_CPU_NF4 || quant_type == KBIT_CPU_FP4, "quant_type must be KBIT_CPU_NF4 or KBIT_CPU_FP4");
    if (n == 0) return;
    require(packed != nullptr && absmax != nullptr && out != nullptr, "packed, absmax and out must not be NULL");
    const Dequantize4bitArgs args{packed, absmax, n, blocksize, quant_type == KBIT_CPU_NF4 ? kNf4 : kFp4,
                                  out, out_dtype, num_threads};
    KBIT_DISPATCH_SPLIT512(dequantize_4bit(args));
  });
}
#endif
