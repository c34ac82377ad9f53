// int8_mm_dequant.cu — kbit::int8_mm_dequant: out = A * (row_stats[r] * col_stats[c]) * (1 / 127^2)
// (+ bias[c]) in float32, cast once to the output dtype.
//
// Element-wise, grid-stride, in the reference's operation order; bias arrives as float32 (or NULL).
#include "dtypes.cuh"
#include "runtime.cuh"

namespace kbit {
namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void __launch_bounds__(kThreads)
    int8_mm_dequant_kernel(const int32_t* __restrict__ A, const float* __restrict__ row_stats,
                           const float* __restrict__ col_stats, const float* __restrict__ bias, int64_t rows,
                           int64_t cols, T* __restrict__ out) {
  const int64_t n = rows * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / cols;
    const int64_t c = i - r * cols;
    float v = static_cast<float>(A[i]) * (row_stats[r] * col_stats[c]) * KBIT_INV_127_SQ;
    if (bias != nullptr) v = v + bias[c];
    out[i] = from_float<T>(v);
  }
}

}  // namespace
}  // namespace kbit

extern "C" KBIT_CUDA_API int kbit_cuda_int8_mm_dequant(const int32_t* A, const float* row_stats,
                                                       const float* col_stats, const float* bias, int64_t rows,
                                                       int64_t cols, void* out, int dtype, void* stream) {
  using namespace kbit;
  if (rows == 0 || cols == 0) return KBIT_CUDA_OK;
  const unsigned grid = grid_blocks(rows * cols, kThreads);
  const bool known = dispatch_float(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    int8_mm_dequant_kernel<T><<<grid, kThreads, 0, as_stream(stream)>>>(A, row_stats, col_stats, bias, rows, cols,
                                                                         static_cast<T*>(out));
  });
  if (!known) return report(KBIT_CUDA_UNSUPPORTED, "int8_mm_dequant: unknown dtype tag %d", dtype);
  return check_launch("int8_mm_dequant_kernel");
}
