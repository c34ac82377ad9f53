// int8_linear_matmul.cpp — kbit::int8_linear_matmul: out[M, N] = A[M, K] @ B[N, K].T, exact int32.
//
// Accumulation wraps modulo 2^32 like an int32 accumulator (the reference sums exact partial products
// in int32). Threads split N. Dot formulation, 4 x 4 register blocks.
// avx512 + VNNI: vpdpbusd on (A + 128) as unsigned bytes, corrected by 128 * sum_k B[n, k].
// avx512 (BW): sign-extend to 16 bits and vpmaddwd. avx2: the same with 256-bit vectors.
// neon / scalar: portable integer loops.
#include "dispatch.h"
#include "kbit_cpu.h"
#include "parallel.h"

#if defined(KBIT_ISA_AVX512) || defined(KBIT_ISA_AVX2)
#include <immintrin.h>
#endif

namespace kbit_cpu {

struct Int8LinearMatmulArgs {
  const int8_t* A;
  const int8_t* B;
  int64_t M, N, K;
  int32_t* out;
  uint8_t* a_biased;  // scratch for VNNI: M * K bytes (A + 128)
  int32_t threads;
};

namespace KBIT_NS {
namespace {

constexpr int64_t kMinMacsPerThread = 1 << 18;
constexpr int64_t kBlock = 4;

// Portable dot product with wrap-around (unsigned arithmetic has defined overflow).
inline int32_t dot_scalar(const int8_t* a, const int8_t* b, int64_t K) {
  uint32_t acc = 0;
  for (int64_t k = 0; k < K; ++k) acc += static_cast<uint32_t>(static_cast<int32_t>(a[k]) * static_cast<int32_t>(b[k]));
  return static_cast<int32_t>(acc);
}

#if defined(KBIT_ISA_AVX512)
template <int MR, int NR>
KBIT_TARGET_AVX512_VNNI void micro_vnni(const Int8LinearMatmulArgs& a, int64_t m0, int64_t n0, const int32_t* bsum) {
  __m512i acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_si512();
  for (int64_t k = 0; k < a.K; k += 64) {
    const __mmask64 t = a.K - k >= 64 ? ~__mmask64{0} : ((__mmask64{1} << (a.K - k)) - 1);
    __m512i b[NR];
    for (int r = 0; r < NR; ++r) b[r] = _mm512_maskz_loadu_epi8(t, a.B + (n0 + r) * a.K + k);
    for (int m = 0; m < MR; ++m) {
      const __m512i x = _mm512_maskz_loadu_epi8(t, a.a_biased + (m0 + m) * a.K + k);
      for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_dpbusd_epi32(acc[m][r], x, b[r]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) {
      const uint32_t sum = static_cast<uint32_t>(_mm512_reduce_add_epi32(acc[m][r]));
      a.out[(m0 + m) * a.N + n0 + r] = static_cast<int32_t>(sum - 128u * static_cast<uint32_t>(bsum[r]));
    }
}

template <int MR, int NR>
void micro_madd(const Int8LinearMatmulArgs& a, int64_t m0, int64_t n0, const int32_t*) {
  __m512i acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_si512();
  for (int64_t k = 0; k < a.K; k += 32) {
    const __mmask32 t = a.K - k >= 32 ? ~__mmask32{0} : ((__mmask32{1} << (a.K - k)) - 1);
    __m512i b[NR];
    for (int r = 0; r < NR; ++r) b[r] = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(t, a.B + (n0 + r) * a.K + k));
    for (int m = 0; m < MR; ++m) {
      const __m512i x = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(t, a.A + (m0 + m) * a.K + k));
      for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_add_epi32(acc[m][r], _mm512_madd_epi16(x, b[r]));
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) a.out[(m0 + m) * a.N + n0 + r] = _mm512_reduce_add_epi32(acc[m][r]);
}

template <int MR, int NR>
void micro(const Int8LinearMatmulArgs& a, int64_t m0, int64_t n0, const int32_t* bsum) {
  if (a.a_biased != nullptr) micro_vnni<MR, NR>(a, m0, n0, bsum);
  else micro_madd<MR, NR>(a, m0, n0, bsum);
}
#elif defined(KBIT_ISA_AVX2)
inline int32_t hsum8(__m256i v) {
  const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i s2 = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  return _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xB1)));
}

template <int MR, int NR>
void micro(const Int8LinearMatmulArgs& a, int64_t m0, int64_t n0, const int32_t*) {
  __m256i acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm256_setzero_si256();
  const int64_t K16 = a.K / 16 * 16;
  for (int64_t k = 0; k < K16; k += 16) {
    __m256i b[NR];
    for (int r = 0; r < NR; ++r)
      b[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.B + (n0 + r) * a.K + k)));
    for (int m = 0; m < MR; ++m) {
      const __m256i x = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.A + (m0 + m) * a.K + k)));
      for (int r = 0; r < NR; ++r) acc[m][r] = _mm256_add_epi32(acc[m][r], _mm256_madd_epi16(x, b[r]));
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) {
      const uint32_t tail = static_cast<uint32_t>(dot_scalar(a.A + (m0 + m) * a.K + K16, a.B + (n0 + r) * a.K + K16, a.K - K16));
      a.out[(m0 + m) * a.N + n0 + r] = static_cast<int32_t>(static_cast<uint32_t>(hsum8(acc[m][r])) + tail);
    }
}
#else
template <int MR, int NR>
void micro(const Int8LinearMatmulArgs& a, int64_t m0, int64_t n0, const int32_t*) {
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r)
      a.out[(m0 + m) * a.N + n0 + r] = dot_scalar(a.A + (m0 + m) * a.K, a.B + (n0 + r) * a.K, a.K);
}
#endif

