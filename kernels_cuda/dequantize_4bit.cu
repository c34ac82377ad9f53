// dequantize_4bit.cu — kbit::dequantize_4bit: out[i] = code[q_i] * absmax[i / blocksize], cast once.
//
// One thread per packed byte (two outputs), grid-stride. The blocksize is an even power of two, so both
// elements of a byte share one absmax.
#include "dtypes.cuh"
#include "runtime.cuh"

namespace kbit {
namespace {

constexpr int kThreads = 256;
__constant__ float kNF4[KBIT_FOURBIT_CODE_SIZE] = KBIT_NF4_CODE;
__constant__ float kFP4[KBIT_FOURBIT_CODE_SIZE] = KBIT_FP4_CODE;

template <class T>
__global__ void __launch_bounds__(kThreads)
    dequantize_4bit_kernel(const uint8_t* __restrict__ packed, const float* __restrict__ absmax, int64_t n,
                           int log2_blocksize, int32_t quant_type, T* __restrict__ out) {
  __shared__ float code[KBIT_FOURBIT_CODE_SIZE];
  if (threadIdx.x < KBIT_FOURBIT_CODE_SIZE) {
    code[threadIdx.x] = quant_type == KBIT_QUANT_NF4 ? kNF4[threadIdx.x] : kFP4[threadIdx.x];
  }
  __syncthreads();
  const int64_t nbytes = (n + 1) / 2;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t byte = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; byte < nbytes; byte += stride) {
    const uint8_t q = packed[byte];
    const int64_t e = 2 * byte;
    const float scale = absmax[e >> log2_blocksize];
    out[e] = from_float<T>(code[q >> 4] * scale);
    if (e + 1 < n) out[e + 1] = from_float<T>(code[q & 0x0F] * scale);
  }
}

}  // namespace
}  // namespace kbit

extern "C" KBIT_CUDA_API int kbit_cuda_dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n,
                                                       int32_t blocksize, int32_t quant_type, void* out, int dtype,
                                                       void* stream) {
  using namespace kbit;
  const int log2_blocksize = log2_exact(blocksize);
  if (blocksize < KBIT_FOURBIT_MIN_BLOCKSIZE || blocksize > KBIT_FOURBIT_MAX_BLOCKSIZE || log2_blocksize < 0) {
    return report(KBIT_CUDA_UNSUPPORTED, "dequantize_4bit: blocksize %d is not a power of two in [%d, %d]", blocksize,
                  KBIT_FOURBIT_MIN_BLOCKSIZE, KBIT_FOURBIT_MAX_BLOCKSIZE);
  }
  if (quant_type != KBIT_QUANT_NF4 && quant_type != KBIT_QUANT_FP4) {
    return report(KBIT_CUDA_UNSUPPORTED, "dequantize_4bit: unknown quant_type %d", quant_type);
  }
  if (n == 0) return KBIT_CUDA_OK;
  const unsigned grid = grid_blocks((n + 1) / 2, kThreads);
  const bool known = dispatch_float(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dequantize_4bit_kernel<T><<<grid, kThreads, 0, as_stream(stream)>>>(packed, absmax, n, log2_blocksize, quant_type,
                                                                         static_cast<T*>(out));
  });
  if (!known) return report(KBIT_CUDA_UNSUPPORTED, "dequantize_4bit: unknown dtype tag %d", dtype);
  return check_launch("dequantize_4bit_kernel");
}
