// dequantize_blockwise.cpp — kbit::dequantize_blockwise: out[i] = code[A[i]] * absmax[i / blocksize], exact.
//
// One float32 product per element (the reference's), rounded once to the output dtype; any blocksize.
// avx512: 16 code values per step from a register-held 256-entry table (Lut256), masked at block ends.
// avx2: per-block tables of output-dtype values for large blocks with 16-bit outputs, else 8 values per
// step from scalar loads (lookup8). other ISAs: the portable loop (vectorized by the compiler where the
// ISA has gathers).
#include "convert.h"
#include "dispatch.h"
#include "kbit_cpu.h"
#include "nearest_code.h"
#include "parallel.h"

namespace kbit_cpu {

struct DequantizeBlockwiseArgs {
  const uint8_t* A;
  const float* absmax;
  const float* code;  // 256 floats
  int64_t n, blocksize;
  void* out;
  int32_t out_dtype;
  int32_t threads;
};

namespace KBIT_NS {
namespace {

constexpr int64_t kMinElementsPerThread = 1 << 16;
constexpr int64_t kSpan = 256;

#if defined(KBIT_ISA_AVX512)
void dequantize_blocks(const DequantizeBlockwiseArgs& a, int64_t b0, int64_t b1) {
  const Lut256 lut(a.code);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * a.blocksize;
    const int64_t end = begin + a.blocksize < a.n ? begin + a.blocksize : a.n;
    const __m512 s = _mm512_set1_ps(a.absmax[b]);
    int64_t i = begin;
    for (; i + 16 <= end; i += 16) {
      const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.A + i)));
      store16(a.out, a.out_dtype, i, _mm512_mul_ps(lut.lookup(q), s));
    }
    if (i < end) {
      const __mmask16 t = tail_mask16(end - i);
      const __m512i q = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(t, a.A + i));
      store16_masked(a.out, a.out_dtype, i, _mm512_mul_ps(lut.lookup(q), s), t);
    }
  }
}
#elif defined(KBIT_ISA_AVX2)
// Blocks of at least kLutMinBlock elements with a 16-bit output: the block's 256 products are formed
// and rounded to the output dtype once (32 vector steps), then every element is one 16-bit table read
// (no gather, no per-element conversion), 16 of them merged by vpinsrw into one vector store — about
// 0.9 cycles per element, against 1-2 for a loop of scalar 16-bit stores (which varied from run to
// run) and 1.3 for vpgatherdd. Other blocks: 8 code values per step read by lookup8, scaled and
// converted in vectors.
constexpr int64_t kLutMinBlock = 512;

// lut[q[0..15]] (the table reads fold into vpinsrw; joining 2 or 4 reads in a general register and
// inserting 32 or 64 bits at a time measured 15-20% slower).
inline __m256i lookup16(const uint16_t* lut, const uint8_t* q) {
  __m128i lo = _mm_cvtsi32_si128(lut[q[0]]), hi = _mm_cvtsi32_si128(lut[q[8]]);
  lo = _mm_insert_epi16(lo, lut[q[1]], 1);
  hi = _mm_insert_epi16(hi, lut[q[9]], 1);
  lo = _mm_insert_epi16(lo, lut[q[2]], 2);
  hi = _mm_insert_epi16(hi, lut[q[10]], 2);
  lo = _mm_insert_epi16(lo, lut[q[3]], 3);
  hi = _mm_insert_epi16(hi, lut[q[11]], 3);
  lo = _mm_insert_epi16(lo, lut[q[4]], 4);
  hi = _mm_insert_epi16(hi, lut[q[12]], 4);
  lo = _mm_insert_epi16(lo, lut[q[5]], 5);
  hi = _mm_insert_epi16(hi, lut[q[13]], 5);
  lo = _mm_insert_epi16(lo, lut[q[6]], 6);
  hi = _mm_insert_epi16(hi, lut[q[14]], 6);
  lo = _mm_insert_epi16(lo, lut[q[7]], 7);
  hi = _mm_insert_epi16(hi, lut[q[15]], 7);
  return _mm256_set_m128i(hi, lo);
}

void dequantize_blocks(const DequantizeBlockwiseArgs& a, int64_t b0, int64_t b1) {
  alignas(32) uint16_t lut[kPositions];
  uint16_t* out16 = static_cast<uint16_t*>(a.out);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * a.blocksize;
    const int64_t end = begin + a.blocksize < a.n ? begin + a.blocksize : a.n;
    const __m256 s = _mm256_set1_ps(a.absmax[b]);
    int64_t i = begin;
    if (end - begin >= kLutMinBlock && a.out_dtype != KBIT_CPU_F32) {
      for (int j = 0; j < kPositions; j += 8) store8(lut, a.out_dtype, j, _mm256_mul_ps(_mm256_loadu_ps(a.code + j), s));
      for (; i + 16 <= end; i += 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out16 + i), lookup16(lut, a.A + i));
      for (; i < end; ++i) out16[i] = lut[a.A[i]];
      continue;
    }
    for (; i + 8 <= end; i += 8) store8(a.out, a.out_dtype, i, _mm256_mul_ps(lookup8(a.code, a.A + i), s));
    for (; i < end; ++i) store_scalar(a.out, a.out_dtype, i, a.code[a.A[i]] * a.absmax[b]);
  }
}
#else
void dequantize_blocks(const DequantizeBlockwiseArgs& a, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * a.blocksize;
    const int64_t end = begin + a.blocksize < a.n ? begin + a.blocksize : a.n;
    const float scale = a.absmax[b];
    float buf[kSpan];
    for (int64_t i = begin; i < end; i += kSpan) {
      const int64_t len = end - i < kSpan ? end - i : kSpan;
      for (int64_t j = 0; j < len; ++j) buf[j] = a.code[a.A[i + j]] * scale;
      from_f32(buf, len, a.out, a.out_dtype, i);
    }
  }
}
#endif

}  // namespace

void dequantize_blockwise(const DequantizeBlockwiseArgs& a) {
  const int64_t nb = (a.n + a.blocksize - 1) / a.blocksize;
  const int64_t min_blocks = kMinElementsPerThread / a.blocksize + 1;
  parallel_for(nb, 1, min_blocks, a.threads, [&](int64_t b0, int64_t b1, int, int) { dequantize_blocks(a, b0, b1); });
}

}  // namespace KBIT_NS
}  // namespace kbit_cpu

#if defined(KBIT_ISA_SCALAR)
#include "status.h"

KBIT_DECLARE_ISAS(void dequantize_blockwise(const DequantizeBlockwiseArgs& a))

extern "C" int32_t kbit_cpu_dequantize_blockwise(const uint8_t* A, const float* absmax, const float* code, int64_t n,
                                                 int64_t blocksize, void* out, int32_t out_dtype, int32_t num_threads) {
  using namespace kbit_cpu;
  return guarded("dequantize_blockwise", [&] {
    require_dtype(out_dtype, "out");
    require_threads(num_threads);
    require(n >= 0, "n must be >= 0");
    require(blocksize > 0, "blocksize must be > 0");
    if (n == 0) return;
    require(A != nullptr && absmax != nullptr && code != nullptr && out != nullptr,
            "A, absmax, code and out must not be NULL");
    const DequantizeBlockwiseArgs args{A, absmax, code, n, blocksize, out, out_dtype, num_threads};
    KBIT_DISPATCH(dequantize_blockwise(args));
  });
}
#endif
