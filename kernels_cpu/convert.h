// convert.h — float16 / bfloat16 <-> float32 conversions with torch's rounding, scalar and per ISA.
//
// f32 -> bf16 and f32 -> f16 round to nearest even and keep subnormals, as torch's .to() does; a NaN
// becomes bf16 0xFFFF (ATen's vectorized conversion) or the f16 quiet NaN. Everything here is inline
// in the translation unit's ISA namespace (see dispatch.h).
#ifndef KBIT_CPU_CONVERT_H
#define KBIT_CPU_CONVERT_H

#include <cstdint>
#include <cstring>

#include "dispatch.h"
#include "kbit_cpu.h"

#if defined(KBIT_ISA_AVX512) || defined(KBIT_ISA_AVX2)
#include <immintrin.h>
#endif
#if defined(KBIT_ISA_NEON)
#include <arm_neon.h>
#endif

namespace kbit_cpu {
namespace KBIT_NS {

constexpr uint16_t kBf16Nan = 0xFFFF;
constexpr uint16_t kF16QuietNan = 0x7E00;

// Keeps the compiler from re-deriving a shifted copy of `x` from its first value (which costs a move
// and a shift per byte instead of one shift per two bytes) in the table lookups of 8 packed indices.
#define KBIT_OPAQUE(x) __asm__("" : "+r"(x))

inline uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

inline uint16_t f32_to_bf16(float f) {
  if (f != f) return kBf16Nan;
  const uint32_t u = f32_bits(f);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float32
    const float v = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return bits_f32(sign | f32_bits(v));
  }
  if (exp == 0x1F) return bits_f32(sign | 0x7F800000u | (mant << 13));
  return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline uint16_t f32_to_f16(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return sign | kF16QuietNan;
  if (a >= 0x477FF000u) return sign | 0x7C00u;  // >= 65520 rounds to infinity
  if (a < 0x38800000u) {                         // below 2^-14: f16 subnormal (or zero)
    // Adding 0.5 (ulp 2^-24) rounds |f| to a multiple of 2^-24 with round-to-nearest-even.
    const float r = bits_f32(a) + 0.5f;
    return sign | static_cast<uint16_t>(f32_bits(r) - 0x3F000000u);
  }
  return sign | static_cast<uint16_t>((a - 0x38000000u + 0xFFFu + ((a >> 13) & 1u)) >> 13);
}

inline float load_scalar(const void* base, int32_t dtype, int64_t i) {
  switch (dtype) {
    case KBIT_CPU_F16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case KBIT_CPU_BF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

inline void store_scalar(void* base, int32_t dtype, int64_t i, float v) {
  switch (dtype) {
    case KBIT_CPU_F16: static_cast<uint16_t*>(base)[i] = f32_to_f16(v); break;
    case KBIT_CPU_BF16: static_cast<uint16_t*>(base)[i] = f32_to_bf16(v); break;
    default: static_cast<float*>(base)[i] = v; break;
  }
}

#if defined(KBIT_ISA_AVX512)
inline __m512 bf16x16_to_f32(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline __m256i f32x16_to_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), r, _mm512_set1_epi32(kBf16Nan));
  return _mm512_cvtepi32_epi16(r);
}

inline __m512 load16(const void* base, int32_t dtype, int64_t i) {
  switch (dtype) {
    case KBIT_CPU_F16:
      return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + i)));
    case KBIT_CPU_BF16:
      return bf16x16_to_f32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + i)));
    default: return _mm512_loadu_ps(static_cast<const float*>(base) + i);
  }
}

// Lanes outside `mask` read as 0 and touch no memory.
inline __m512 load16_masked(const void* base, int32_t dtype, int64_t i, __mmask16 mask) {
  switch (dtype) {
    case KBIT_CPU_F16:
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + i));
    case KBIT_CPU_BF16: return bf16x16_to_f32(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + i));
    default: return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(base) + i);
  }
}

inline void store16(void* base, int32_t dtype, int64_t i, __m512 v) {
  switch (dtype) {
    case KBIT_CPU_F16:
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(base) + i),
                          _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    case KBIT_CPU_BF16:
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(base) + i), f32x16_to_bf16(v));
      break;
    default: _mm512_storeu_ps(static_cast<float*>(base) + i, v); break;
  }
}

