// dequantize_blockwise.cpp — kbit::dequantize_blockwise: out[i] = code[A[i]] * absmax[i / blocksize], exact.
//
// One float32 product per element (the reference's), rounded once to the output dtype; any blocksize.
// avx512: 16 code values per step from a register-held 256-entry table (Lut256), masked at block ends. other ISAs: the portable loop
// (vectorized by the compiler where the ISA has gathers).
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
