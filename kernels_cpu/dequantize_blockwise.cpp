// dequantize_blockwise.cpp — kbit::dequantize_blockwise: out[i] = code[A[i]] * absmax[i / blocksize], exact.
//
// One float32 product per element (the reference's), rounded once to the output dtype; any blocksize.
// avx512: 16-bit outputs of blocks of 256+ elements with VBMI: 64 codes per step from the block's
// output words in byte planes (lookup64_planes; Zen 4, 4096x4096 bf16, 2 threads: 1.2 ms against
// 2.9 ms for the avx2 tables); otherwise 16 code values per step from a register-held 256-entry table
// (Lut256), masked at block ends.
// avx2: per-block tables of output-dtype values for blocks of 256+ elements with 16-bit outputs, else 8
// values per step from scalar loads (lookup8). other ISAs: the portable loop (vectorized by the compiler
// where the ISA has gathers).
//
// The avx2 table path is bound by instruction throughput, not memory: about 2.9 instructions and 1.2
// memory operations per element (one table read each, the indices taken out of 64-bit loads of A by
// movzx/shift), 0.6 cycles per element in L2 on the 2-core AMD EPYC (Zen 4) VM, the same from DRAM with
// one thread. Measured there (bf16 out, blocksize 4096, 4096x4096 .. 11008x4096, medians, same process):
// 1.25-1.3x the previous loop (vpinsrw with byte loads of A, 0.75-0.8 cycles per element), 0.5-0.6 of
// the float32 Tensor.copy_ bandwidth with 2 threads (was 0.35-0.45); the fraction moves with the host's
// clock, copy does not. Tried and slower: non-temporal stores (-20% with 2 threads, the stream stores
// stall the lookup loop), prefetchw of the output and software prefetch of A (-10..20%), table words
// joined in general registers with 64-bit stores (1.5x the instructions), vpgatherdd (2x), vpshufb
// nibble tables (the 32 tables do not fit the 16 ymm registers), indices loaded byte by byte (load-port
// bound, 0.75-0.8 cycles). The table costs 32 vector steps per block: below 256 elements the per-element
// product (lookup8) is faster (bs 128: 1.1x, bs 64: 1.7x).
// The loop is at its limit on this core: one thread reaches 0.19 ns per element with its data in L2
// and 0.22-0.3 from DRAM, two threads 0.14 together. Half the lanes joined in general registers
// (0.29 ns) or a quarter (0.25), or a quarter of the indices loaded byte by byte (0.22), are slower;
// CLZERO, to skip reading the output lines before writing them, traps to the hypervisor on the VM.
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
// Blocks from this size take per-block tables of output words (avx512 with VBMI, avx2); smaller ones
// compute each product.
constexpr int64_t kLutMinBlock = 256;

#if defined(KBIT_ISA_AVX512)

// The 64 16-bit outputs of the 64 codes at A + i (or the first `count` of them, count < 64) from a
// block's table of 256 output words split into byte planes: lo_* hold the low bytes of entries 0..127
// and 128..255, hi_* the high bytes. vpermt2b looks 64 bytes up in a 128-byte table (index bits 6:0),
// bit 7 picks the half. The codes' quadwords go in as 0 4 1 5 2 6 3 7 so that the byte interleaves
// (which work within 128-bit lanes) give the words in order: 64 codes in about 13 instructions.
KBIT_TARGET_AVX512_VBMI inline void lookup64_planes(const __m512i (&lo)[2][2], const __m512i (&hi)[2][2],
                                                    const uint8_t* A, uint16_t* out, int64_t count) {
  const __mmask64 in = count >= 64 ? ~__mmask64{0} : (__mmask64{1} << count) - 1;
  const __m512i q = _mm512_permutexvar_epi64(_mm512_set_epi64(7, 3, 6, 2, 5, 1, 4, 0), _mm512_maskz_loadu_epi8(in, A));
  const __mmask64 upper = _mm512_movepi8_mask(q);
  const __m512i l = _mm512_mask_blend_epi8(upper, _mm512_permutex2var_epi8(lo[0][0], q, lo[0][1]),
                                           _mm512_permutex2var_epi8(lo[1][0], q, lo[1][1]));
  const __m512i h = _mm512_mask_blend_epi8(upper, _mm512_permutex2var_epi8(hi[0][0], q, hi[0][1]),
                                           _mm512_permutex2var_epi8(hi[1][0], q, hi[1][1]));
  const __m512i w0 = _mm512_unpacklo_epi8(l, h), w1 = _mm512_unpackhi_epi8(l, h);
  if (count >= 64) {
    _mm512_storeu_si512(out, w0);
    _mm512_storeu_si512(out + 32, w1);
    return;
  }
  const uint64_t bits = (uint64_t{1} << count) - 1;
  _mm512_mask_storeu_epi16(out, static_cast<__mmask32>(bits), w0);
  _mm512_mask_storeu_epi16(out + 32, static_cast<__mmask32>(bits >> 32), w1);
}

