// int8_linear_matmul.cpp — kbit::int8_linear_matmul: out[M, N] = A[M, K] @ B[N, K].T, exact int32.
//
// Accumulation wraps modulo 2^32 like an int32 accumulator (the reference sums exact partial products
// in int32). Threads split N. Dot formulation, 4 x 4 register blocks.
// avx512 + VNNI: vpdpbusd on (A + 128) as unsigned bytes, corrected by 128 * sum_k B[n, k]; 3 x 8 blocks.
// avx512 (BW): sign-extend to 16 bits and vpmaddwd. avx2: the same with 256-bit vectors.
// neon / scalar: portable integer loops.
#include "convert.h"
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
// VNNI blocks: 3 rows of A x 8 rows of B (24 accumulators, 3 + 8 loads per 24 vpdpbusd), the 8 sums of
// an A row reduced together. Measured on Zen 4 (2 threads, M x 4096 @ 4096 x 4096, against 4 x 4 blocks
// with a horizontal reduction per output): M = 32 3.1-3.3 against 4.1 ms, M = 128 11.1 against 17 ms.
// Zen 4 retires one 512-bit vpdpbusd per 2 cycles (64 MACs; measured 1.73 G/s per core), one vdpbf16ps
// (32 MACs) per cycle: int8 has no more multiply throughput than torch's bf16 there, and at M = 128
// this kernel is at ~87% of it.
constexpr int kVnniMr = 3, kVnniNr = 8;
constexpr int64_t kVnniKc = 4096;

// Columns [k0, k1) of the products of A rows m0.. m0 + MR with B rows n0.. n0 + NR, added to out
// (first = k0 == 0: written, less 128 * bsum); int32 sums wrap, so the chunks may be added in any order.
template <int MR, int NR>
KBIT_TARGET_AVX512_VNNI void micro_vnni(const Int8LinearMatmulArgs& a, int64_t m0, int64_t n0, int64_t k0, int64_t k1,
                                        const int32_t* bsum) {
  __m512i acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_si512();
  const int8_t* B = a.B + n0 * a.K;
  const uint8_t* X = a.a_biased + m0 * a.K;
  int64_t k = k0;
  for (; k + 64 <= k1; k += 64) {
    __m512i x[MR];
    for (int m = 0; m < MR; ++m) x[m] = _mm512_loadu_si512(X + m * a.K + k);
    for (int r = 0; r < NR; ++r) {
      const __m512i b = _mm512_loadu_si512(B + r * a.K + k);
      for (int m = 0; m < MR; ++m) acc[m][r] = _mm512_dpbusd_epi32(acc[m][r], x[m], b);
    }
  }
  if (k < k1) {
    const __mmask64 t = (__mmask64{1} << (k1 - k)) - 1;
    __m512i x[MR];
    for (int m = 0; m < MR; ++m) x[m] = _mm512_maskz_loadu_epi8(t, X + m * a.K + k);
    for (int r = 0; r < NR; ++r) {
      const __m512i b = _mm512_maskz_loadu_epi8(t, B + r * a.K + k);
      for (int m = 0; m < MR; ++m) acc[m][r] = _mm512_dpbusd_epi32(acc[m][r], x[m], b);
    }
  }
  const bool first = k0 == 0;
  if constexpr (NR == kVnniNr) {
    // sum - 128 * bsum (first chunk) or out + sum, wrapping
    const __m256i correction = _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bsum)), 7);
    for (int m = 0; m < MR; ++m) {
      const __m256i sums = reduce_add_8x16(acc[m][0], acc[m][1], acc[m][2], acc[m][3], acc[m][4], acc[m][5], acc[m][6], acc[m][7]);
      __m256i* o = reinterpret_cast<__m256i*>(a.out + (m0 + m) * a.N + n0);
      _mm256_storeu_si256(o, first ? _mm256_sub_epi32(sums, correction) : _mm256_add_epi32(_mm256_loadu_si256(o), sums));
    }
  } else {
    for (int m = 0; m < MR; ++m)
      for (int r = 0; r < NR; ++r) {
        const uint32_t sum = static_cast<uint32_t>(_mm512_reduce_add_epi32(acc[m][r]));
        int32_t& o = a.out[(m0 + m) * a.N + n0 + r];
        o = static_cast<int32_t>(first ? sum - 128u * static_cast<uint32_t>(bsum[r]) : static_cast<uint32_t>(o) + sum);
      }
  }
}

