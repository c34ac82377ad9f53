// int8_vectorwise_quant.cpp — kbit::int8_vectorwise_quant: row-wise absmax int8 (LLM.int8()) with outliers.
//
// As kbit.reference.int8_vectorwise_quant: with threshold > 0, |x| >= threshold marks outliers, which
// are excluded from the row absmax and coded 0 (with more than one row, their whole columns are 0);
// codes are round_half_even((x * 127) / absmax) in float32, clamped to +-127, 0 for a zero row.
// Two passes over rows split across threads: stats + per-thread outlier column masks, then codes.
// Portable code, vectorized by the compiler for each ISA.
#include <cmath>

#include "convert.h"
#include "dispatch.h"
#include "kbit_cpu.h"
#include "parallel.h"

namespace kbit_cpu {

struct Int8VectorwiseQuantArgs {
  const void* A;
  int32_t dtype;
  int64_t rows, K;
  float threshold;
  int8_t* out;
  float* row_stats;
  uint8_t* outlier_cols;  // K bytes, or nullptr when threshold == 0
  uint8_t* part_masks;    // scratch: threads * K bytes (threshold > 0), one mask per thread slot
  float* rowbuf;          // scratch: threads * K floats
  int32_t threads;
};

namespace KBIT_NS {
namespace {

constexpr int64_t kMinElementsPerThread = 1 << 15;

void stats_rows(const Int8VectorwiseQuantArgs& a, int64_t r0, int64_t r1, int slot) {
  float* x = a.rowbuf + slot * a.K;
  uint8_t* mask = a.part_masks != nullptr ? a.part_masks + slot * a.K : nullptr;
  const bool outliers = a.threshold > 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    to_f32(a.A, a.dtype, r * a.K, a.K, x);
    float m = 0.0f;
    bool nan = false;
    for (int64_t k = 0; k < a.K; ++k) {
      float ax = std::fabs(x[k]);
      if (outliers && ax >= a.threshold) {
        mask[k] = 1;
        ax = 0.0f;
      }
      nan |= ax != ax;
      m = ax > m ? ax : m;
    }
    a.row_stats[r] = nan ? __builtin_nanf("") : m;
  }
}

void code_rows(const Int8VectorwiseQuantArgs& a, int64_t r0, int64_t r1, int slot) {
  float* x = a.rowbuf + slot * a.K;
  const bool outliers = a.threshold > 0.0f;
  const bool zero_columns = outliers && a.rows > 1;
  for (int64_t r = r0; r < r1; ++r) {
    to_f32(a.A, a.dtype, r * a.K, a.K, x);
    const float s = a.row_stats[r];
    int8_t* q = a.out + r * a.K;
    for (int64_t k = 0; k < a.K; ++k) {
      float v = x[k];
      if (outliers && std::fabs(v) >= a.threshold) v = 0.0f;
      float c = __builtin_rintf((v * KBIT_INT8_MAX) / s);
      c = (s == 0.0f || c != c) ? 0.0f : c;  // zero row; NaN (a NaN row absmax) codes 0
      c = c < -KBIT_INT8_MAX ? -KBIT_INT8_MAX : (c > KBIT_INT8_MAX ? KBIT_INT8_MAX : c);
      q[k] = static_cast<int8_t>(c);
    }
    if (zero_columns) {
      for (int64_t k = 0; k < a.K; ++k) q[k] = a.outlier_cols[k] ? 0 : q[k];
    }
  }
}

}  // namespace

void int8_vectorwise_quant(const Int8VectorwiseQuantArgs& a) {
  const int64_t min_rows = kMinElementsPerThread / a.K + 1;
  const int slots = a.threads > 0 ? a.threads : 1;
  if (a.part_masks != nullptr) {
    for (int64_t i = 0; i < slots * a.K; ++i) a.part_masks[i] = 0;
  }
  parallel_for(a.rows, 1, min_rows, a.threads, [&](int64_t r0, int64_t r1, int, int slot) { stats_rows(a, r0, r1, slot); });
  if (a.outlier_cols != nullptr) {
    for (int64_t k = 0; k < a.K; ++k) {
      uint8_t any = 0;
      for (int p = 0; p < slots; ++p) any |= a.part_masks[p * a.K + k];
      a.outlier_cols[k] = any;
    }
  }
  parallel_for(a.rows, 1, min_rows, a.threads, [&](int64_t r0, int64_t r1, int, int slot) { code_rows(a, r0, r1, slot); });
}

}  // namespace KBIT_NS
}  // namespace kbit_cpu

#if defined(KBIT_ISA_SCALAR)
#include <memory>

#include "status.h"

KBIT_DECLARE_ISAS(void int8_vectorwise_quant(const Int8VectorwiseQuantArgs& a))

extern "C" int32_t kbit_cpu_int8_vectorwise_quant(const void* A, int32_t dtype, int64_t rows, int64_t K,
                                                  float threshold, int8_t* out, float* row_stats,
                                                  uint8_t* outlier_cols, int32_t num_threads) {
  using namespace kbit_cpu;
  return guarded("int8_vectorwise_quant", [&] {
    require_dtype(dtype, "A");
    require_threads(num_threads);
    require(rows >= 0 && K >= 0, "rows and K must be >= 0");
    require(!(threshold > 0.0f) || outlier_cols != nullptr || K == 0, "threshold > 0 needs outlier_cols");
    if (threshold > 0.0f && outlier_cols != nullptr) {
      for (int64_t k = 0; k < K; ++k) outlier_cols[k] = 0;
    }
    if (rows == 0 || K == 0) {
      for (int64_t r = 0; r < rows; ++r) row_stats[r] = 0.0f;
      return;
    }
    require(A != nullptr && out != nullptr && row_stats != nullptr, "A, out and row_stats must not be NULL");
    const int32_t threads = num_threads > 0 ? num_threads : 1;
    std::unique_ptr<uint8_t[]> masks(threshold > 0.0f ? new uint8_t[threads * K] : nullptr);
    std::unique_ptr<float[]> rowbuf(new float[threads * K]);
    const Int8VectorwiseQuantArgs args{A, dtype, rows, K, threshold, out, row_stats,
                                       threshold > 0.0f ? outlier_cols : nullptr, masks.get(), rowbuf.get(), threads};
    KBIT_DISPATCH(int8_vectorwise_quant(args));
  });
}
#endif
