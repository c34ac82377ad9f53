// int8_vectorwise_quant.cu — kbit::int8_vectorwise_quant (LLM.int8()): row-wise absmax int8 codes.
//
// threshold > 0: elements with |x| >= threshold are outliers. A first kernel flags every column holding
// one; the row kernel then leaves outliers out of the row absmax, codes them 0 and, with more than one
// row, codes whole flagged columns 0. One CUDA block per row (grid-stride over rows): block max-reduction,
// then round_half_even(x * 127 / absmax).
#include "dtypes.cuh"
#include "runtime.cuh"

namespace kbit {
namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void __launch_bounds__(kThreads)
    flag_outlier_columns_kernel(const T* __restrict__ A, int64_t rows, int64_t cols, float threshold,
                                int32_t* __restrict__ flags) {
  const int64_t n = rows * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (is_outlier(to_float(A[i]), threshold)) flags[i % cols] = 1;  // racing writers all store 1
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    int8_vectorwise_quant_kernel(const T* __restrict__ A, int64_t rows, int64_t cols, float threshold,
                                 const int32_t* __restrict__ flags, int8_t* __restrict__ out,
                                 float* __restrict__ row_stats) {
  __shared__ float scratch[kThreads / kWarp];
  const bool zero_columns = threshold > 0.0f && rows > 1;  // flags is NULL without a threshold
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* row = A + r * cols;
    const float m = block_nan_max(row_absmax_share(row, cols, threshold, threadIdx.x, blockDim.x), scratch);
    if (threadIdx.x == 0) row_stats[r] = m;
    row_codes_share(row, cols, threshold, m, zero_columns, flags, out + r * cols, threadIdx.x, blockDim.x);
  }
}

}  // namespace
}  // namespace kbit

extern "C" KBIT_CUDA_API int kbit_cuda_int8_vectorwise_quant(const void* A, int dtype, int64_t rows, int64_t cols,
                                                             float threshold, int8_t* out, float* row_stats,
                                                             int32_t* outlier_flags, void* stream) {
  using namespace kbit;
  if (rows == 0 || cols == 0) return KBIT_CUDA_OK;
  const bool outliers = threshold > 0.0f;
  const bool known = dispatch_float(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* a = static_cast<const T*>(A);
    if (outliers) {
      flag_outlier_columns_kernel<T><<<grid_blocks(rows * cols, kThreads), kThreads, 0, as_stream(stream)>>>(
          a, rows, cols, threshold, outlier_flags);
    }
    int8_vectorwise_quant_kernel<T><<<grid_blocks(rows, 1), kThreads, 0, as_stream(stream)>>>(
        a, rows, cols, threshold, outlier_flags, out, row_stats);
  });
  if (!known) return report(KBIT_CUDA_UNSUPPORTED, "int8_vectorwise_quant: unknown dtype tag %d", dtype);
  return check_launch(outliers ? "flag_outlier_columns_kernel / int8_vectorwise_quant_kernel"
                               : "int8_vectorwise_quant_kernel");
}
