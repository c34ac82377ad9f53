// kbit::optimizer_update_8bit_blockwise on Apple GPUs, Adam family: "adam" (and "lamb", which runs the
// adam rule in 8-bit) and "ademamix". Mirrors src/kbit/reference/optimizer_update_8bit_blockwise.py with
// the same float32 operations in the same order (SPEC section 7, "8-bit blockwise step"):
//
//   s = qmap[code] * absmax[block]                                  dequantize (blocks of 256)
//   g = grad * gnorm_scale
//   adam:     m = m*b1 + g*(1-b1);  v = v*b2 + g*g*(1-b2);          u = (m/c1) / (sqrt(v)/c2 + eps)
//   ademamix: m1 as m; m2 = m2*b3 + g*(1-b3); v as adam;            u = (m1/c1 + m2*alpha) / (sqrt(v)/c2 + eps)
//   p = (p - u*lr) * decay                                          decay = 1 - lr*wd (1 without decay)
//   NaN/Inf g: states 0, p kept; skip_zeros and g == 0: states and p kept
//   absmax = max|s| per block; code = nearest (qmap1 signed, with the sign rule; qmap2 unsigned)
//
// One SIMD-group (one threadgroup of SIMD_WIDTH threads) per block of OPTIMIZER_BLOCKSIZE elements;
// lane l owns elements l, l + 32, ... of the block. The new block absmax is a SIMD max over bit patterns,
// taken after every lane has read the old one.
//
// Host contract (kbit_mps/optimizer_update_8bit_blockwise.py): all buffers contiguous; 0 < n < 2^30;
// state1/absmax1 hold 1 row (adam) or 2 rows m1, m2 (ademamix, row stride n / nb); sorted/order from
// kbit_sort_code over qmap1 and qmap2 (256 entries each); grid = nb * SIMD_WIDTH threads, threadgroups of
// SIMD_WIDTH. c1 = 1 - beta1^step and c2 = sqrt(1 - beta2^step) come from the host in float32.
#include "nearest_code.h"

// Requantize one new state value: code index of s / absmax in the 256-entry map; with the sign rule the
// index steps one toward the sign of the value when the nearest code has the opposite sign.
inline uchar requantize(float s, float inv, device const float* sorted, device const uint* order, bool sign_rule) {
  float scaled = scale_value(s, inv);
  uint pos = sorted_position(sorted, CODE_8BIT_SIZE, scaled);
  int index = int(order[pos]);
  if (sign_rule) {
    float chosen = sorted[pos];
    if (chosen < 0.0f && scaled > 0.0f) index += 1;
    if (chosen > 0.0f && scaled < 0.0f) index -= 1;
    index = clamp(index, 0, int(CODE_8BIT_SIZE) - 1);
  }
  return uchar(index);
}

