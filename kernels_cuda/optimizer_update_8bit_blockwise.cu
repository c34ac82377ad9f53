// optimizer_update_8bit_blockwise.cu — kbit::optimizer_update_8bit_blockwise: one optimizer step with
// blockwise 8-bit states, in place (SPEC §7 "8-bit blockwise step").
//
// One thread per element and one CUDA block per quantization block of KBIT_OPTIMIZER_BLOCKSIZE elements
// (grid-stride over blocks). Each CUDA block first copies qmap1 / qmap2 to shared memory and sorts them
// for rounding. Per block: dequantize the states (qmap[code] * absmax[block]), apply the rule of
// optimizer_rules.cuh, freeze the elements whose gradient is NaN/Inf (states 0, p kept) or exactly zero
// with skip_zeros (states and p kept), reduce the new max|state| over the block, and requantize: nearest
// code of state / absmax, plus the sign rule for the signed qmap1. Every thread reads absmax[block]
// before the first reduction's barrier and thread 0 writes it after, so the update in place is safe.
#include "dtypes.cuh"
#include "optimizer_rules.cuh"
#include "runtime.cuh"

namespace kbit {
namespace {

constexpr int kThreads = KBIT_OPTIMIZER_BLOCKSIZE;
static_assert(kThreads == KBIT_CODE_MAX_SIZE, "one thread per qmap entry when staging the maps");

template <class T>
__global__ void __launch_bounds__(kThreads)
    optimizer_update_8bit_blockwise_kernel(OptimizerHyper h, const T* __restrict__ g, T* __restrict__ p,
                                           uint8_t* __restrict__ state1, uint8_t* __restrict__ state2,
                                           const float* __restrict__ qmap1, const float* __restrict__ qmap2,
                                           float* __restrict__ absmax1, float* __restrict__ absmax2, int64_t n,
                                           int64_t nblocks, bool skip_zeros) {
  __shared__ float map1[KBIT_CODE_MAX_SIZE];
  __shared__ float map2[KBIT_CODE_MAX_SIZE];
  __shared__ float sorted[KBIT_CODE_MAX_SIZE];
  __shared__ SortedCode table1;
  __shared__ SortedCode table2;
  __shared__ float scratch[kThreads / kWarp];
  const bool two = has_two_states(h.optimizer);
  const bool ademamix = h.optimizer == KBIT_OPTIM_ADEMAMIX;
  const int t = threadIdx.x;
  map1[t] = qmap1[t];
  if (two) map2[t] = qmap2[t];
  __syncthreads();
  sort_code(map1, KBIT_CODE_MAX_SIZE, sorted, table1);
  if (two) sort_code(map2, KBIT_CODE_MAX_SIZE, sorted, table2);

  for (int64_t b = blockIdx.x; b < nblocks; b += gridDim.x) {
    const int64_t i = b * kThreads + t;
    const bool valid = i < n;
    // Past the end of the tensor every state is 0, which leaves the block maximum alone.
    Update r = {0.0f, 0.0f, 0.0f, 0.0f};
    if (valid) {
      const float m = map1[state1[i]] * absmax1[b];
      const float m2 = ademamix ? map1[state1[n + i]] * absmax1[nblocks + b] : 0.0f;
      const float v = two ? map2[state2[i]] * absmax2[b] : 0.0f;
      r = update_8bit(h, to_float(g[i]), to_float(p[i]), m, m2, v, skip_zeros);
      p[i] = from_float<T>(r.p);
    }
    const float new_absmax1 = block_nan_max(fabsf(r.m), scratch);
    const float new_absmax1b = ademamix ? block_nan_max(fabsf(r.m2), scratch) : 0.0f;
    const float new_absmax2 = two ? block_nan_max(fabsf(r.v), scratch) : 0.0f;
    if (valid) {
      state1[i] = requantize(r.m, new_absmax1, table1, map1, true);
      if (ademamix) state1[n + i] = requantize(r.m2, new_absmax1b, table1, map1, true);
      if (two) state2[i] = requantize(r.v, new_absmax2, table2, map2, false);
    }
    if (t == 0) {
      absmax1[b] = new_absmax1;
      if (ademamix) absmax1[nblocks + b] = new_absmax1b;
      if (two) absmax2[b] = new_absmax2;
    }
  }
}

}  // namespace
}  // namespace kbit

extern "C" KBIT_CUDA_API int kbit_cuda_optimizer_update_8bit_blockwise(
    int32_t optimizer, const void* g, void* p, int dtype, uint8_t* state1, uint8_t* state2, const float* qmap1,
    const float* qmap2, float* absmax1, float* absmax2, int64_t n, float beta1, float beta2, float beta3,
    float one_minus_beta1, float one_minus_beta2, float one_minus_beta3, float alpha, float eps, float weight_decay,
    float lr, float gnorm_scale, float bias_correction1, float bias_correction2, float decay_factor, int32_t step,
    int32_t skip_zeros, void* stream) {
  using namespace kbit;
  if (!is_known_optimizer(optimizer)) {
    return report(KBIT_CUDA_UNSUPPORTED, "optimizer_update_8bit_blockwise: unknown optimizer %d", optimizer);
  }
  if (has_two_states(optimizer) && (state2 == nullptr || qmap2 == nullptr || absmax2 == nullptr)) {
    return report(KBIT_CUDA_UNSUPPORTED, "optimizer_update_8bit_blockwise: optimizer %d needs state2, qmap2, absmax2",
                  optimizer);
  }
  if (n == 0) return KBIT_CUDA_OK;
  const OptimizerHyper h = make_hyper(optimizer, beta1, beta2, beta3, one_minus_beta1, one_minus_beta2,
                                      one_minus_beta3, alpha, eps, weight_decay, lr, gnorm_scale, bias_correction1,
                                      bias_correction2, decay_factor, step);
  const int64_t nblocks = (n + kThreads - 1) / kThreads;
  const unsigned grid = grid_blocks(nblocks, 1);
  const bool known = dispatch_float(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    optimizer_update_8bit_blockwise_kernel<T><<<grid, kThreads, 0, as_stream(stream)>>>(
        h, static_cast<const T*>(g), static_cast<T*>(p), state1, state2, qmap1, qmap2, absmax1, absmax2, n, nblocks,
        skip_zeros != 0);
  });
  if (!known) return report(KBIT_CUDA_UNSUPPORTED, "optimizer_update_8bit_blockwise: unknown dtype tag %d", dtype);
  return check_launch("optimizer_update_8bit_blockwise_kernel");
}
