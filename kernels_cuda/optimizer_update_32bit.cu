// optimizer_update_32bit.cu — kbit::optimizer_update_32bit: one optimizer step with float32 states, in place.
//
// Element-wise, grid-stride, rules from optimizer_rules.cuh. With a trust scale (max_unorm > 0, not
// adagrad) a first kernel sums ||u||^2 of the unscaled update into unorm_vec[0] (block sums, one atomic
// add per block); the update kernel, next on the same stream, reads it back and clips the step:
// s = max_unorm * ||p|| / ||u|| if ||u|| > max_unorm * ||p|| else 1. Decoupled weight decay (adam, lamb,
// ademamix, lion) multiplies p by 1 - lr * wd before the step, as the reference does.
#include "dtypes.cuh"
#include "optimizer_rules.cuh"
#include "runtime.cuh"

namespace kbit {
namespace {

constexpr int kThreads = 256;

// p and the states of element i as float32 (m2: AdEMAMix's state1 row 1; v: state2).
template <class T>
__device__ __forceinline__ Update load_element(const OptimizerHyper& h, const T* p, const float* state1,
                                               const float* state2, int64_t n, int64_t i) {
  Update e;
  e.p = to_float(p[i]);
  e.m = state1[i];
  e.m2 = h.optimizer == KBIT_OPTIM_ADEMAMIX ? state1[n + i] : 0.0f;
  e.v = has_two_states(h.optimizer) ? state2[i] : 0.0f;
  return e;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    update_norm_kernel(OptimizerHyper h, const T* __restrict__ g, const T* __restrict__ p,
                       const float* __restrict__ state1, const float* __restrict__ state2, int64_t n,
                       bool skip_zeros, float* __restrict__ unorm_vec) {
  __shared__ float scratch[kThreads / kWarp];
  float sum = 0.0f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const Update e = load_element(h, p, state1, state2, n, i);
    sum += unorm_term(h, to_float(g[i]), e.p, e.m, e.m2, e.v, skip_zeros);
  }
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) atomicAdd(unorm_vec, sum);
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    update_kernel(OptimizerHyper h, const T* __restrict__ g, T* __restrict__ p, float* __restrict__ state1,
                  float* __restrict__ state2, int64_t n, bool skip_zeros, bool trust, float max_unorm,
                  float param_norm, const float* __restrict__ unorm_vec) {
  const float scale = trust ? trust_scale(*unorm_vec, max_unorm, param_norm) : 1.0f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const Update e = load_element(h, p, state1, state2, n, i);
    const Update r = update_32bit(h, to_float(g[i]), e.p, e.m, e.m2, e.v, skip_zeros, trust, scale);
    p[i] = from_float<T>(r.p);
    state1[i] = r.m;
    if (h.optimizer == KBIT_OPTIM_ADEMAMIX) state1[n + i] = r.m2;
    if (has_two_states(h.optimizer)) state2[i] = r.v;
  }
}

}  // namespace
}  // namespace kbit

extern "C" KBIT_CUDA_API int kbit_cuda_optimizer_update_32bit(
    int32_t optimizer, const void* g, void* p, int dtype, float* state1, float* state2, float* unorm_vec, int64_t n,
    float max_unorm, float param_norm, float beta1, float beta2, float beta3, float one_minus_beta1,
    float one_minus_beta2, float one_minus_beta3, float alpha, float eps, float weight_decay, float lr,
    float gnorm_scale, float bias_correction1, float bias_correction2, float decay_factor, int32_t step,
    int32_t skip_zeros, void* stream) {
  using namespace kbit;
  if (!is_known_optimizer(optimizer)) {
    return report(KBIT_CUDA_UNSUPPORTED, "optimizer_update_32bit: unknown optimizer %d", optimizer);
  }
  const bool trust = max_unorm > 0.0f && optimizer != KBIT_OPTIM_ADAGRAD;
  if ((has_two_states(optimizer) && state2 == nullptr) || (trust && unorm_vec == nullptr)) {
    return report(KBIT_CUDA_UNSUPPORTED, "optimizer_update_32bit: optimizer %d needs state2%s", optimizer,
                  trust ? " and unorm_vec" : "");
  }
  const OptimizerHyper h = make_hyper(optimizer, beta1, beta2, beta3, one_minus_beta1, one_minus_beta2,
                                      one_minus_beta3, alpha, eps, weight_decay, lr, gnorm_scale, bias_correction1,
                                      bias_correction2, decay_factor, step);
  const cudaStream_t s = as_stream(stream);
  if (trust) {
    const cudaError_t err = cudaMemsetAsync(unorm_vec, 0, sizeof(float), s);
    if (err != cudaSuccess) {
      return cuda_failure("optimizer_update_32bit: cudaMemsetAsync(unorm_vec)", err);
    }
  }
  if (n == 0) return KBIT_CUDA_OK;
  const unsigned grid = grid_blocks(n, kThreads);
  const bool skip = skip_zeros != 0;
  const bool known = dispatch_float(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* gt = static_cast<const T*>(g);
    T* pt = static_cast<T*>(p);
    if (trust) update_norm_kernel<T><<<grid, kThreads, 0, s>>>(h, gt, pt, state1, state2, n, skip, unorm_vec);
    update_kernel<T><<<grid, kThreads, 0, s>>>(h, gt, pt, state1, state2, n, skip, trust, max_unorm, param_norm,
                                               unorm_vec);
  });
  if (!known) return report(KBIT_CUDA_UNSUPPORTED, "optimizer_update_32bit: unknown dtype tag %d", dtype);
  return check_launch(trust ? "update_norm_kernel / update_kernel" : "update_kernel");
}
