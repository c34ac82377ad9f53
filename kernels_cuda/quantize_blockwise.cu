// quantize_blockwise.cu — kbit::quantize_blockwise: blockwise absmax + nearest entry of a code (<= 256
// values, e.g. the dynamic map), one byte per element, any blocksize.
//
// Each CUDA block first sorts the code into shared memory (stable order, float32 midpoints); then each
// warp takes quantization blocks in a grid-stride loop: pass 1 reduces max|x|, pass 2 re-reads the block
// and binary-searches the midpoints for every element.
#include "dtypes.cuh"
#include "runtime.cuh"

namespace kbit {
namespace {

constexpr int kWarpsPerBlock = 8;

template <class T>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarp)
    quantize_blockwise_kernel(const T* __restrict__ A, int64_t n, const float* __restrict__ code, int n_code,
                              int64_t blocksize, int64_t nblocks, uint8_t* __restrict__ q,
                              float* __restrict__ absmax) {
  __shared__ float sorted[KBIT_CODE_MAX_SIZE];
  __shared__ SortedCode table;
  sort_code(code, n_code, sorted, table);

  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; b < nblocks; b += warps) {
    const int64_t start = b * blocksize;
    const int64_t end = blocksize < n - start ? start + blocksize : n;
    const float m = warp_nan_max(absmax_share(A, start, end, lane, kWarp));
    if (lane == 0) absmax[b] = m;
    quantize_codes_share(A, start, end, inverse_scale(m), table, q, lane, kWarp);
  }
}

}  // namespace
}  // namespace kbit

extern "C" KBIT_CUDA_API int kbit_cuda_quantize_blockwise(const void* A, int dtype, int64_t n, const float* code,
                                                          int32_t n_code, int64_t blocksize, uint8_t* q, float* absmax,
                                                          void* stream) {
  using namespace kbit;
  if (blocksize <= 0) {
    return report(KBIT_CUDA_UNSUPPORTED, "quantize_blockwise: blocksize %lld", static_cast<long long>(blocksize));
  }
  if (n_code < 1 || n_code > KBIT_CODE_MAX_SIZE) {
    return report(KBIT_CUDA_UNSUPPORTED, "quantize_blockwise: code has %d entries, supported 1..%d", n_code,
                  KBIT_CODE_MAX_SIZE);
  }
  if (n == 0) return KBIT_CUDA_OK;
  const int64_t nblocks = (n - 1) / blocksize + 1;
  const unsigned grid = grid_blocks(nblocks, kWarpsPerBlock);
  const bool known = dispatch_float(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    quantize_blockwise_kernel<T><<<grid, kWarpsPerBlock * kWarp, 0, as_stream(stream)>>>(
        static_cast<const T*>(A), n, code, n_code, blocksize, nblocks, q, absmax);
  });
  if (!known) return report(KBIT_CUDA_UNSUPPORTED, "quantize_blockwise: unknown dtype tag %d", dtype);
  return check_launch("quantize_blockwise_kernel");
}