// Every row of A against NR rows of B, kVnniKc columns at a time (8 x 4 KiB of B, in L1 and L2, while
// the A rows stream past). Chunks of 2048 or 1024 columns, all of B's chunk in L1, were 3% and 12%
// slower at M = 128 (the sums reduced and added to out once per chunk).
template <int NR>
void rows_vnni(const Int8LinearMatmulArgs& a, int64_t n0, const int32_t* bsum) {
  for (int64_t k0 = 0; k0 < a.K; k0 += kVnniKc) {
    const int64_t k1 = k0 + kVnniKc < a.K ? k0 + kVnniKc : a.K;
    int64_t m = 0;
    for (; m + kVnniMr <= a.M; m += kVnniMr) micro_vnni<kVnniMr, NR>(a, m, n0, k0, k1, bsum);
    if (a.M - m == 2) micro_vnni<2, NR>(a, m, n0, k0, k1, bsum);
    if (a.M - m == 1) micro_vnni<1, NR>(a, m, n0, k0, k1, bsum);
  }
}

// Columns [n0, n1) of the VNNI product, kVnniNr rows of B at a time.
void columns_vnni(const Int8LinearMatmulArgs& a, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; n += kVnniNr) {
    const int64_t nr = n1 - n < kVnniNr ? n1 - n : kVnniNr;
    int32_t bsum[kVnniNr] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t r = 0; r < nr; ++r) {
      uint32_t s = 0;
      for (int64_t k = 0; k < a.K; ++k) s += static_cast<uint32_t>(static_cast<int32_t>(a.B[(n + r) * a.K + k]));
      bsum[r] = static_cast<int32_t>(s);
    }
    switch (nr) {
      case 8: rows_vnni<8>(a, n, bsum); break;
      case 7: rows_vnni<7>(a, n, bsum); break;
      case 6: rows_vnni<6>(a, n, bsum); break;
      case 5: rows_vnni<5>(a, n, bsum); break;
      case 4: rows_vnni<4>(a, n, bsum); break;
      case 3: rows_vnni<3>(a, n, bsum); break;
      case 2: rows_vnni<2>(a, n, bsum); break;
      default: rows_vnni<1>(a, n, bsum); break;
    }
  }
}

// Without VNNI: sign-extended to 16 bits, vpmaddwd.
template <int MR, int NR>
void micro(const Int8LinearMatmulArgs& a, int64_t m0, int64_t n0) {
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
#elif defined(KBIT_ISA_AVX2)
inline int32_t hsum8(__m256i v) {
  const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i s2 = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  return _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xB1)));
}

template <int MR, int NR>
void micro(const Int8LinearMatmulArgs& a, int64_t m0, int64_t n0) {
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
void micro(const Int8LinearMatmulArgs& a, int64_t m0, int64_t n0) {
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r)
      a.out[(m0 + m) * a.N + n0 + r] = dot_scalar(a.A + (m0 + m) * a.K, a.B + (n0 + r) * a.K, a.K);
}
#endif

template <int NR>
void column_block(const Int8LinearMatmulArgs& a, int64_t n0) {
  int64_t m = 0;
  for (; m + kBlock <= a.M; m += kBlock) micro<kBlock, NR>(a, m, n0);
  switch (a.M - m) {
    case 3: micro<3, NR>(a, m, n0); break;
    case 2: micro<2, NR>(a, m, n0); break;
    case 1: micro<1, NR>(a, m, n0); break;
    default: break;
  }
}

void columns(const Int8LinearMatmulArgs& a, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; n += kBlock) {
    const int64_t nr = n1 - n < kBlock ? n1 - n : kBlock;
    switch (nr) {
      case 4: column_block<4>(a, n); break;
      case 3: column_block<3>(a, n); break;
      case 2: column_block<2>(a, n); break;
      default: column_block<1>(a, n); break;
    }
  }
}

}  // namespace

void int8_linear_matmul(const Int8LinearMatmulArgs& a) {
  if (a.a_biased != nullptr) {
    for (int64_t i = 0; i < a.M * a.K; ++i) a.a_biased[i] = static_cast<uint8_t>(a.A[i] ^ static_cast<int8_t>(0x80));
  }
  const int64_t min_cols = kMinMacsPerThread / (a.M * a.K) + 1;
#if defined(KBIT_ISA_AVX512)
  if (a.a_biased != nullptr) {
    parallel_for(a.N, kVnniNr, min_cols, a.threads, [&](int64_t n0, int64_t n1, int, int) { columns_vnni(a, n0, n1); });
    return;
  }
#endif
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
