// dequantize_blockwise.cu — kbit::dequantize_blockwise: out[i] = code[q_i] * absmax[i / blocksize], cast once.
//
// Element-wise, grid-stride; the code sits in shared memory (entries past n_code read as NaN). A
// power-of-two blocksize indexes absmax with a shift, any other with a division.
#include "dtypes.cuh"
#include "runtime.cuh"

namespace kbit {
namespace {

constexpr int kThreads = 256;
constexpr int kQuietNaNBits = 0x7fc00000;

template <class T>
__global__ void __launch_bounds__(kThreads)
    dequantize_blockwise_kernel(const uint8_t* __restrict__ q, const float* __restrict__ absmax,
                                const float* __restrict__ code, int n_code, int64_t n, int64_t blocksize,
                                int log2_blocksize, T* __restrict__ out) {
  __shared__ float lut[KBIT_CODE_MAX_SIZE];
  for (int i = threadIdx.x; i < KBIT_CODE_MAX_SIZE; i += blockDim.x) {
    lut[i] = i < n_code ? code[i] : __int_as_float(kQuietNaNBits);
  }
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t b = log2_blocksize >= 0 ? i >> log2_blocksize : i / blocksize;
    out[i] = from_float<T>(lut[q[i]] * absmax[b]);
  }
}

}  // namespace
}  // namespace kbit

extern "C" KBIT_CUDA_API int kbit_cuda_dequantize_blockwise(const uint8_t* q, const float* absmax, const float* code,
                                                            int32_t n_code, int64_t n, int64_t blocksize, void* out,
                                                            int dtype, void* stream) {
  using namespace kbit;
  if (blocksize <= 0) {
    return report(KBIT_CUDA_UNSUPPORTED, "dequantize_blockwise: blocksize %lld", static_cast<long long>(blocksize));
  }
  if (n_code < 1 || n_code > KBIT_CODE_MAX_SIZE) {
    return report(KBIT_CUDA_UNSUPPORTED, "dequantize_blockwise: code has %d entries, supported 1..%d", n_code,
                  KBIT_CODE_MAX_SIZE);
  }
  if (n == 0) return KBIT_CUDA_OK;
  const unsigned grid = grid_blocks(n, kThreads);
  const int log2_blocksize = log2_exact(blocksize);
  const bool known = dispatch_float(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dequantize_blockwise_kernel<T><<<grid, kThreads, 0, as_stream(stream)>>>(q, absmax, code, n_code, n, blocksize,
                                                                              log2_blocksize, static_cast<T*>(out));
  });
  if (!known) return report(KBIT_CUDA_UNSUPPORTED, "dequantize_blockwise: unknown dtype tag %d", dtype);
  return check_launch("dequantize_blockwise_kernel");
}
