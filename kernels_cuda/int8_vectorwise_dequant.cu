// int8_vectorwise_dequant.cu — kbit::int8_vectorwise_dequant: out = A * stats[row] / 127 in float32.
//
// Element-wise, grid-stride; the product is divided by 127 (not multiplied by a rounded 1/127), as the
// reference does.
#include "runtime.cuh"

namespace kbit {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    int8_vectorwise_dequant_kernel(const int8_t* __restrict__ A, const float* __restrict__ stats, int64_t rows,
                                   int64_t cols, float* __restrict__ out) {
  const int64_t n = rows * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = static_cast<float>(A[i]) * stats[i / cols] / KBIT_INT8_MAX;
  }
}

}  // namespace
}  // namespace kbit

extern "C" KBIT_CUDA_API int kbit_cuda_int8_vectorwise_dequant(const int8_t* A, const float* stats, int64_t rows,
                                                               int64_t cols, float* out, void* stream) {
  using namespace kbit;
  if (rows == 0 || cols == 0) return KBIT_CUDA_OK;
  int8_vectorwise_dequant_kernel<<<grid_blocks(rows * cols, kThreads), kThreads, 0, as_stream(stream)>>>(
      A, stats, rows, cols, out);
  return check_launch("int8_vectorwise_dequant_kernel");
}
