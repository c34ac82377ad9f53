// quantize_4bit.cu — kbit::quantize_4bit: blockwise absmax + nearest NF4/FP4 code, two codes per byte.
//
// One warp per quantization block (grid-stride over blocks): pass 1 reduces max|x| over the block, pass 2
// re-reads the block (from L1/L2) and writes one packed byte per pair of elements. The blocksize is even,
// so a pair never straddles two blocks.
#include "dtypes.cuh"
#include "runtime.cuh"

namespace kbit {
namespace {

constexpr int kWarpsPerBlock = 8;
__constant__ float kNF4[KBIT_FOURBIT_CODE_SIZE] = KBIT_NF4_CODE;
__constant__ float kFP4[KBIT_FOURBIT_CODE_SIZE] = KBIT_FP4_CODE;

template <class T>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarp)
    quantize_4bit_kernel(const T* __restrict__ A, int64_t n, int64_t blocksize, int64_t nblocks, int32_t quant_type,
                         uint8_t* __restrict__ packed, float* __restrict__ absmax) {
  __shared__ float code[KBIT_FOURBIT_CODE_SIZE];
  __shared__ float sorted[KBIT_FOURBIT_CODE_SIZE];
  __shared__ SortedCode table;
  const bool nf4 = quant_type == KBIT_QUANT_NF4;
  if (threadIdx.x < KBIT_FOURBIT_CODE_SIZE) code[threadIdx.x] = nf4 ? kNF4[threadIdx.x] : kFP4[threadIdx.x];
  __syncthreads();
  sort_code(code, KBIT_FOURBIT_CODE_SIZE, sorted, table);
  const int zero_code = nf4 ? KBIT_NF4_ZERO_CODE : KBIT_FP4_ZERO_CODE;

  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; b < nblocks; b += warps) {
    const int64_t start = b * blocksize;
    const int64_t end = start + blocksize < n ? start + blocksize : n;
    const float m = warp_nan_max(absmax_share(A, start, end, lane, kWarp));
    if (lane == 0) absmax[b] = m;
    quantize_4bit_share(A, start, end, n, inverse_scale(m), table, zero_code, packed, lane, kWarp);
  }
}

}  // namespace
}  // namespace kbit

extern "C" KBIT_CUDA_API int kbit_cuda_quantize_4bit(const void* A, int dtype, int64_t n, int32_t blocksize,
                                                     int32_t quant_type, uint8_t* packed, float* absmax,
                                                     void* stream) {
  using namespace kbit;
  if (blocksize < KBIT_FOURBIT_MIN_BLOCKSIZE || blocksize > KBIT_FOURBIT_MAX_BLOCKSIZE || log2_exact(blocksize) < 0) {
    return report(KBIT_CUDA_UNSUPPORTED, "quantize_4bit: blocksize %d is not a power of two in [%d, %d]", blocksize,
                  KBIT_FOURBIT_MIN_BLOCKSIZE, KBIT_FOURBIT_MAX_BLOCKSIZE);
  }
  if (quant_type != KBIT_QUANT_NF4 && quant_type != KBIT_QUANT_FP4) {
    return report(KBIT_CUDA_UNSUPPORTED, "quantize_4bit: unknown quant_type %d", quant_type);
  }
  if (n == 0) return KBIT_CUDA_OK;
  const int64_t nblocks = (n + blocksize - 1) / blocksize;
  const unsigned grid = grid_blocks(nblocks, kWarpsPerBlock);
  const bool known = dispatch_float(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    quantize_4bit_kernel<T><<<grid, kWarpsPerBlock * kWarp, 0, as_stream(stream)>>>(
        static_cast<const T*>(A), n, blocksize, nblocks, quant_type, packed, absmax);
  });
  if (!known) return report(KBIT_CUDA_UNSUPPORTED, "quantize_4bit: unknown dtype tag %d", dtype);
  return check_launch("quantize_4bit_kernel");
}