// 16-bit outputs of blocks of 256+ elements with VBMI: the block's 256 products rounded once to the
// output dtype (the per-element rounding, so the same words), then 64 codes per step from byte planes.
KBIT_TARGET_AVX512_VBMI void dequantize_block_planes(const DequantizeBlockwiseArgs& a, int64_t begin, int64_t end,
                                                     float scale) {
  alignas(64) uint16_t table[kPositions];
  alignas(64) uint8_t planes[2][kPositions];  // low bytes, high bytes
  const __m512 s = _mm512_set1_ps(scale);
  for (int j = 0; j < kPositions; j += 16) store16(table, a.out_dtype, j, _mm512_mul_ps(_mm512_loadu_ps(a.code + j), s));
  for (int j = 0; j < kPositions; j += 32) {
    const __m512i w = _mm512_load_si512(table + j);
    _mm256_store_si256(reinterpret_cast<__m256i*>(planes[0] + j), _mm512_cvtepi16_epi8(w));
    _mm256_store_si256(reinterpret_cast<__m256i*>(planes[1] + j), _mm512_cvtepi16_epi8(_mm512_srli_epi16(w, 8)));
  }
  __m512i lo[2][2], hi[2][2];
  for (int half = 0; half < 2; ++half) {
    for (int k = 0; k < 2; ++k) {
      lo[half][k] = _mm512_load_si512(planes[0] + 128 * half + 64 * k);
      hi[half][k] = _mm512_load_si512(planes[1] + 128 * half + 64 * k);
    }
  }
  uint16_t* out16 = static_cast<uint16_t*>(a.out);
  int64_t i = begin;
  for (; i + 64 <= end; i += 64) lookup64_planes(lo, hi, a.A + i, out16 + i, 64);
  if (i < end) lookup64_planes(lo, hi, a.A + i, out16 + i, end - i);
}

void dequantize_blocks(const DequantizeBlockwiseArgs& a, int64_t b0, int64_t b1) {
  const Lut256 lut(a.code);
  const bool planes = has_avx512_vbmi() && a.out_dtype != KBIT_CPU_F32;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * a.blocksize;
    const int64_t end = begin + a.blocksize < a.n ? begin + a.blocksize : a.n;
    if (planes && end - begin >= kLutMinBlock) {
      dequantize_block_planes(a, begin, end, a.absmax[b]);
      continue;
    }
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
inline __m128i load_u32(const uint16_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return _mm_cvtsi32_si128(v);
}

// lut[bytes of w, low first]: the first read is a plain 32-bit load (lane 1 is overwritten next), the
// other seven fold into vpinsrw; the bytes come out of w by movzx of its low two bytes and a shift.
inline __m128i lookup8_lut(const uint16_t* lut, uint64_t w) {
  __m128i r = load_u32(lut + (w & 0xFF));
  r = _mm_insert_epi16(r, lut[(w >> 8) & 0xFF], 1);
  w >>= 16;
  KBIT_OPAQUE(w);
  r = _mm_insert_epi16(r, lut[w & 0xFF], 2);
  r = _mm_insert_epi16(r, lut[(w >> 8) & 0xFF], 3);
  w >>= 16;
  KBIT_OPAQUE(w);
  r = _mm_insert_epi16(r, lut[w & 0xFF], 4);
  r = _mm_insert_epi16(r, lut[(w >> 8) & 0xFF], 5);
  w >>= 16;
  KBIT_OPAQUE(w);
  r = _mm_insert_epi16(r, lut[w & 0xFF], 6);
  return _mm_insert_epi16(r, lut[w >> 8], 7);
}

void dequantize_blocks(const DequantizeBlockwiseArgs& a, int64_t b0, int64_t b1) {
  alignas(32) uint16_t lut[kPositions + 16] = {};  // + 16: the 32-bit read of the last entry
  uint16_t* out16 = static_cast<uint16_t*>(a.out);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * a.blocksize;
    const int64_t end = begin + a.blocksize < a.n ? begin + a.blocksize : a.n;
    const __m256 s = _mm256_set1_ps(a.absmax[b]);
    int64_t i = begin;
    if (end - begin >= kLutMinBlock && a.out_dtype != KBIT_CPU_F32) {
      for (int j = 0; j < kPositions; j += 8) store8(lut, a.out_dtype, j, _mm256_mul_ps(_mm256_loadu_ps(a.code + j), s));
      // Two independent 16-element steps per iteration (fewer loop instructions: ~2% faster).
      for (; i + 32 <= end; i += 32) {
        const __m128i l0 = lookup8_lut(lut, load_u64(a.A + i)), h0 = lookup8_lut(lut, load_u64(a.A + i + 8));
        const __m128i l1 = lookup8_lut(lut, load_u64(a.A + i + 16)), h1 = lookup8_lut(lut, load_u64(a.A + i + 24));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out16 + i), _mm256_set_m128i(h0, l0));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out16 + i + 16), _mm256_set_m128i(h1, l1));
      }
      for (; i + 16 <= end; i += 16) {
        const __m128i lo = lookup8_lut(lut, load_u64(a.A + i)), hi = lookup8_lut(lut, load_u64(a.A + i + 8));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out16 + i), _mm256_set_m128i(hi, lo));
      }
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
