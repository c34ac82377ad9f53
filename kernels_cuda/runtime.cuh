// runtime.cuh — what every kernel file shares on the host side (status reporting, grid sizes) and on the
// device side (warp and block reductions).
#ifndef KBIT_RUNTIME_CUH
#define KBIT_RUNTIME_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include "blocks.cuh"
#include "kbit_cuda.h"

namespace kbit {

// Records a printf-style message for kbit_cuda_last_error() and returns status (library.cu).
int report(int status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// KBIT_CUDA_ERROR for CUDA call (or kernel launch) `what` that failed with err, both named in the message.
// Also clears the runtime's last-error state, so a later launch is not blamed for a non-sticky error.
inline int cuda_failure(const char* what, cudaError_t err) {
  cudaGetLastError();
  return report(KBIT_CUDA_ERROR, "%s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
}

// Status after launching `kernel`: KBIT_CUDA_OK, or KBIT_CUDA_ERROR naming the kernel and the CUDA error.
inline int check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? KBIT_CUDA_OK : cuda_failure(kernel, err);
}

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// Grid-stride kernels never need more blocks than this to fill any GPU (an H100 holds ~2k resident blocks).
constexpr int64_t kMaxGridBlocks = 8192;

// Blocks for `work` items at `per_block` items per block, capped at kMaxGridBlocks; work must be > 0.
inline unsigned grid_blocks(int64_t work, int64_t per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<unsigned>(blocks < kMaxGridBlocks ? blocks : kMaxGridBlocks);
}

// log2(x) for a power of two x > 0, else -1.
inline int log2_exact(int64_t x) {
  if (x <= 0 || (x & (x - 1)) != 0) return -1;
  int k = 0;
  while ((int64_t{1} << k) != x) ++k;
  return k;
}

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;

// Every lane gets the sum over the warp.
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Every lane gets the NaN-propagating maximum over the warp.
__device__ __forceinline__ float warp_nan_max(float v) {
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v = nan_max(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// Every thread of the block gets the NaN-propagating maximum; scratch holds one float per warp. All
// threads must call it; it synchronizes before writing scratch, so consecutive calls may share it.
__device__ __forceinline__ float block_nan_max(float v, float* scratch) {
  v = warp_nan_max(v);
  const int warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  __syncthreads();
  if (threadIdx.x % kWarp == 0) scratch[warp] = v;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < warps; ++w) r = nan_max(r, scratch[w]);
  return r;
}

// Every thread of the block gets the sum over the block (same contract as block_nan_max).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  __syncthreads();
  if (threadIdx.x % kWarp == 0) scratch[warp] = v;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < warps; ++w) r += scratch[w];
  return r;
}

// Sorts `code` (n <= KBIT_CODE_MAX_SIZE entries, in shared or global memory) into table, cooperatively;
// sorted is shared scratch of n floats. Every thread of the block must call it.
__device__ __forceinline__ void sort_code(const float* code, int n, float* sorted, SortedCode& table) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int r = stable_rank(code, n, i);
    sorted[r] = code[i];
    table.order[r] = static_cast<uint8_t>(i);
  }
  if (threadIdx.x == 0) table.n_bounds = n - 1;
  __syncthreads();
  for (int j = threadIdx.x; j < n - 1; j += blockDim.x) table.bounds[j] = midpoint(sorted[j], sorted[j + 1]);
  __syncthreads();
}

}  // namespace kbit

#endif  // KBIT_RUNTIME_CUH