inline void store16_masked(void* base, int32_t dtype, int64_t i, __m512 v, __mmask16 mask) {
  switch (dtype) {
    case KBIT_CPU_F16:
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(base) + i, mask,
                               _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    case KBIT_CPU_BF16: _mm256_mask_storeu_epi16(static_cast<uint16_t*>(base) + i, mask, f32x16_to_bf16(v)); break;
    default: _mm512_mask_storeu_ps(static_cast<float*>(base) + i, mask, v); break;
  }
}

inline __mmask16 tail_mask16(int64_t count) {
  return count >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << count) - 1u);
}
// Sums of the 16 lanes of each of v0..v7, in order, as the 8 lanes of the result: lane halves folded
// pairwise, then within 128-bit lanes; about 3 instructions per sum where a horizontal reduction per
// vector takes 8. The shuffles move bits only; `add` is the lane-wise sum (float or wrapping int32).
// (Vectors by value: an array reference would keep the callers' accumulators in memory.)
template <class Add>
inline __m256i reduce_add_8x16(Add add, __m512i v0, __m512i v1, __m512i v2, __m512i v3, __m512i v4, __m512i v5,
                               __m512i v6, __m512i v7) {
  // fold: lanes [a L0+L2, a L1+L3, b L0+L2, b L1+L3]
  auto fold = [&add](__m512i a, __m512i b) { return add(_mm512_shuffle_i32x4(a, b, 0x44), _mm512_shuffle_i32x4(a, b, 0xEE)); };
  const __m512i h0 = fold(v0, v1), h1 = fold(v2, v3), h2 = fold(v4, v5), h3 = fold(v6, v7);
  // q0: 128-bit lane L holds 4 partial sums of v[L]; q1 of v[4 + L]
  const __m512i q0 = add(_mm512_shuffle_i32x4(h0, h1, 0x88), _mm512_shuffle_i32x4(h0, h1, 0xDD));
  const __m512i q1 = add(_mm512_shuffle_i32x4(h2, h3, 0x88), _mm512_shuffle_i32x4(h2, h3, 0xDD));
  const __m512i t = add(_mm512_unpacklo_epi32(q0, q1), _mm512_unpackhi_epi32(q0, q1));
  const __m512i r = add(t, _mm512_shuffle_epi32(t, _MM_PERM_BADC));  // lane L: v[L], v[4+L], ...
  return _mm512_castsi512_si256(_mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0), r));
}

inline __m256i reduce_add_8x16(__m512i v0, __m512i v1, __m512i v2, __m512i v3, __m512i v4, __m512i v5, __m512i v6,
                               __m512i v7) {
  return reduce_add_8x16([](__m512i a, __m512i b) { return _mm512_add_epi32(a, b); }, v0, v1, v2, v3, v4, v5, v6, v7);
}

inline __m256 reduce_add_8x16(__m512 v0, __m512 v1, __m512 v2, __m512 v3, __m512 v4, __m512 v5, __m512 v6, __m512 v7) {
  auto add = [](__m512i a, __m512i b) {
    return _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b)));
  };
  return _mm256_castsi256_ps(reduce_add_8x16(add, _mm512_castps_si512(v0), _mm512_castps_si512(v1), _mm512_castps_si512(v2),
                                             _mm512_castps_si512(v3), _mm512_castps_si512(v4), _mm512_castps_si512(v5),
                                             _mm512_castps_si512(v6), _mm512_castps_si512(v7)));
}
#endif  // KBIT_ISA_AVX512

#if defined(KBIT_ISA_AVX2) || defined(KBIT_ISA_AVX512)  // avx512: for kernels that keep the AVX2 form
inline __m256 bf16x8_to_f32(__m128i h) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline __m128i f32x8_to_bf16(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(kBf16Nan), nan);
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

inline __m256 load8(const void* base, int32_t dtype, int64_t i) {
  switch (dtype) {
    case KBIT_CPU_F16:
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i)));
    case KBIT_CPU_BF16:
      return bf16x8_to_f32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i)));
    default: return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  }
}