template <typename T>
inline void optimizer_update_8bit_blockwise_impl(
    device const T* g, device T* p, device uchar* state1, device uchar* state2, device const float* qmap1,
    device const float* qmap2, device const float* sorted1, device const uint* order1, device const float* sorted2,
    device const uint* order2, device float* absmax1, device float* absmax2, uint n, bool ademamix,
    bool skip_zeros, float beta1, float one_minus_beta1, float beta2, float one_minus_beta2, float beta3,
    float one_minus_beta3, float alpha, float eps, float c1, float c2, float lr, float decay, float gnorm_scale,
    uint tid, uint lane) {
  uint block = tid / SIMD_WIDTH;
  uint nb = (n + OPTIMIZER_BLOCKSIZE - 1u) / OPTIMIZER_BLOCKSIZE;
  float m1[OPTIMIZER_ELEMENTS_PER_LANE];
  float m2[OPTIMIZER_ELEMENTS_PER_LANE];
  float nu[OPTIMIZER_ELEMENTS_PER_LANE];
  uint max1 = 0;
  uint max2 = 0;
  uint max_nu = 0;
  for (uint j = 0; j < OPTIMIZER_ELEMENTS_PER_LANE; ++j) {
    uint i = block * OPTIMIZER_BLOCKSIZE + lane + j * SIMD_WIDTH;
    m1[j] = 0.0f;
    m2[j] = 0.0f;
    nu[j] = 0.0f;
    if (i >= n) continue;
    float grad_in = load_float(g, i);
    float grad = grad_in * gnorm_scale;
    float param = load_float(p, i);
    float old_m1 = qmap1[state1[i]] * absmax1[block];
    float old_nu = qmap2[state2[i]] * absmax2[block];
    float new_m1 = old_m1 * beta1 + grad * one_minus_beta1;
    float new_nu = old_nu * beta2 + grad * grad * one_minus_beta2;
    float denom = precise::sqrt(new_nu) / c2 + eps;
    float update;
    float old_m2 = 0.0f;
    float new_m2 = 0.0f;
    if (ademamix) {
      old_m2 = qmap1[state1[n + i]] * absmax1[nb + block];
      new_m2 = old_m2 * beta3 + grad * one_minus_beta3;
      update = (new_m1 / c1 + new_m2 * alpha) / denom;
    } else {
      update = (new_m1 / c1) / denom;
    }
    float new_param = (param - update * lr) * decay;
    bool bad = !is_finite(grad);
    bool frozen = skip_zeros && grad_in == 0.0f;
    if (frozen) {
      new_m1 = old_m1;
      new_m2 = old_m2;
      new_nu = old_nu;
    }
    if (bad) {
      new_m1 = 0.0f;
      new_m2 = 0.0f;
      new_nu = 0.0f;
    }
    store_float(p, i, bad || frozen ? param : new_param);
    m1[j] = new_m1;
    m2[j] = new_m2;
    nu[j] = new_nu;
    max1 = max(max1, abs_bits(new_m1));
    max2 = max(max2, abs_bits(new_m2));
    max_nu = max(max_nu, abs_bits(new_nu));
  }
  max1 = simd_max(max1);
  max2 = simd_max(max2);
  max_nu = simd_max(max_nu);
  float inv1 = inverse_absmax(max1);
  float inv2 = inverse_absmax(max2);
  float inv_nu = inverse_absmax(max_nu);
  for (uint j = 0; j < OPTIMIZER_ELEMENTS_PER_LANE; ++j) {
    uint i = block * OPTIMIZER_BLOCKSIZE + lane + j * SIMD_WIDTH;
    if (i >= n) continue;
    state1[i] = requantize(m1[j], inv1, sorted1, order1, true);
    state2[i] = requantize(nu[j], inv_nu, sorted2, order2, false);
    if (ademamix) state1[n + i] = requantize(m2[j], inv2, sorted1, order1, true);
  }
  if (lane == 0 && block < nb) {
    absmax1[block] = as_type<float>(max1);
    absmax2[block] = as_type<float>(max_nu);
    if (ademamix) absmax1[nb + block] = as_type<float>(max2);
  }
}

#define KBIT_OPTIMIZER_UPDATE_8BIT_BLOCKWISE(SUFFIX, T)                                                         \
  kernel void kbit_optimizer_update_8bit_blockwise_##SUFFIX(                                                    \
      device const T* g, device T* p, device uchar* state1, device uchar* state2, device const float* qmap1,   \
      device const float* qmap2, device const float* sorted1, device const uint* order1,                        \
      device const float* sorted2, device const uint* order2, device float* absmax1, device float* absmax2,    \
      constant long& n, constant long& ademamix, constant long& skip_zeros, constant float& beta1,              \
      constant float& one_minus_beta1, constant float& beta2, constant float& one_minus_beta2,                  \
      constant float& beta3, constant float& one_minus_beta3, constant float& alpha, constant float& eps,       \
      constant float& c1, constant float& c2, constant float& lr, constant float& decay,                        \
      constant float& gnorm_scale, uint tid [[thread_position_in_grid]],                                        \
      uint lane [[thread_index_in_simdgroup]]) {                                                                \
    optimizer_update_8bit_blockwise_impl(g, p, state1, state2, qmap1, qmap2, sorted1, order1, sorted2, order2, \
                                         absmax1, absmax2, uint(n), ademamix != 0, skip_zeros != 0, beta1,     \
                                         one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3,      \
                                         alpha, eps, c1, c2, lr, decay, gnorm_scale, tid, lane);               \
  }

KBIT_OPTIMIZER_UPDATE_8BIT_BLOCKWISE(f32, float)
KBIT_OPTIMIZER_UPDATE_8BIT_BLOCKWISE(f16, half)
KBIT_OPTIMIZER_UPDATE_8BIT_BLOCKWISE(bf16, bf16_t)
