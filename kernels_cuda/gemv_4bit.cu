// gemv_4bit.cu — kbit::gemv_4bit: out[r] = sum_k A[k] * code[q(r, k)] * absmax, float32 accumulation.
//
// Batch-1 decode: memory-bound on the packed weight. One warp per output row. Vectorized path (K a
// multiple of 32, A and B 16-byte aligned): each lane streams 16-byte chunks of its row (32 codes, all in
// one absmax block since blocksize is a power of two >= 32) with one 128-bit load, reads the 32 matching
// activations with 128-bit loads (L1-resident: every row reuses them), looks codes up in a 16-entry table
// in shared memory, and scales the chunk's dot product once. Generic path: any K, element by element.
// Lane partial sums meet in a warp-shuffle reduction; lane 0 stores the row in A's dtype.
#include "dtypes.cuh"
#include "gemv_4bit.cuh"
#include "runtime.cuh"

namespace kbit {
namespace {

constexpr int kRowsPerBlock = 4;

template <class T, bool kVectorized>
__global__ void __launch_bounds__(kRowsPerBlock * kWarp)
    gemv_4bit_kernel(const T* __restrict__ A, const uint8_t* __restrict__ B, const float* __restrict__ absmax,
                     const float* __restrict__ code, int64_t N, int64_t K, int log2_blocksize, T* __restrict__ out) {
  __shared__ float lut[KBIT_FOURBIT_CODE_SIZE];
  if (threadIdx.x < KBIT_FOURBIT_CODE_SIZE) lut[threadIdx.x] = code[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= N) return;  // whole warps: no shuffle below loses a lane
  const float share = kVectorized ? gemv_share_vectorized(A, B, absmax, lut, row, K, log2_blocksize, lane, kWarp)
                                  : gemv_share_generic(A, B, absmax, lut, row, K, log2_blocksize, lane, kWarp);
  const float sum = warp_sum(share);
  if (lane == 0) out[row] = from_float<T>(sum);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace
}  // namespace kbit

extern "C" KBIT_CUDA_API int kbit_cuda_gemv_4bit(const void* A, int dtype, const uint8_t* B, const float* absmax,
                                                 const float* code, int64_t N, int64_t K, int32_t blocksize, void* out,
                                                 void* stream) {
  using namespace kbit;
  const int log2_blocksize = log2_exact(blocksize);
  if (blocksize < KBIT_FOURBIT_MIN_BLOCKSIZE || blocksize > KBIT_FOURBIT_MAX_BLOCKSIZE || log2_blocksize < 0) {
    return report(KBIT_CUDA_UNSUPPORTED, "gemv_4bit: blocksize %d is not a power of two in [%d, %d]", blocksize,
                  KBIT_FOURBIT_MIN_BLOCKSIZE, KBIT_FOURBIT_MAX_BLOCKSIZE);
  }
  const int64_t blocks = (N + kRowsPerBlock - 1) / kRowsPerBlock;
  if (blocks > INT32_MAX) {
    return report(KBIT_CUDA_UNSUPPORTED, "gemv_4bit: N = %lld rows is too many", static_cast<long long>(N));
  }
  if (N == 0) return KBIT_CUDA_OK;
  const bool vectorized = K % kPackedChunkElems == 0 && aligned16(A) && aligned16(B);
  const dim3 grid(static_cast<unsigned>(blocks));
  const bool known = dispatch_float(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* a = static_cast<const T*>(A);
    T* o = static_cast<T*>(out);
    if (vectorized) {
      gemv_4bit_kernel<T, true><<<grid, kRowsPerBlock * kWarp, 0, as_stream(stream)>>>(a, B, absmax, code, N, K,
                                                                                       log2_blocksize, o);
    } else {
      gemv_4bit_kernel<T, false><<<grid, kRowsPerBlock * kWarp, 0, as_stream(stream)>>>(a, B, absmax, code, N, K,
                                                                                        log2_blocksize, o);
    }
  });
  if (!known) return report(KBIT_CUDA_UNSUPPORTED, "gemv_4bit: unknown dtype tag %d", dtype);
  return check_launch(vectorized ? "gemv_4bit_kernel (vectorized)" : "gemv_4bit_kernel (generic)");
}