inline void store8(void* base, int32_t dtype, int64_t i, __m256 v) {
  switch (dtype) {
    case KBIT_CPU_F16:
      _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(base) + i),
                       _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    case KBIT_CPU_BF16:
      _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(base) + i), f32x8_to_bf16(v));
      break;
    default: _mm256_storeu_ps(static_cast<float*>(base) + i, v); break;
  }
}
#endif  // KBIT_ISA_AVX2 || KBIT_ISA_AVX512

#if defined(KBIT_ISA_NEON)
inline float32x4_t bf16x4_to_f32(uint16x4_t h) { return vreinterpretq_f32_u32(vshll_n_u16(h, 16)); }

inline uint16x4_t f32x4_to_bf16(float32x4_t v) {
  const uint32x4_t u = vreinterpretq_u32_f32(v);
  const uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
  uint32x4_t r = vshrq_n_u32(vaddq_u32(vaddq_u32(u, vdupq_n_u32(0x7FFF)), lsb), 16);
  r = vbslq_u32(vceqq_f32(v, v), r, vdupq_n_u32(kBf16Nan));
  return vmovn_u32(r);
}

inline float32x4_t load4(const void* base, int32_t dtype, int64_t i) {
  switch (dtype) {
    case KBIT_CPU_F16: return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(static_cast<const uint16_t*>(base) + i)));
    case KBIT_CPU_BF16: return bf16x4_to_f32(vld1_u16(static_cast<const uint16_t*>(base) + i));
    default: return vld1q_f32(static_cast<const float*>(base) + i);
  }
}

inline void store4(void* base, int32_t dtype, int64_t i, float32x4_t v) {
  switch (dtype) {
    case KBIT_CPU_F16: vst1_u16(static_cast<uint16_t*>(base) + i, vreinterpret_u16_f16(vcvt_f16_f32(v))); break;
    case KBIT_CPU_BF16: vst1_u16(static_cast<uint16_t*>(base) + i, f32x4_to_bf16(v)); break;
    default: vst1q_f32(static_cast<float*>(base) + i, v); break;
  }
}
#endif  // KBIT_ISA_NEON

// dst[0, n) = float32(src[offset, offset + n)).
inline void to_f32(const void* src, int32_t dtype, int64_t offset, int64_t n, float* dst) {
  int64_t i = 0;
#if defined(KBIT_ISA_AVX512)
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load16(src, dtype, offset + i));
  if (i < n) _mm512_mask_storeu_ps(dst + i, tail_mask16(n - i), load16_masked(src, dtype, offset + i, tail_mask16(n - i)));
  return;
#elif defined(KBIT_ISA_AVX2)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8(src, dtype, offset + i));
#elif defined(KBIT_ISA_NEON)
  for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, load4(src, dtype, offset + i));
#endif
  for (; i < n; ++i) dst[i] = load_scalar(src, dtype, offset + i);
}

// dst[offset, offset + n) = src[0, n) rounded to dtype.
inline void from_f32(const float* src, int64_t n, void* dst, int32_t dtype, int64_t offset) {
  int64_t i = 0;
#if defined(KBIT_ISA_AVX512)
  for (; i + 16 <= n; i += 16) store16(dst, dtype, offset + i, _mm512_loadu_ps(src + i));
  if (i < n) store16_masked(dst, dtype, offset + i, _mm512_maskz_loadu_ps(tail_mask16(n - i), src + i), tail_mask16(n - i));
  return;
#elif defined(KBIT_ISA_AVX2)
  for (; i + 8 <= n; i += 8) store8(dst, dtype, offset + i, _mm256_loadu_ps(src + i));
#elif defined(KBIT_ISA_NEON)
  for (; i + 4 <= n; i += 4) store4(dst, dtype, offset + i, vld1q_f32(src + i));
#endif
  for (; i < n; ++i) store_scalar(dst, dtype, offset + i, src[i]);
}

}  // namespace KBIT_NS
}  // namespace kbit_cpu

#endif  // KBIT_CPU_CONVERT_H
