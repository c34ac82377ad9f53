// int8_mm_dequant.cpp — kbit::int8_mm_dequant: out = A * (row_stats[r] * col_stats[c]) * INV_127_SQ (+ bias).
//
// float32 in the reference's operation order, rounded once to the output dtype. Rows split across
// threads, each row streamed from start to end in spans of kSpan columns; the bias is converted to
// float32 once per call by the entry point. Portable code vectorized by the compiler for each ISA,
// dtype conversions per ISA. Spans outside and rows inside, the former order, read every row in
// 2 KiB pieces 16 KiB apart. Measured (2-core AVX2 VM, int32 to bf16, 2 threads, medians, a fresh
// output included, whose page faults alone cost about as much as torch.empty + fill_: 10-16 ms at
// 4096x4096): 4096x4096 9.8-10.7 ms, was 14.6-20.4; 11008x4096 15.7-20.1 ms, was 42-52.
#include "convert.h"
#include "dispatch.h"
#include "kbit_cpu.h"
#include "parallel.h"

namespace kbit_cpu {

struct Int8MmDequantArgs {
  const int32_t* A;
  const float* row_stats;
  const float* col_stats;
  const float* bias;  // N floats, or nullptr
  int64_t rows, N;
  void* out;
  int32_t out_dtype;
  int32_t threads;
};

namespace KBIT_NS {
namespace {

constexpr int64_t kMinElementsPerThread = 1 << 15;
constexpr int64_t kSpan = 512;

void dequant_rows(const Int8MmDequantArgs& a, int64_t r0, int64_t r1) {
  float buf[kSpan];
  for (int64_t r = r0; r < r1; ++r) {
    const float rs = a.row_stats[r];
    for (int64_t c0 = 0; c0 < a.N; c0 += kSpan) {
      const int64_t len = a.N - c0 < kSpan ? a.N - c0 : kSpan;
      const int32_t* x = a.A + r * a.N + c0;
      const float* cs = a.col_stats + c0;
      for (int64_t j = 0; j < len; ++j) buf[j] = static_cast<float>(x[j]) * (rs * cs[j]) * KBIT_INV_127_SQ;
      if (a.bias != nullptr) {
        const float* bias = a.bias + c0;
        for (int64_t j = 0; j < len; ++j) buf[j] = buf[j] + bias[j];
      }
      from_f32(buf, len, a.out, a.out_dtype, r * a.N + c0);
    }
  }
}

}  // namespace

void int8_mm_dequant(const Int8MmDequantArgs& a) {
  const int64_t min_rows = kMinElementsPerThread / a.N + 1;
  parallel_for(a.rows, 1, min_rows, a.threads, [&](int64_t r0, int64_t r1, int, int) { dequant_rows(a, r0, r1); });
}

}  // namespace KBIT_NS
}  // namespace kbit_cpu

#if defined(KBIT_ISA_SCALAR)
#include <memory>

#include "status.h"

KBIT_DECLARE_ISAS(void int8_mm_dequant(const Int8MmDequantArgs& a))

extern "C" int32_t kbit_cpu_int8_mm_dequant(const int32_t* A, const float* row_stats, const float* col_stats,
                                            const void* bias, int32_t bias_dtype, int64_t rows, int64_t N, void* out,
                                            int32_t out_dtype, int32_t num_threads) {
  using namespace kbit_cpu;
  return guarded("int8_mm_dequant", [&] {
    require_dtype(out_dtype, "out");
    if (bias != nullptr) require_dtype(bias_dtype, "bias");
    require_threads(num_threads);
    require(rows >= 0 && N >= 0, "rows and N must be >= 0");
    if (rows == 0 || N == 0) return;
    require(A != nullptr && row_stats != nullptr && col_stats != nullptr && out != nullptr,
            "A, row_stats, col_stats and out must not be NULL");
    std::unique_ptr<float[]> bias_f32(bias != nullptr ? new float[N] : nullptr);
    if (bias != nullptr) KBIT_NS::to_f32(bias, bias_dtype, 0, N, bias_f32.get());
    const Int8MmDequantArgs args{A, row_stats, col_stats, bias_f32.get(), rows, N, out, out_dtype, num_threads};
    KBIT_DISPATCH(int8_mm_dequant(args));
  });
}
#endif
