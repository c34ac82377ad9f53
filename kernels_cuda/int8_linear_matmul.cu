// int8_linear_matmul.cu — kbit::int8_linear_matmul: C = A @ B^T for int8 A [M, K], B [N, K], exact int32.
//
// A simple tiled kernel: each CUDA block computes a 32 x 32 tile of C; per step of 64 along K it stages
// 32 rows of A and of B in shared memory as 32-bit words of four int8 (zero-padded past the matrices),
// and each of its 16 x 16 threads accumulates 2 x 2 outputs with __dp4a (four int8 products summed into
// an int32; wrap-around beyond int32 like any int32 accumulator). Any K and alignment.
#include "runtime.cuh"

namespace kbit {
namespace {

constexpr int kTile = 32;                 // C rows and columns per CUDA block
constexpr int kHalf = kTile / 2;          // threads per tile side; each covers rows t and t + kHalf
constexpr int kThreads = kHalf * kHalf;   // 256
constexpr int kTileWords = 16;            // words of four int8 per row and K step (64 values)
constexpr int kMaxGridY = 65535;

__global__ void __launch_bounds__(kThreads)
    int8_linear_matmul_kernel(const int8_t* __restrict__ A, const int8_t* __restrict__ B, int64_t M, int64_t N,
                              int64_t K, int32_t* __restrict__ C) {
  // +1 word per row: the 16 threads reading 16 different rows of Bs hit 16 different banks.
  __shared__ int32_t As[kTile][kTileWords + 1];
  __shared__ int32_t Bs[kTile][kTileWords + 1];
  const int tx = threadIdx.x % kHalf;
  const int ty = threadIdx.x / kHalf;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTile;
  int32_t acc[2][2] = {{0, 0}, {0, 0}};
  for (int64_t k0 = 0; k0 < K; k0 += 4 * kTileWords) {
    for (int l = threadIdx.x; l < kTile * kTileWords; l += kThreads) {
      const int r = l / kTileWords;
      const int w = l % kTileWords;
      As[r][w] = load_int8x4(A, M, K, m0 + r, k0 + 4 * w);
      Bs[r][w] = load_int8x4(B, N, K, n0 + r, k0 + 4 * w);
    }
    __syncthreads();
#pragma unroll
    for (int w = 0; w < kTileWords; ++w) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) acc[i][j] = __dp4a(As[ty + kHalf * i][w], Bs[tx + kHalf * j][w], acc[i][j]);
      }
    }
    __syncthreads();
  }
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      const int64_t m = m0 + ty + kHalf * i;
      const int64_t n = n0 + tx + kHalf * j;
      if (m < M && n < N) C[m * N + n] = acc[i][j];
    }
  }
}

}  // namespace
}  // namespace kbit

extern "C" KBIT_CUDA_API int kbit_cuda_int8_linear_matmul(const int8_t* A, const int8_t* B, int64_t M, int64_t N,
                                                          int64_t K, int32_t* C, void* stream) {
  using namespace kbit;
  if (M == 0 || N == 0) return KBIT_CUDA_OK;
  const int64_t grid_x = (M + kTile - 1) / kTile;
  const int64_t grid_y = (N + kTile - 1) / kTile;
  if (grid_x > INT32_MAX || grid_y > kMaxGridY) {
    return report(KBIT_CUDA_UNSUPPORTED, "int8_linear_matmul: M = %lld, N = %lld exceed the grid",
                  static_cast<long long>(M), static_cast<long long>(N));
  }
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  int8_linear_matmul_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(A, B, M, N, K, C);
  return check_launch("int8_linear_matmul_kernel");
}