template <int NR>
void column_block(const Int8LinearMatmulArgs& a, int64_t n0, const int32_t* bsum) {
  int64_t m = 0;
  for (; m + kBlock <= a.M; m += kBlock) micro<kBlock, NR>(a, m, n0, bsum);
  switch (a.M - m) {
    case 3: micro<3, NR>(a, m, n0, bsum); break;
    case 2: micro<2, NR>(a, m, n0, bsum); break;
    case 1: micro<1, NR>(a, m, n0, bsum); break;
    default: break;
  }
}

void columns(const Int8LinearMatmulArgs& a, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; n += kBlock) {
    int32_t bsum[kBlock] = {0, 0, 0, 0};
    const int64_t nr = n1 - n < kBlock ? n1 - n : kBlock;
    if (a.a_biased != nullptr) {
      for (int64_t r = 0; r < nr; ++r) {
        uint32_t s = 0;
        for (int64_t k = 0; k < a.K; ++k) s += static_cast<uint32_t>(static_cast<int32_t>(a.B[(n + r) * a.K + k]));
        bsum[r] = static_cast<int32_t>(s);
      }
    }
    switch (nr) {
      case 4: column_block<4>(a, n, bsum); break;
      case 3: column_block<3>(a, n, bsum); break;
      case 2: column_block<2>(a, n, bsum); break;
      default: column_block<1>(a, n, bsum); break;
    }
  }
}

}  // namespace

void int8_linear_matmul(const Int8LinearMatmulArgs& a) {
  if (a.a_biased != nullptr) {
    for (int64_t i = 0; i < a.M * a.K; ++i) a.a_biased[i] = static_cast<uint8_t>(a.A[i] ^ static_cast<int8_t>(0x80));
  }
  const int64_t min_cols = kMinMacsPerThread / (a.M * a.K) + 1;
  parallel_for(a.N, kBlock, min_cols, a.threads, [&](int64_t n0, int64_t n1, int, int) { columns(a, n0, n1); });
}

}  // namespace KBIT_NS
}  // namespace kbit_cpu

#if defined(KBIT_ISA_SCALAR)
#include <memory>

#include "status.h"

KBIT_DECLARE_ISAS(void int8_linear_matmul(const Int8LinearMatmulArgs& a))

extern "C" int32_t kbit_cpu_int8_linear_matmul(const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K,
                                               int32_t* out, int32_t num_threads) {
  using namespace kbit_cpu;
  return guarded("int8_linear_matmul", [&] {
    require_threads(num_threads);
    require(M >= 0 && N >= 0 && K >= 0, "M, N and K must be >= 0");
    if (M == 0 || N == 0) return;
    require(out != nullptr, "out must not be NULL");
    if (K == 0) {
      for (int64_t i = 0; i < M * N; ++i) out[i] = 0;
      return;
    }
    require(A != nullptr && B != nullptr, "A and B must not be NULL");
    std::unique_ptr<uint8_t[]> biased(has_avx512_vnni() ? new uint8_t[M * K] : nullptr);
    const Int8LinearMatmulArgs args{A, B, M, N, K, out, biased.get(), num_threads};
    KBIT_DISPATCH(int8_linear_matmul(args));
  });
}
#endif
